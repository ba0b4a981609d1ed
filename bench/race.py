"""The small-data race: each detector a user might pick, trained from scratch for the same CPU
time on the same machine, every evaluation scored by our evaluator on the same val json.

    python bench/race.py --minutes 15 --seeds 1 2 3 --jobs 2 --out /tmp/race \
        --contenders fcos atss yolov8n tv_fcos papers_fcos
    python bench/race.py --contenders fcos --keys ema=0.99 --tag ema --out /tmp/race   # a variant of ours
    python bench/race.py --table /tmp/race/race.jsonl --minutes 15 --figure docs/race.png

Data: the raccoon photos (``--voc``, default ../shared/data/raccoon: VOC xml, the dataset's own
train.txt / test.txt split) converted with ``python -m tools.convert voc`` into ``--out``, as a
user would. Contenders (``CONTENDERS`` below):

- ours (``fcos``, ``atss``): ``train.py`` with the small-data recipe's keys (``RECIPE``); its
  metrics.jsonl gives every evaluation (our evaluator, the val json).
- ``papers_fcos`` / ``papers_atss``: the papers' config at ResNet-18 from scratch, 400 px,
  12 epochs, batch 4, an evaluation every 3 epochs (what the README said to run before).
- ``yolov8n``: Ultralytics YOLOv8n from scratch (``yolov8n.yaml``, no weights), as its users run
  it with a budget: ``time=`` (its trainer fits the epochs and its lr schedule to it; here on the
  process's CPU clock), imgsz 416, batch 4, plots off, offline, one checkpoint per epoch
  (``save_period=1``). After the run each epoch's checkpoint predicts the val images at its val
  settings (conf 0.001, iou 0.7, 300 detections) and our evaluator scores them. It runs in its
  own virtual environment (``--venv``, created on first use with ``--system-site-packages`` so
  that it reuses the installed torch; ``pip install ultralytics`` puts opencv-python there, not
  beside ours).
- ``tv_fcos``: torchvision's FCOS (``fcos_resnet50_fpn``'s model on a ResNet-18 FPN from random
  init, BatchNorm trained, 256-channel 4-conv head), AdamW lr 1e-4, 416 px, batch 4, random
  horizontal flips, evaluated every ``TV_EVAL_EVERY`` epochs until the budget is spent.

The budget is CPU time, not wall time: on a shared machine a run's wall time says more about
its neighbours than about the detector. Every contender is one process with one torch thread
and no data-loading workers (``--jobs`` of them side by side); its CPU time is sampled from
/proc, it is stopped past the budget plus a grace, and an evaluation's minutes are the CPU
minutes the process had used when it was written. Each evaluation is one json line in
``--out``/race.jsonl: contender, seed, epoch, minutes (CPU), wall_minutes, mAP, AP50. A
restarted command skips the (contender, seed) pairs already there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOC_DEFAULT = REPO.parent / "shared" / "data" / "raccoon"
VENV_DEFAULT = Path("/tmp/densedet-race-venv")
GRACE_MINUTES = 2.0          # past the budget: time for the evaluation the run is in
YOLO_IMGSZ = 416
TV_SIZE = 416
TV_EVAL_EVERY = 5

# The papers' configs as the README said to run them on small data before the race.
PAPERS = ["backbone=resnet18", "pretrained=False", "min_size=(400,)", "max_size=400", "test_min_size=400",
          "epochs=12", "batch_size=4", "eval_interval=3"]
# The small-data recipe (the race's result; docs/results.md, "The small-data race").
RECIPE = ["backbone=resnet18", "pretrained=False", "fpn_channels=64", "num_convs=2",
          "min_size=(320,)", "max_size=320", "test_min_size=320", "batch_size=4",
          "optimizer=adamw", "lr=0.004", "weight_decay=0.05", "bias_lr_factor=1", "scheduler=cosine",
          "warmup_iters=100", "epochs=12", "eval_interval=3", "ema=0.98", "scale_jitter=(0.5,1.5)",
          "mosaic=0.5", "mosaic_close=5", "photometric=0.5"]

CONTENDERS = {
    "fcos": ("ours", "fcos/config.py", RECIPE),
    "atss": ("ours", "atss/config.py", RECIPE),
    "papers_fcos": ("ours", "fcos/config.py", PAPERS),
    "papers_atss": ("ours", "atss/config.py", PAPERS),
    "yolov8n": ("yolo", None, []),
    "tv_fcos": ("torchvision", None, []),
}


# ---------------------------------------------------------------- data

def convert(voc: Path, out: Path) -> dict[str, str]:
    """The VOC set -> out/data/{train,val}.json with our converter; the train.py keys for them."""
    if not (voc / "annotations").is_dir():
        raise SystemExit(f"race: no VOC annotations in {voc}/annotations (pass --voc)")
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, ids in (("train", "train.txt"), ("val", "test.txt")):
        target = data / f"{split}.json"
        if not target.is_file():
            subprocess.run([sys.executable, "-m", "tools.convert", "voc", str(voc / "annotations"), "--out",
                            str(target), "--ids", str(voc / ids), "--images", str(voc / "images")],
                           cwd=REPO, check=True)
    return {"train_images": str(voc / "images"), "train_annotations": str(data / "train.json"),
            "val_images": str(voc / "images"), "val_annotations": str(data / "val.json")}


def yolo_dataset(data: dict[str, str], root: Path) -> Path:
    """Ultralytics' layout (images/<split>, labels/<split>, a data yaml) built from our COCO jsons,
    so that both read the same boxes: images are links, labels normalised cx cy w h."""
    for split in ("train", "val"):
        coco = json.loads(Path(data[f"{split}_annotations"]).read_text())
        cat_index = {c["id"]: k for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        lines: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
        sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        for a in coco["annotations"]:
            if a.get("iscrowd", 0):
                continue
            w_img, h_img = sizes[a["image_id"]]
            x, y, w, h = a["bbox"]
            lines[a["image_id"]].append(f"{cat_index[a['category_id']]} {(x + w / 2) / w_img:.6f} "
                                        f"{(y + h / 2) / h_img:.6f} {w / w_img:.6f} {h / h_img:.6f}")
        for im in coco["images"]:
            link = root / "images" / split / Path(im["file_name"]).name
            if not link.exists():
                link.symlink_to(Path(data[f"{split}_images"]) / im["file_name"])
            (root / "labels" / split / (link.stem + ".txt")).write_text("\n".join(lines[im["id"]]) + "\n")
    names = [c["name"] for c in sorted(json.loads(Path(data["train_annotations"]).read_text())["categories"],
                                       key=lambda c: c["id"])]
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
                    + "".join(f"  {k}: {name}\n" for k, name in enumerate(names)))
    return yaml


def ensure_venv(venv: Path) -> Path:
    """A virtual environment with ultralytics (created on first use), reusing the installed torch."""
    python = venv / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import ultralytics"],
                                           capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "ultralytics"], check=True)
    return python


# ---------------------------------------------------------------- running

def _env(threads: int) -> dict[str, str]:
    # YOLO_OFFLINE: no connectivity checks or asset downloads (fonts are only needed for plots, off).
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "YOLO_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its waited-for children (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")    # utime stime cutime cstime


def _run(cmd: list[str], log: Path, threads: int, minutes: float) -> float:
    """Run ``cmd`` (stdout/err to ``log``), stopped once it has used ``minutes`` + the grace of CPU
    time; its start time. Its CPU time is sampled every few seconds into ``log``.cpu.json
    ([wall s, CPU s] pairs), so that an evaluation's wall time converts to the CPU time spent by
    then, whatever else ran on the machine."""
    start = time.time()
    samples = [[0.0, 0.0]]
    limit = (minutes + GRACE_MINUTES) * 60
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(threads), stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None and samples[-1][1] < limit:
            cpu = _cpu_seconds(proc.pid)
            if cpu is not None:
                samples.append([time.time() - start, cpu])
            time.sleep(2.0)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            f.write(f"\nrace: stopped at {minutes} + {GRACE_MINUTES} CPU minutes\n")
    log.with_suffix(".cpu.json").write_text(json.dumps(samples))
    return start


def cpu_minutes(samples: list[list[float]], wall_minutes: float) -> float:
    """The CPU minutes a run had used at ``wall_minutes`` (linear between samples; past the last
    sample, the last sample's CPU time plus the wall time since)."""
    import numpy as np

    wall = np.array([s[0] for s in samples]) / 60
    cpu = np.array([s[1] for s in samples]) / 60
    if wall_minutes >= wall[-1]:
        return float(cpu[-1] + wall_minutes - wall[-1])
    return float(np.interp(wall_minutes, wall, cpu))


def run_ours(name: str, seed: int, run_dir: Path, data: dict, minutes: float, threads: int,
             extra: list[str]) -> list[dict]:
    _, config, keys = CONTENDERS[name]
    keys = [*keys, *extra]
    # the recipe's run fits the budget where train.py can (its time_budget key), else its epochs are
    # the ones measured to fit 15 minutes on a 2-core Xeon; the papers' command is run as it is
    if keys[:len(PAPERS)] != PAPERS and _has_key("time_budget") and not any(k.startswith("time_budget=") for k in keys):
        keys.append(f"time_budget={minutes}")
    cmd = [sys.executable, str(REPO / "train.py"), "--config", config, *keys,
           *[f"{k}={v}" for k, v in data.items()], "num_workers=0", "flops=False", "log_interval=10", f"seed={seed}",
           f"work_dir={run_dir}", "overwrite=True"]
    start = _run(cmd, run_dir.with_suffix(".log"), threads, minutes)
    return ours_points(run_dir / "metrics.jsonl", run_dir / "train.log", start)


def _has_key(key: str) -> bool:
    from config import BaseConfig
    return hasattr(BaseConfig, key)


def ours_points(metrics: Path, log: Path | None = None, start: float | None = None) -> list[dict]:
    """metrics.jsonl's evaluation rows -> (epoch, minutes, mAP, AP50). Minutes: from the process's
    start (``start``, epoch seconds) to the log line of the evaluation ("<time> epoch N: mAP ...")
    when given, so that start-up counts as it does for the other contenders; else the row's time
    (the training loop's clock)."""
    if not metrics.is_file():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    logged = {}
    if log is not None and start is not None and log.is_file():
        for line in log.read_text().splitlines():
            match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) epoch (\d+): mAP ", line)
            if match:
                stamp = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S"))
                logged[int(match[2])] = (stamp - start) / 60
    return [{"epoch": r["epoch"], "minutes": logged.get(r["epoch"], r["time"] / 60), "mAP": r["mAP"], "AP50": r["AP50"]}
            for r in rows if "mAP" in r]


def run_yolo(seed: int, run_dir: Path, data: dict, minutes: float, threads: int, venv: Path) -> list[dict]:
    python = ensure_venv(venv)
    yaml = yolo_dataset(data, run_dir.parent / "yolo_data")
    # its time= budget counts this process's CPU time (time.process_time), not wall time: on a
    # shared machine wall time says more about the neighbours than about the detector
    train = (f"import ultralytics.utils.torch_utils as t; t.NUM_THREADS = {threads}\n"
             "import time, types, ultralytics.engine.trainer as tr\n"
             "tr.time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith('_')})\n"
             "tr.time.time = time.process_time\n"
             "from ultralytics import YOLO\n"
             f"YOLO('yolov8n.yaml').train(data='{yaml}', imgsz={YOLO_IMGSZ}, batch=4, time={minutes / 60!r}, "
             f"epochs=100, seed={seed}, workers=0, device='cpu', amp=False, pretrained=False, plots=False, "
             f"save_period=1, project='{run_dir.parent}', name='{run_dir.name}', exist_ok=True)\n")
    start = _run([str(python), "-c", train], run_dir.with_suffix(".log"), threads, minutes)
    weights = sorted((run_dir / "weights").glob("epoch*.pt"), key=lambda p: int(p.stem[5:]))
    saved = {int(p.stem[5:]): (p.stat().st_mtime - start) / 60 for p in weights}
    # last.pt is the final epoch's (its own val), which save_period may not have written
    last = run_dir / "weights" / "last.pt"
    results = run_dir / "predictions"
    score = (f"import sys; sys.path.insert(0, '{REPO}'); from bench.race import yolo_predict\n"
             f"yolo_predict({[str(p) for p in weights] + ([str(last)] if last.is_file() else [])!r}, "
             f"'{data['val_annotations']}', '{data['val_images']}', '{results}')\n")
    subprocess.run([str(python), "-c", score], cwd=REPO, env=_env(threads), check=True,
                   stdout=open(run_dir.with_name(run_dir.name + "_predict.log"), "w"), stderr=subprocess.STDOUT)
    points = []
    for path in weights:
        epoch = int(path.stem[5:])
        points.append({"epoch": epoch, "minutes": saved[epoch], **score_results(results / f"{path.stem}.json",
                                                                                 data["val_annotations"])})
    if last.is_file() and (not weights or last.stat().st_mtime > weights[-1].stat().st_mtime + 1):
        points.append({"epoch": (points[-1]["epoch"] + 1) if points else 1,
                       "minutes": (last.stat().st_mtime - start) / 60,
                       **score_results(results / "last.json", data["val_annotations"])})
    return points


def yolo_predict(weights: list[str], val_annotations: str, val_images: str, out: str) -> None:
    """In the Ultralytics venv: each checkpoint's detections on the val images at its val settings
    (conf 0.001, iou 0.7, 300 detections, imgsz 416) -> out/<checkpoint>.json as COCO results."""
    from ultralytics import YOLO

    coco = json.loads(Path(val_annotations).read_text())
    cat_ids = sorted(c["id"] for c in coco["categories"])
    images = [(im["id"], str(Path(val_images) / im["file_name"])) for im in coco["images"]]
    Path(out).mkdir(parents=True, exist_ok=True)
    for path in weights:
        model = YOLO(path)
        results = []
        for image_id, file in images:
            r = model.predict(file, imgsz=YOLO_IMGSZ, conf=0.001, iou=0.7, max_det=300, device="cpu",
                              verbose=False)[0]
            boxes = r.boxes.xyxy.numpy()                       # [K, 4] original pixels
            for (x1, y1, x2, y2), score, cls in zip(boxes, r.boxes.conf.numpy(), r.boxes.cls.numpy()):
                results.append({"image_id": image_id, "category_id": cat_ids[int(cls)],
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                "score": float(score)})
        (Path(out) / f"{Path(path).stem}.json").write_text(json.dumps(results))


def score_results(results_json: Path, val_annotations: str) -> dict:
    """Our evaluator (pycocotools' COCOeval on the val json) on a COCO results file: mAP, AP50."""
    from pycocotools.coco import COCO
    import contextlib
    import io

    from public.engine.evaluate.evaluator import coco_evaluate

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(val_annotations)
    stats = coco_evaluate(gt, json.loads(Path(results_json).read_text())).stats
    return {"mAP": stats[0], "AP50": stats[1]}


def run_torchvision(seed: int, run_dir: Path, data: dict, minutes: float, threads: int) -> list[dict]:
    cmd = [sys.executable, "-c", f"from bench.race import tv_fcos_train; tv_fcos_train({data!r}, "
           f"'{run_dir}', {seed}, {minutes!r})"]
    _run(cmd, run_dir.with_suffix(".log"), threads, minutes)
    points = []
    for line in (run_dir / "evals.jsonl").read_text().splitlines() if (run_dir / "evals.jsonl").is_file() else []:
        row = json.loads(line)
        points.append({"epoch": row["epoch"], "minutes": row["minutes"],
                       **score_results(run_dir / row["results"], data["val_annotations"])})
    return points


def tv_fcos_train(data: dict, run_dir: str, seed: int, minutes: float) -> None:
    """torchvision's FCOS on a ResNet-18 FPN from random init, trained until ``minutes`` are spent,
    its detections saved every TV_EVAL_EVERY epochs and at the end (run_dir/evals.jsonl)."""
    import random

    import cv2
    import numpy as np
    import torch
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    clock = time.process_time          # the budget is CPU time (see _run)
    start, wall_start = clock(), time.time()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    random.seed(seed)
    torch.manual_seed(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    def load(split: str):
        coco = json.loads(Path(data[f"{split}_annotations"]).read_text())
        cat_ids = sorted(c["id"] for c in coco["categories"])
        boxes: dict[int, list] = {im["id"]: [] for im in coco["images"]}
        for a in coco["annotations"]:
            if not a.get("iscrowd", 0):
                x, y, w, h = a["bbox"]
                boxes[a["image_id"]].append([x, y, x + w, y + h, cat_ids.index(a["category_id"]) + 1])
        return [(im["id"], str(Path(data[f"{split}_images"]) / im["file_name"]),
                 np.array(boxes[im["id"]], np.float32).reshape(-1, 5)) for im in coco["images"]], cat_ids

    train, cat_ids = load("train")
    val, _ = load("val")

    def image(path: str, flip: bool = False) -> torch.Tensor:
        img = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
        if flip:
            img = img[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255   # [3, H, W]

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=torch.nn.BatchNorm2d, returned_layers=[2, 3, 4],
                                   extra_blocks=LastLevelP6P7(256, 256))
    # num_classes counts a background index (torchvision's convention): labels are 1..C
    # score_thresh 0.05 (ours; torchvision's default 0.2 is a display threshold and cuts recall)
    model = FCOS(backbone, num_classes=len(cat_ids) + 1, min_size=TV_SIZE, max_size=TV_SIZE, score_thresh=0.05)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    budget = minutes * 60
    epoch = 0
    epoch_seconds = 0.0

    def save(epoch: int) -> None:
        model.eval()
        results = []
        with torch.no_grad():
            for image_id, path, _ in val:
                out = model([image(path)])[0]
                for (x1, y1, x2, y2), score, label in zip(out["boxes"].tolist(), out["scores"].tolist(),
                                                          out["labels"].tolist()):
                    results.append({"image_id": image_id, "category_id": cat_ids[label - 1],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
        (run_dir / f"epoch{epoch}.json").write_text(json.dumps(results))
        with open(run_dir / "evals.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch, "minutes": (time.time() - wall_start) / 60,
                                "results": f"epoch{epoch}.json"}) + "\n")
        model.train()

    model.train()
    while clock() - start + epoch_seconds < budget:
        t0 = clock()
        order = list(range(len(train)))
        random.shuffle(order)
        for k in range(0, len(order) - 3, 4):
            images, targets = [], []
            for i in order[k:k + 4]:
                _, path, boxes = train[i]
                flip = random.random() < 0.5
                img = image(path, flip)
                b = torch.from_numpy(boxes.copy())
                if flip:
                    w = img.shape[2]
                    b[:, [0, 2]] = w - b[:, [2, 0]]
                images.append(img)
                targets.append({"boxes": b[:, :4], "labels": b[:, 4].long()})
            losses = model(images, targets)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch += 1
        epoch_seconds = clock() - t0
        print(f"epoch {epoch} {epoch_seconds:.0f} s loss {loss.item():.3f}", flush=True)
        if epoch % TV_EVAL_EVERY == 0:
            save(epoch)
    if epoch % TV_EVAL_EVERY:
        save(epoch)


def run_job(job: dict, args) -> list[dict]:
    name, seed = job["contender"], job["seed"]
    kind = CONTENDERS[name][0]
    label = f"{name}+{args.tag}" if args.tag and CONTENDERS[name][0] == "ours" else name
    run_dir = Path(args.out) / "runs" / f"{label}_s{seed}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if kind == "ours":
        points = run_ours(name, seed, run_dir, job["data"], args.minutes, args.threads, args.keys)
    elif kind == "yolo":
        points = run_yolo(seed, run_dir, job["data"], args.minutes, args.threads, Path(args.venv))
    else:
        points = run_torchvision(seed, run_dir, job["data"], args.minutes, args.threads)
    samples_file = run_dir.with_suffix(".cpu.json")
    samples = json.loads(samples_file.read_text()) if samples_file.is_file() else [[0.0, 0.0]]
    rows = [{"contender": label, "seed": seed, **p, "wall_minutes": p["minutes"],
             "minutes": cpu_minutes(samples, p["minutes"])} for p in points]
    if not rows:       # a run with no evaluation is a row too, so that the table shows it
        rows = [{"contender": label, "seed": seed, "epoch": 0, "minutes": None, "mAP": None, "AP50": None}]
    with open(Path(args.out) / "race.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"race: {label} seed {seed}: {len(points)} evaluations, last mAP "
          f"{rows[-1]['mAP']}", flush=True)
    return rows


# ---------------------------------------------------------------- table and figure

def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarise(rows: list[dict], minutes: float | None = None) -> list[dict]:
    """Per (contender, seed): evaluations within ``minutes`` (all when None) -> last and best mAP,
    the last one's minutes; then one mean row per contender (seed "mean")."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        runs.setdefault((row["contender"], row["seed"]), [])
        if row["mAP"] is not None and (minutes is None or row["minutes"] <= minutes):
            runs[(row["contender"], row["seed"])].append(row)
    table = []
    for (name, seed), points in sorted(runs.items()):
        points.sort(key=lambda r: r["minutes"])
        last = points[-1] if points else None
        table.append({"contender": name, "seed": seed, "evaluations": len(points),
                      "minutes": last["minutes"] if last else None,
                      "last": last["mAP"] if last else None, "last_AP50": last["AP50"] if last else None,
                      "best": max(p["mAP"] for p in points) if points else None})
    for name in dict.fromkeys(r["contender"] for r in table):
        mine = [r for r in table if r["contender"] == name and r["last"] is not None]
        if mine:
            table.append({"contender": name, "seed": "mean", "evaluations": sum(r["evaluations"] for r in mine),
                          **{k: sum(r[k] for r in mine) / len(mine)
                             for k in ("minutes", "last", "last_AP50", "best")}})
    return table


def format_table(table: list[dict]) -> str:
    lines = ["| contender | seed | evaluations | minutes | last mAP | last AP50 | best mAP |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        def f(v, spec=".3f"):
            return "-" if v is None else format(v, spec)
        lines.append(f"| {r['contender']} | {r['seed']} | {r['evaluations']} | {f(r['minutes'], '.1f')} | "
                     f"{f(r['last'])} | {f(r['last_AP50'])} | {f(r['best'])} |")
    return "\n".join(lines)


def whole_image_floor(val_annotations: str) -> float:
    """The mAP of a detector that answers every image with one box, the whole image: a floor that
    says how much of a score large objects give away for free (raccoon val: 0.118)."""
    coco = json.loads(Path(val_annotations).read_text())
    cat_id = min(c["id"] for c in coco["categories"])
    results = [{"image_id": im["id"], "category_id": cat_id, "bbox": [0, 0, im["width"], im["height"]], "score": 1.0}
               for im in coco["images"]]
    path = Path(val_annotations).with_name("whole_image_results.json")
    path.write_text(json.dumps(results))
    return score_results(path, val_annotations)["mAP"]


def plot(rows: list[dict], path: Path, minutes: float | None = None, floor: float | None = None) -> None:
    """mAP against CPU minutes, every evaluation a point, one colour per contender, a line per seed;
    the budget and the whole-image floor as dotted lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    names = list(dict.fromkeys(r["contender"] for r in rows))
    for k, name in enumerate(names):
        colour = f"C{k}"
        for seed in sorted({r["seed"] for r in rows if r["contender"] == name}):
            points = sorted((r["minutes"], r["mAP"]) for r in rows if r["contender"] == name and r["seed"] == seed
                            and r["mAP"] is not None)
            if points:
                ax.plot(*zip(*points), "o-", color=colour, markersize=3, linewidth=0.8, alpha=0.8,
                        label=name if seed == min(r["seed"] for r in rows if r["contender"] == name) else None)
    if minutes is not None:
        ax.axvline(minutes, color="grey", linestyle=":", linewidth=0.8)
    if floor is not None:
        ax.axhline(floor, color="black", linestyle=":", linewidth=0.8, label="whole image, one box")
    ax.set_xlabel("CPU minutes used (one thread)")
    ax.set_ylabel("val mAP (COCO 0.5:0.95)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contenders", nargs="+", default=["fcos", "yolov8n"], choices=list(CONTENDERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--minutes", type=float, default=15.0, help="CPU-time budget of each run (minutes)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", default="/tmp/densedet-race", help="data, runs and race.jsonl (not the repository)")
    parser.add_argument("--voc", default=str(VOC_DEFAULT), help="a VOC folder: annotations/, images/, train.txt, test.txt")
    parser.add_argument("--venv", default=str(VENV_DEFAULT), help="Ultralytics' virtual environment")
    parser.add_argument("--keys", nargs="*", default=[], help="extra train.py keys for our contenders")
    parser.add_argument("--tag", default="", help="a name for --keys: our contenders' rows read 'fcos+TAG'")
    parser.add_argument("--table", help="a race.jsonl: print its table (and --figure) and stop")
    parser.add_argument("--val", help="with --table: the val json, for the whole-image floor")
    parser.add_argument("--figure", help="where to draw the figure (default: --out/race.png)")
    args = parser.parse_args(argv)

    if args.table:
        rows = read_rows(Path(args.table))
    else:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        data = convert(Path(args.voc), out)
        done = {(r["contender"], r["seed"]) for r in read_rows(out / "race.jsonl")} if (out / "race.jsonl").is_file() else set()
        def label(c):
            return f"{c}+{args.tag}" if args.tag and CONTENDERS[c][0] == "ours" else c
        jobs = [{"contender": c, "seed": s, "data": data} for s in args.seeds for c in args.contenders
                if (label(c), s) not in done]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(lambda job: run_job(job, args), jobs))
        rows = read_rows(out / "race.jsonl")
    # a run's last evaluation may end a little past the budget (Ultralytics counts from its trainer's
    # start, after the model and data are set up): 5% of slack, the same for every contender
    budget = args.minutes * 1.05
    print(f"evaluations within {budget:.1f} minutes of each run's start")
    print(format_table(summarise(rows, budget)))
    figure = Path(args.figure) if args.figure else Path(args.table or Path(args.out) / "race.jsonl").with_suffix(".png")
    floor = None
    if not args.table or args.val:
        floor = whole_image_floor(args.val or str(Path(args.out) / "data" / "val.json"))
        print(f"whole image as one box: mAP {floor:.3f}")
    plot(rows, figure, args.minutes, floor)
    print(f"figure: {figure}")


if __name__ == "__main__":
    main()
