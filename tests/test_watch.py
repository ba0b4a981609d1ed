"""Watching runs: progress bars only on a terminal (train.log clean either way), results.csv and
results.png rebuilt from metrics.jsonl (resumed epochs replaced), the compare command, and
TensorBoard scalars read back from the event file."""
import io
import json
import logging
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from public.engine.watch import plots
from tools.plots import main as plots_main
from public.engine.evaluate.evaluator import STAT_NAMES
from public.engine.watch.logger import MetricLogger, setup_logging


def metrics_row(epoch: int, seed: float, time: float) -> dict:
    """A metrics.jsonl row as the trainer writes it, with distinct values per epoch."""
    stats = {name: round(seed * (k + 1) / 13, 6) for k, name in enumerate(STAT_NAMES)}
    stats["APl"] = -1.0  # undefined stat (no large objects), as COCOeval reports it
    return {"epoch": epoch, **stats, "loss": 3 * seed, "loss_cls": seed, "loss_box": 1.5 * seed,
            "loss_centerness": 0.5 * seed, "lr": 0.01 / epoch, "time": time}


def write_metrics(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---- metrics.jsonl -> results.csv ------------------------------------------------------------------
def test_resumed_epochs_replace_earlier_rows(tmp_path):
    # epochs 1-3, then a resume at epoch 2 rewrote 2 and 3 (with different values).
    rows = [metrics_row(1, 0.9, 10), metrics_row(2, 0.8, 20), metrics_row(3, 0.7, 30),
            metrics_row(2, 0.6, 25), metrics_row(3, 0.5, 35)]
    write_metrics(tmp_path / "metrics.jsonl", rows)
    kept = plots.read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["epoch"], r["loss_cls"]) for r in kept] == [(1, 0.9), (2, 0.6), (3, 0.5)]
    # A resume from epoch 1 with only epoch 2 written so far drops the stale epoch 3.
    write_metrics(tmp_path / "metrics.jsonl", rows + [metrics_row(2, 0.4, 22)])
    assert [(r["epoch"], r["loss_cls"]) for r in plots.read_metrics(tmp_path / "metrics.jsonl")] == [(1, 0.9), (2, 0.4)]


def test_results_csv_columns_and_values_equal_metrics(tmp_path):
    rows = [metrics_row(1, 0.9, 10.5), metrics_row(2, 0.8, 20.25), metrics_row(2, 0.3, 21.0), metrics_row(3, 0.7, 30)]
    write_metrics(tmp_path / "metrics.jsonl", rows)
    csv_path, png_path = plots.update_results(tmp_path)
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header == ["epoch", "time", "loss", "loss_cls", "loss_box", "loss_centerness", "lr", *STAT_NAMES]
    table = plots.read_results_csv(csv_path)
    expected = [rows[0], rows[2], rows[3]]
    assert [r["epoch"] for r in table] == [1, 2, 3]
    for got, want in zip(table, expected):
        assert got == {k: (None if k == "APl" else want[k]) for k in header}  # exact floats; -1: an empty cell
    assert not (tmp_path / "results.csv.tmp").exists()
    image = cv2.imread(str(png_path))
    assert image is not None and image.shape[0] >= 600 and image.shape[1] >= 1000
    assert (image < 128).mean() > 0.01                      # drawn, not blank


def test_broken_metrics_line_names_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(metrics_row(1, 0.9, 1)) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        plots.read_metrics(tmp_path / "metrics.jsonl")


# ---- results.png / compare figure -------------------------------------------------------------------
def test_figure_draws_each_run_from_its_rows(tmp_path):
    a = [metrics_row(e, 1.0 / e, 10 * e) for e in (1, 2, 3)]
    b = [metrics_row(e, 0.5 / e, 12 * e) for e in (1, 2)]
    fig = plots.plot_runs({"a": a, "b": b}, tmp_path / "both.png")
    panels = ["loss", "loss_cls", "loss_box", "loss_centerness", "lr", "mAP", "AP50", "AP75", "mAR"]
    assert plots.panels_of({"a": a, "b": b}) == panels
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(panels)
    for ax, key in zip(visible, panels):
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() and ax.get_title()
        (line_a, line_b) = ax.lines
        np.testing.assert_array_equal(line_a.get_xydata(), [[r["epoch"], r[key]] for r in a])
        np.testing.assert_array_equal(line_b.get_xydata(), [[r["epoch"], r[key]] for r in b])
        assert (line_a.get_label(), line_b.get_label()) == ("a", "b")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]
    image = cv2.imread(str(tmp_path / "both.png"))
    assert image.shape[:2] == (round(fig.get_figheight() * 100), round(fig.get_figwidth() * 100))


def test_undefined_stats_are_not_drawn(tmp_path):
    rows = [metrics_row(1, 0.9, 1), {**metrics_row(2, 0.8, 2), "mAR": -1.0}]
    fig = plots.plot_runs({"run": rows})
    mar = next(ax for ax in fig.axes if ax.get_title().startswith("val mAR"))
    np.testing.assert_array_equal(mar.lines[0].get_xydata(), [[1, rows[0]["mAR"]]])


def test_compare_command_overlays_runs(tmp_path, capsys):
    for name, seed in (("a", 0.9), ("b", 0.4)):
        (tmp_path / name).mkdir()
        write_metrics(tmp_path / name / "metrics.jsonl", [metrics_row(e, seed / e, e) for e in (1, 2)])
    out = plots_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp.png")])
    assert cv2.imread(str(out)) is not None and "2 runs" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        plots_main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")])


# ---- progress bars and log lines ----------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_epoch(tmp_path, monkeypatch, tty: bool) -> tuple[str, str, str]:
    stdout, stderr = (Terminal(), Terminal()) if tty else (io.StringIO(), io.StringIO())
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    setup_logging(str(tmp_path), True)
    logged = []
    metric_logger = MetricLogger(log_interval=2, on_log=lambda i, v: logged.append((i, v)))
    for step in metric_logger.log_every(list(range(5)), "epoch 1/1"):
        metric_logger.update(loss=1.0 + step, loss_cls=0.5 + step, lr=0.01)
    for handler in logging.getLogger("densedet").handlers:
        handler.flush()
    assert [i for i, _ in logged] == [2, 4, 5]
    assert logged[1][1] == {"loss": 4.0, "loss_cls": 3.5, "lr": 0.01}      # the latest values
    return stdout.getvalue(), stderr.getvalue(), (tmp_path / "train.log").read_text()


def test_no_bar_and_plain_lines_without_a_terminal(tmp_path, monkeypatch):
    out, err, log = run_epoch(tmp_path, monkeypatch, tty=False)
    assert "\r" not in out + err + log and err == ""
    for text in (out, log):
        assert "epoch 1/1 [2/5]" in text and "epoch 1/1 [5/5]" in text and "done in" in text


def test_bar_on_a_terminal_and_train_log_stays_clean(tmp_path, monkeypatch):
    out, err, log = run_epoch(tmp_path, monkeypatch, tty=True)
    assert "\r" in err and "5/5" in err and "loss=3.0000" in err and "lr=1.00e-02" in err  # medians
    assert "[2/5]" not in out and "done in" in out             # the bar replaces the periodic lines
    assert "\r" not in log and "\x1b" not in log
    assert "epoch 1/1 [2/5]" in log and "loss_cls 1.5000" in log and "done in" in log


# ---- TensorBoard ---------------------------------------------------------------------------------------
def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recorder = plots.RunRecorder(tmp_path, start_epoch=0, iters_per_epoch=10, tensorboard=True, main=True)
    on_log = recorder.iteration_logger(epoch=1)                # second epoch: steps 11..20
    on_log(5, {"loss": 2.5, "lr": 0.02})
    on_log(10, {"loss": 1.5, "lr": 0.01})
    recorder.trained(2, {"loss": 1.75}, 0.01)                  # the epoch's mean loss, its last lr
    row = metrics_row(2, 0.6, 3.0)
    row["APl"] = -1.0                                          # COCOeval: no large object in the val set
    write_metrics(tmp_path / "metrics.jsonl", [row])
    result = SimpleNamespace(metrics={k: row[k] for k in STAT_NAMES},
                             per_class=[{"name": "circle", "AP": 0.25}, {"name": "ring", "AP": 0.75}])
    recorder.evaluated(2, result)
    recorder.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars["train_iter/loss"] == [(15, 2.5), (20, 1.5)]
    assert scalars["train_iter/lr"] == [(15, pytest.approx(0.02)), (20, pytest.approx(0.01))]
    assert scalars["train/loss"] == [(2, 1.75)] and scalars["train/lr"] == [(2, pytest.approx(0.01))]  # epoch axis
    for name in STAT_NAMES:
        if name != "APl":
            assert scalars[f"val/{name}"] == [(2, pytest.approx(row[name], abs=1e-7))]
    assert "val/APl" not in scalars                            # absent, not -1
    assert scalars["val_AP_per_class/circle"] == [(2, 0.25)] and scalars["val_AP_per_class/ring"] == [(2, 0.75)]
    assert len(scalars) == 2 + 2 + 11 + 2
    assert plots.read_results_csv(tmp_path / "results.csv")[0]["APl"] is None   # an empty cell, not -1


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        plots.RunRecorder(tmp_path, 0, 10, tensorboard=True, main=True)
    assert plots.RunRecorder(tmp_path, 0, 10, tensorboard=True, main=False).writer is None  # other ranks never write


def test_elapsed_time_continues_after_resume(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", [metrics_row(e, 0.5, 100.0 * e) for e in (1, 2, 3)])
    recorder = plots.RunRecorder(tmp_path, start_epoch=2, iters_per_epoch=1, tensorboard=False, main=True)
    assert 200.0 <= recorder.elapsed() < 260.0
    assert plots.RunRecorder(tmp_path, 0, 1, False, True).elapsed() < 60.0


def test_progress_bar_fits_80_columns():
    """The bar line of a training epoch (desc, counts, times, loss and lr) fits in 80 columns."""
    import io
    from tqdm import tqdm
    from public.engine.watch.logger import BAR_FORMAT, MetricLogger

    out = io.StringIO()
    bar = tqdm(range(300), desc="epoch 12/24", ncols=80, file=out, bar_format=BAR_FORMAT, mininterval=0)
    metric_logger = MetricLogger(1000, None)
    for _ in bar:
        metric_logger.update(loss=1.23456, loss_cls=0.5, loss_box=0.4, loss_centerness=0.6, lr=1.25e-5)
        bar.set_postfix(metric_logger._postfix(), refresh=False)
    bar.close()
    last = out.getvalue().split("\r")[-1].strip()
    assert len(last) <= 80 and last.startswith("epoch 12/24 100% 300/300") and last.endswith("loss=1.2346, lr=1.25e-05")
