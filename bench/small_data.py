"""Small data from scratch: does the obvious command hold up? Runs train.py for each
(config, variant, seed) on a built-in dataset and prints, per run, the mAP of every evaluation,
best / last, the loss spikes the run reported and whether it collapsed.

    python bench/small_data.py --data crowns --seeds 1 2 3 --variants default before \
        --configs fcos/config.py atss/config.py retinanet/config.py --jobs 2 --out runs.jsonl
    python bench/small_data.py --table runs.jsonl          # the tables of finished runs (each, by variant)

Every run appends one json line to ``--out`` when it ends (a restarted command skips the runs
already there), so a long campaign can be stopped and continued. ``--base`` holds the keys of
every run (default: the issue's command, ResNet-18 from scratch at 400 px, 12 epochs, batch 4,
an evaluation every 3 epochs); ``--light`` shrinks the head (64 channels, 2 convs) and the
inputs (320 px) so a 2-core CPU can run a campaign; GPUs run the full one.
Variants (what each run adds to the command):
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "default": [],                                                    # what the configs resolve to now
    "before": ["clip_grad_norm=0", "bias_lr_factor=1", "on_spike=warn"],  # the settings before the stability work
    "noclip": ["clip_grad_norm=0"],
    # each stability aid alone on top of "before"
    "before_clip": ["bias_lr_factor=1", "on_spike=warn"],
    "before_bias": ["clip_grad_norm=0", "on_spike=warn"],
    "ema": ["ema=0.999"],
    "ema_tenth": ["ema=0.93"],          # averages over ~14 iterations: a tenth of 12 epochs of 48 tiles at batch 4
    "aug": ["scale_jitter=(0.5,1.5)", "photometric=0.5", "vflip_prob=0.5", "rot90=True"],
    "ema_aug": ["ema=0.999", "scale_jitter=(0.5,1.5)", "photometric=0.5", "vflip_prob=0.5", "rot90=True"],
    # a stress test: 4x the papers' lr (0.04 at a batch of 16), before and after
    "lr4x_before": ["lr=0.04", "clip_grad_norm=0", "bias_lr_factor=1", "on_spike=warn"],
    "lr4x": ["lr=0.04"],
    "lr4x_noclip": ["lr=0.04", "clip_grad_norm=0"],
    "adamw": ["optimizer=adamw", "lr=0.004", "weight_decay=0.05", "scheduler=cosine", "bias_lr_factor=1"],
}
__doc__ += "".join(f"    {name}: {' '.join(keys) or '(nothing)'}\n" for name, keys in VARIANTS.items())

BASE = ["backbone=resnet18", "pretrained=False", "min_size=(400,)", "max_size=400", "test_min_size=400",
        "epochs=12", "batch_size=4", "eval_interval=3", "num_workers=1", "flops=False", "log_interval=50"]
LIGHT = ["fpn_channels=64", "num_convs=2", "min_size=(320,)", "max_size=320", "test_min_size=320"]


def data_keys(name: str) -> list[str]:
    """The built-in dataset, generated now (not by two runs at once)."""
    from public.data.loaders import BUILTIN_DATA
    from config import BUILTIN_DATA as BY_NAME

    root = Path(BY_NAME[name]()["train_images"]).parent
    BUILTIN_DATA[root]()
    return [f"data={name}"]


def run_one(job: dict, threads: int) -> dict:
    work_dir = Path(job["work_dir"])
    cmd = [sys.executable, str(REPO / "train.py"), "--config", job["config"], *job["keys"],
           f"seed={job['seed']}", f"work_dir={work_dir}", "overwrite=True"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    rows = []
    if (work_dir / "metrics.jsonl").is_file():
        rows = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    log = (work_dir / "train.log").read_text() if (work_dir / "train.log").is_file() else ""
    evaluations = [(row["epoch"], row["mAP"]) for row in rows if "mAP" in row]
    losses = [(row["epoch"], round(row.get("loss_cls", float("nan")), 4)) for row in rows]
    maps = [m for _, m in evaluations]
    return {**{k: job[k] for k in ("config", "variant", "seed", "data")}, "rc": proc.returncode,
            "minutes": round((time.time() - start) / 60, 1), "evaluations": evaluations, "loss_cls": losses,
            "best": max(maps) if maps else None, "last": maps[-1] if maps else None,
            "spikes": log.count("loss spike at iteration"), "collapse_warnings": log.count("collapsed"),
            "done": next((line.split("done: ", 1)[1] for line in log.splitlines() if "done: " in line), ""),
            "error": proc.stderr.strip().splitlines()[-1] if proc.returncode and proc.stderr.strip() else ""}


def table(rows: list[dict]) -> str:
    lines = ["| data | config | variant | seed | mAP at each evaluation | best | last | last/best | spikes | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["data"], r["config"], r["variant"], r["seed"])):
        maps = " / ".join(f"{m:.4f}" for _, m in r["evaluations"]) or "-"
        ratio = f"{r['last'] / r['best']:.2f}" if r["best"] else "-"
        reported = r["collapse_warnings"] or any(w in r.get("done", "") for w in ("collapsed", "fell back"))
        note = r["error"] or ("collapse / fall reported" if reported else "")
        best = f"{r['best']:.4f}" if r["best"] is not None else "-"
        last = f"{r['last']:.4f}" if r["last"] is not None else "-"
        lines.append(f"| {r['data']} | {r['config']} | {r['variant']} | {r['seed']} | {maps} | {best} | {last} "
                     f"| {ratio} | {r['spikes']} | {note} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """One line per (data, config, variant): the seeds, mean last mAP, the lowest last/best, spikes."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["best"] is not None:
            groups.setdefault((r["data"], r["config"], r["variant"]), []).append(r)
    lines = ["| data | config | variant | seeds | last mAP (each seed) | mean | lowest last/best | spikes |",
             "|---|---|---|---|---|---|---|---|"]
    for (data, config, variant), runs in sorted(groups.items()):
        runs.sort(key=lambda r: r["seed"])
        lasts = [r["last"] for r in runs]
        lowest = min(r["last"] / r["best"] if r["best"] else 0.0 for r in runs)
        lines.append(f"| {data} | {config} | {variant} | {' '.join(str(r['seed']) for r in runs)} "
                     f"| {' / '.join(f'{m:.3f}' for m in lasts)} | {sum(lasts) / len(lasts):.3f} | {lowest:.2f} "
                     f"| {sum(r['spikes'] for r in runs)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="crowns", choices=("crowns", "demo"))
    parser.add_argument("--configs", nargs="+", default=["fcos/config.py", "atss/config.py", "retinanet/config.py"])
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--light", action="store_true", help="64-channel 2-conv head at 320 px (CPU campaigns)")
    parser.add_argument("--extra", nargs="*", default=[], help="more key=value for every run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with cores / jobs threads)")
    parser.add_argument("--threads", type=int, default=0, help="threads per run (default: cores / jobs)")
    parser.add_argument("--out", default="work_dirs/small_data/runs.jsonl")
    parser.add_argument("--table", metavar="JSONL", help="print the table of a finished campaign and exit")
    args = parser.parse_args(argv)
    if args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]
        print(table(rows) + "\n\n" + summary(rows))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.is_file():
        done = {(r["data"], r["config"], r["variant"], r["seed"])
                for r in map(json.loads, out.read_text().splitlines()) if r.get("rc") == 0}
    base = BASE + (LIGHT if args.light else []) + data_keys(args.data) + args.extra
    jobs = [{"config": config, "variant": variant, "seed": seed, "data": args.data,
             "keys": base + VARIANTS[variant],
             "work_dir": str(out.parent / f"{args.data}_{Path(config).parent.name}_{variant}_{seed}")}
            for variant in args.variants for config in args.configs for seed in args.seeds
            if (args.data, config, variant, seed) not in done]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    print(f"{len(jobs)} runs, {args.jobs} at once with {threads} threads each; results in {out}", flush=True)

    def work(job):
        result = run_one(job, threads)
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"{job['config']} {job['variant']} seed {job['seed']}: best {result['best']} last {result['last']} "
              f"spikes {result['spikes']} ({result['minutes']} min){' ' + result['error'] if result['error'] else ''}",
              flush=True)
        return result

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(work, jobs))
    print(table([json.loads(line) for line in out.read_text().splitlines() if line.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
