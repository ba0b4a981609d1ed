"""Overlay the curves of training runs (their metrics.jsonl) in one PNG.

    python -m tools.plots work_dirs/a work_dirs/b [--out compare.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):   # run as a file (python path/to/tools/x.py): the repository's modules first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from public.engine.watch.plots import plot_runs, read_metrics


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m tools.plots",
                                     description="Overlay the curves of training runs (their metrics.jsonl) in one PNG.")
    parser.add_argument("runs", nargs="+", help="work dirs (or metrics.jsonl files) of the runs")
    parser.add_argument("--out", default="compare.png", help="the PNG to write (default: compare.png)")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {}
    for run in args.runs:
        path = Path(run)
        metrics = path if path.is_file() else path / "metrics.jsonl"
        rows = read_metrics(metrics)
        if not rows:
            parser.error(f"{metrics}: no metrics rows (not a run's work dir, or no evaluation yet)")
        label = str(path.parent if path.is_file() else path).rstrip("/")
        runs[label if label not in runs else f"{label} ({len(runs)})"] = rows
    plot_runs(runs, args.out, title=" vs ".join(runs))
    print(f"wrote {args.out} ({len(runs)} runs: {', '.join(runs)})")
    return Path(args.out)


if __name__ == "__main__":
    main()
