"""What train.py refuses and how it says so: bad config values, checkpoints of another model,
settings or classes, a work_dir holding another run, a file that is no checkpoint; one
"error:" line for each, warnings in train.log, no ImageNet download for a full checkpoint."""
import json
from pathlib import Path

import pytest
import torch

import train as train_cli
from config import load_config
from retinanet.config import Config as RetinaNetConfig
from public.data.demo import DEMO_CATEGORY_IDS, DEMO_CLASSES, generate_demo_data
from public.engine.runs.checkpoint import load_for_inference, save_checkpoint
from public.engine.command import user_error_message
from public.engine.runs.identity import check_work_dir, differences, model_type


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks_data")
    generate_demo_data(root, 2, 2, seed=4)
    return root, [f"train_images={root / 'train'}", f"train_annotations={root / 'annotations' / 'instances_train.json'}",
                  f"val_images={root / 'val'}", f"val_annotations={root / 'annotations' / 'instances_val.json'}",
                  "num_workers=0", "min_size=(64,)", "max_size=96", "test_min_size=64", "batch_size=2", "flops=False"]


def run_main(args, capsys) -> tuple[int, str]:
    code = train_cli.main(args)
    captured = capsys.readouterr()
    return code, captured.err


def demo_checkpoint(path: Path, config: str = "fcos/config_demo.py", overrides=(), names=DEMO_CLASSES,
                    ids=DEMO_CATEGORY_IDS, legacy: bool = False) -> Path:
    """A freshly initialised model saved as train.py saves one (``legacy``: without model_type)."""
    cfg = load_config(config, list(overrides))
    torch.manual_seed(0)
    state = {"format": "densedet", "model_type": model_type(cfg), "config": cfg.to_dict(),
             "classes": {"names": list(names), "category_ids": list(ids)},
             "model": cfg.resolve().build_model(len(ids)).state_dict(), "epoch": 1, "best_map": 0.0, "optimizer": {}}
    if legacy:
        del state["model_type"]
    save_checkpoint(state, path)
    return path


# ---- config values ---------------------------------------------------------------------------
@pytest.mark.parametrize("override, named", [
    ("epochs=-3", "epochs=-3 must be an integer >= 1"),
    ("lr=-1", "lr=-1.0 must be a number > 0"),
    ("eval_interval=0", "eval_interval=0 must be an integer >= 1"),
    ("min_size=()", "min_size=() must be a non-empty tuple of integers >= 1"),
    ("batch_size=0", "batch_size=0 must be an integer >= 1"),
    ("hflip_prob=1.5", "hflip_prob=1.5 must be a number >= 0 and <= 1"),
    ("nms_thresh=0", "nms_thresh=0.0 must be a number > 0 and <= 1"),
    ("optimizer=adam", "optimizer='adam' must be one of 'sgd', 'adamw'"),
    ("lr_steps=(0.5,8)", "lr_steps=(0.5, 8) mixes fractions of the run and epochs"),
    ("scale_boundaries=(64,32,256,512)", "scale_boundaries=(64, 32, 256, 512) must be increasing"),
    ("frozen_stages=5", "frozen_stages=5 must be an integer >= 0 and <= 4"),
])
def test_bad_values_stop_with_one_line_naming_the_key(override, named, data, tmp_path, capsys):
    """Checked once, when the config is loaded: the command exits 2 before anything runs."""
    _, common = data
    code, err = run_main([*common, f"work_dir={tmp_path / 'run'}", override], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: bad config value: ") and named in err
    assert not (tmp_path / "run").exists()                # refused before anything was written


def test_iou_thresholds_must_be_ordered_and_good_configs_pass():
    with pytest.raises(ValueError, match=r"bg_iou_thresh=0.5 must be <= fg_iou_thresh=0.4"):
        load_config("atss/config.py", ["positive_type=IoU", "fg_iou_thresh=0.4", "bg_iou_thresh=0.5"])
    with pytest.raises(ValueError, match=r"bg_iou_thresh=0.6 must be <= fg_iou_thresh=0.5"):
        RetinaNetConfig(bg_iou_thresh=0.6)
    for config in ("fcos/config.py", "fcos/config_demo.py", "atss/config.py", "atss/config_demo.py",
                   "retinanet/config.py", "retinanet/config_demo.py"):
        load_config(config).check()                      # the shipped defaults are valid


def test_a_config_attribute_that_is_no_key_is_refused(tmp_path):
    user = tmp_path / "mine.py"
    user.write_text("from fcos.config import Config as Base\n\nclass Config(Base):\n    learning_rate = 0.1\n")
    with pytest.raises(TypeError, match="Config.learning_rate is not a config key"):
        load_config(user)
    user.write_text("from fcos.config import Config as Base\n\nclass Config(Base):\n    nms_thresh = 7\n")
    with pytest.raises(ValueError, match="nms_thresh=7.0 must be a number > 0 and <= 1"):
        load_config(user)


def test_user_errors_are_told_apart_from_bugs():
    assert user_error_message(ValueError("bad json")) == "bad json"
    assert user_error_message(FileNotFoundError(2, "No such file or directory", "x.json")).endswith("'x.json'")
    assert user_error_message(RuntimeError("cannot read image 'a.jpg' (image id 3, from t.json)")).startswith("cannot")
    wrapped = RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1\nRuntimeError: cannot read image 'a.jpg'\n")
    assert user_error_message(wrapped) == "cannot read image 'a.jpg'"
    assert user_error_message(RuntimeError("CUDA error: illegal memory access")) is None
    assert user_error_message(IndexError("list index out of range")) is None
    assert user_error_message(KeyError("id")) is None


# ---- the command line --------------------------------------------------------------------------
def test_key_value_before_and_after_options():
    args = train_cli.parse_args(["epochs=2", "--evaluate", "best.pth", "work_dir=/tmp/x", "--config", "atss/config.py"])
    assert args.evaluate == "best.pth" and args.config == "atss/config.py" and args.overrides == ["epochs=2",
                                                                                                "work_dir=/tmp/x"]


def test_empty_categories_stop_with_a_message_and_warnings_reach_train_log(data, tmp_path, capsys):
    root, common = data
    annotations = json.loads((root / "annotations" / "instances_train.json").read_text())
    annotations["categories"] = []
    bad = tmp_path / "no_categories.json"
    bad.write_text(json.dumps(annotations))
    work_dir = tmp_path / "run"
    code, err = run_main([*common, f"train_annotations={bad}", f"work_dir={work_dir}"], capsys)
    # the dataset check's grouped message: the file, then one line per kind of problem
    assert code == 1 and err.startswith(f"error: {bad} (images in ")
    assert "the json's 'categories' list is empty" in err and "Traceback" not in err
    log = (work_dir / "train.log").read_text()
    assert f"error: {bad} (images in " in log and "Traceback" in log      # the error, with its traceback
    import warnings
    from public.engine.watch.logger import setup_logging
    setup_logging(str(tmp_path / "warned"), True)
    warnings.warn("a library's warning")
    assert "warning: UserWarning: a library's warning" in (tmp_path / "warned" / "train.log").read_text()


def test_a_text_file_is_not_a_checkpoint(data, tmp_path, capsys):
    _, common = data
    text = tmp_path / "notes.txt"
    text.write_text("epoch 12: mAP 0.4\n")
    code, err = run_main([*common, "--evaluate", str(text), f"work_dir={tmp_path}"], capsys)
    assert code == 1 and err == f"error: {text} is not a PyTorch checkpoint (it starts with b'epoc'); pass a .pth " \
                                "file written by train.py or torch.save\n"


# ---- checkpoints of another run ----------------------------------------------------------------
def test_differences_name_model_settings_and_classes():
    fcos, atss = load_config("fcos/config_demo.py"), load_config("atss/config_demo.py")
    assert model_type(fcos) == "fcos.config" and model_type(atss) == "atss.config"
    assert differences(fcos, atss.to_dict(), "atss.config") == ["model atss.config vs fcos.config"]
    # a checkpoint from before model types were stored: told apart by the models' own keys
    assert differences(fcos, atss.to_dict(), None)[0].startswith("model with keys ['anchor_offset'")
    stored = load_config("fcos/config_demo.py", ["fpn_channels=32", "norm_reg_targets=False"]).to_dict()
    assert differences(fcos, stored, "fcos.config") == ["fpn_channels 32 vs 64", "norm_reg_targets False vs True"]
    classes = {"names": ["a", "b"], "category_ids": [1, 2]}
    assert differences(fcos, fcos.to_dict(), "fcos.config", classes, ["b", "a"], [1, 2]) == [
        "class names ['a', 'b'] vs ['b', 'a']"]
    assert differences(fcos, fcos.to_dict(), "fcos.config", classes, ["a", "b"], [1, 3]) == [
        "category ids [1, 2] vs [1, 3]"]
    assert differences(fcos, load_config("fcos/config_demo.py", ["lr=1.0", "epochs=3"]).to_dict(), "fcos.config",
                       classes, ["a", "b"], [1, 2]) == []      # training settings may change


def test_evaluate_refuses_a_checkpoint_of_another_model(data, tmp_path, capsys):
    """ATSS and FCOS have the same tensor names and shapes: only the stored model type tells."""
    _, common = data
    path = demo_checkpoint(tmp_path / "atss.pth", "atss/config_demo.py")
    code, err = run_main(["--config", "fcos/config_demo.py", *common, "--evaluate", str(path),
                          f"work_dir={tmp_path}"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert f"error: cannot load {path}: it does not match this config (checkpoint vs this run): " \
           "model atss.config vs fcos.config. Use the config and data it was trained with (--config " \
           "atss/config.py or a config derived from it)" in err and "allow_mismatch=True" in err
    cfg = load_config("fcos/config_demo.py", ["allow_mismatch=True"])
    assert load_for_inference(cfg, str(path), list(DEMO_CATEGORY_IDS), list(DEMO_CLASSES)).model is not None


def test_evaluate_names_the_settings_to_pass(data, tmp_path, capsys):
    _, common = data
    path = demo_checkpoint(tmp_path / "c.pth", overrides=["fpn_channels=32", "num_convs=1"])
    code, err = run_main(["--config", "fcos/config_demo.py", *common, "--evaluate", str(path),
                          f"work_dir={tmp_path}"], capsys)
    assert code == 1 and "fpn_channels 32 vs 64; num_convs 1 vs 2" in err and "(e.g. fpn_channels=32 num_convs=1)" in err


def test_resume_refuses_a_checkpoint_of_other_classes(data, tmp_path, capsys):
    _, common = data
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    names = ("square", "circle", "triangle", "cross", "ring")       # the same ids, two names swapped
    demo_checkpoint(work_dir / "latest.pth", names=names)
    code, err = run_main([*common, f"work_dir={work_dir}", "resume=auto"], capsys)
    assert code == 1 and err.count("\n") == 1 and "error: cannot resume from" in err
    assert "class names ['square', 'circle', 'triangle', 'cross', 'ring'] vs ['circle', 'square'," in err


def test_evaluate_builds_no_imagenet_backbone(tmp_path, monkeypatch):
    """A full checkpoint holds every weight: pretrained=True must not fetch or read ImageNet weights."""
    import public.models.backbone as backbone

    def fetch(*args, **kwargs):
        raise AssertionError("ImageNet weights requested")
    monkeypatch.setattr(backbone, "_load_imagenet_weights", fetch)
    path = demo_checkpoint(tmp_path / "c.pth")
    cfg = load_config("fcos/config_demo.py", ["pretrained=True", "backbone_weights=/nowhere/r18.pth"])
    loaded = load_for_inference(cfg, str(path), list(DEMO_CATEGORY_IDS), list(DEMO_CLASSES))
    assert cfg.pretrained and cfg.backbone_weights == "/nowhere/r18.pth"    # the config is left as it was
    saved = torch.load(path, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in loaded.model.state_dict().items() if k in saved)


# ---- work_dir of another run -------------------------------------------------------------------
def test_a_work_dir_holding_another_run_is_refused(data, tmp_path, capsys):
    _, common = data
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    (work_dir / "metrics.jsonl").write_text('{"epoch": 1, "mAP": 0.5}\n')
    (work_dir / "train.log").write_text("the other run's log\n")
    code, err = run_main([*common, f"work_dir={work_dir}", "epochs=1"], capsys)
    assert code == 1 and err == (f"error: work_dir {work_dir} already holds a run (metrics.jsonl): continue it with "
                                 f"resume=auto, replace it with overwrite=True, or choose another work_dir=\n")
    assert (work_dir / "train.log").read_text() == "the other run's log\n"     # nothing appended


def test_work_dir_rules(tmp_path):
    fcos = load_config("fcos/config_demo.py", [f"work_dir={tmp_path}"])
    assert check_work_dir(tmp_path / "absent", fcos) == []
    (tmp_path / "config.json").write_text(json.dumps(fcos.to_dict()))
    (tmp_path / "train.log").write_text("a run that stopped before its first checkpoint\n")
    assert check_work_dir(tmp_path, fcos) == []                        # the same run, started again
    atss = load_config("atss/config_demo.py", [f"work_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"already holds a run \(config.json of another config \(model with keys"):
        check_work_dir(tmp_path, atss)
    atss.set("resume", "auto")
    with pytest.raises(ValueError, match=r"resume=auto: work_dir .* holds a run .* but no latest.pth"):
        check_work_dir(tmp_path, atss)                                 # nothing of its own to continue
    (tmp_path / "latest.pth").write_bytes(b"x")
    assert check_work_dir(tmp_path, atss) == []                        # resume decides, with its own checks
    (tmp_path / "latest.pth").unlink()
    atss.set("resume", "")
    atss.set("overwrite", True)
    (tmp_path / "best.pth").write_bytes(b"x")
    (tmp_path / "notes.md").write_text("mine")
    assert check_work_dir(tmp_path, atss) == ["best.pth", "train.log", "config.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.md"]        # the user's own files stay


def test_full_disk_and_read_only_folder_are_one_line_naming_the_path(tmp_path, monkeypatch):
    """A checkpoint write that fails in the OS (errno 28 inside torch.save, a read-only folder)
    is one OSError naming the file and the errno, told as bad input, and the previous file stays."""
    import errno
    import public.engine.runs.checkpoint as checkpoint_module

    path = tmp_path / "run" / "latest.pth"
    save_checkpoint({"epoch": 1}, path)

    def full_disk(state, f):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from cause
    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(OSError) as error:
        save_checkpoint({"epoch": 2}, path)
    assert error.value.errno == errno.ENOSPC and str(path) in str(error.value)
    message = user_error_message(error.value)
    assert message.startswith("[Errno 28] cannot write checkpoint") and "previous one is intact" in message
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1 and list(path.parent.glob("*.tmp")) == []
    monkeypatch.setattr(checkpoint_module.tempfile, "mkstemp",
                        lambda **kw: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(OSError) as error:
        save_checkpoint({"epoch": 2}, path)
    assert user_error_message(error.value) == f"[Errno 13] cannot write checkpoint {path}: Permission denied"


@pytest.mark.parametrize("config", ["fcos/config_demo.py", "atss/config_demo.py"])
def test_resume_auto_without_latest_keeps_the_finished_run(config, data, tmp_path, capsys):
    """A finished run whose latest.pth was deleted (139 MB against 46 MB for best.pth): resume=auto
    there, with its own config or another model's, is refused with what to do, and best.pth,
    metrics.jsonl, config.json and train.log are left as they were."""
    _, common = data
    work_dir = tmp_path / "run"
    work_dir.mkdir()
    finished = load_config("atss/config_demo.py", [*common, f"work_dir={work_dir}"])
    files = {"best.pth": b"the finished run's best weights", "metrics.jsonl": b'{"epoch": 24, "mAP": 0.815}\n',
             "config.json": json.dumps(finished.to_dict()).encode(), "train.log": b"24 epochs\n"}
    for name, content in files.items():
        (work_dir / name).write_bytes(content)
    code, err = run_main(["--config", config, *common, f"work_dir={work_dir}", "resume=auto", "epochs=1"], capsys)
    assert code == 1 and err.startswith(f"error: resume=auto: work_dir {work_dir} holds a run (best.pth, "
                                        f"metrics.jsonl") and "no latest.pth" in err
    assert f"init_from={work_dir / 'best.pth'}" in err and "overwrite=True" in err
    assert {name: (work_dir / name).read_bytes() for name in files} == files
    assert sorted(p.name for p in work_dir.iterdir()) == sorted(files)


def test_a_truncated_latest_is_refused_with_what_to_do(data, tmp_path, capsys):
    """resume=auto on a latest.pth cut short: one line naming it, and the two ways on (best.pth's
    weights with init_from, or overwrite=True)."""
    _, common = data
    work_dir = tmp_path / "run"
    path = demo_checkpoint(work_dir / "best.pth", overrides=common)
    (work_dir / "latest.pth").write_bytes(path.read_bytes()[:2000])
    code, err = run_main([*common, f"work_dir={work_dir}", "resume=auto", "epochs=2"], capsys)
    assert code == 1 and err.count("\n") == 1 and f"could not read checkpoint {work_dir / 'latest.pth'}" in err
    assert f"it cannot be resumed: continue from the best weights with init_from={work_dir / 'best.pth'}" in err
    assert err.rstrip().endswith("or start afresh with overwrite=True (deletes the run's files)")


def test_amp_on_a_cpu_runs_bfloat16_and_says_so(caplog):
    import logging
    from public.engine.distributed import amp_dtype_of

    cfg = load_config("fcos/config_demo.py", ["amp=True"])
    with caplog.at_level(logging.WARNING, logger="densedet"):
        assert amp_dtype_of(cfg, "cpu") == torch.bfloat16
    assert "amp=True on a CPU: autocast in bfloat16" in caplog.text
    assert amp_dtype_of(cfg, "cuda") == torch.float16 and amp_dtype_of(load_config("fcos/config_demo.py"), "cpu") is None


def test_log_numbers_and_the_compact_config_line():
    from public.engine.watch.logger import format_value

    assert format_value("lr", 1e-5) == "1.00e-05" and format_value("loss_cls", 0.123456) == "0.1235"
    cfg = load_config("fcos/config_demo.py", ["epochs=3", "lr=0.002"])
    assert {k: v for k, v in cfg.changed().items() if k != "work_dir"} == {"epochs": 3, "lr": 0.002}
