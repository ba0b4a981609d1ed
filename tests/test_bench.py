"""The GPU check (``bash bench/gpu.sh``) still runs end to end: its tiny mode, run here on
whatever device there is (a CPU in CI), writes the results file with every figure of every row."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PEERS = {"fcos", "retinanet"}            # models with a torchvision counterpart; ATSS has none
NOT_MEASURED = {"n/a"}                   # peak memory and syncs: on a CPU


def table(markdown: str) -> list[dict[str, str]]:
    """The rows of the results table as {column: cell}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


@pytest.mark.slow
def test_gpu_check_tiny_lists_every_figure(tmp_path):
    out = tmp_path / "gpu_results.md"
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--tiny", "--out", str(out)], cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert text in proc.stdout                                   # the file is also printed
    for line in ("- date: ", "- device: ", "- torch ", "torchvision "):
        assert line in text
    rows = table(text)
    on_gpu = "CPU" not in text.split("- device: ")[1].splitlines()[0]

    assert {row["model"] for row in rows} == {"fcos", "atss", "retinanet"}
    assert {row["channels_last"] for row in rows} == {"off", "on"}
    assert "fp32" in {row["precision"] for row in rows}
    for row in rows:
        name = f"{row['model']} {row['precision']} channels_last={row['channels_last']}"
        peer = row["model"] in PEERS
        for who in ("ours", "torchvision"):
            if who == "torchvision" and not peer:
                for column in ("train img/s", "peak mem MiB", "syncs/step", "decoder ms"):
                    assert row[f"{column} torchvision"] == "no peer", (name, column)
                continue
            for column in ("train img/s", "decoder ms"):
                assert positive(row[f"{column} {who}"]), (name, column, who, row[f"{column} {who}"])
            memory, syncs = row[f"peak mem MiB {who}"], row[f"syncs/step {who}"]
            if on_gpu:
                assert positive(memory) and (positive(syncs) or syncs == "0"), (name, who, memory, syncs)
            else:
                assert memory in NOT_MEASURED and syncs in NOT_MEASURED, (name, who, memory, syncs)
        for column in ("loader img/s", "loader/train", "inference img/s"):
            assert positive(row[column]), (name, column, row[column])
