"""Check a config's datasets before training on them.

    python -m tools.check_dataset --config fcos/config.py [key=value ...] [--decode] [--plot [FILE]]

Reads the train and val sets of the config with the same validation pass training runs at
start (public/data/validate.py), and prints every problem grouped and counted, a summary
(images, boxes, negatives, boxes per class, most boxes in one image), and the box sizes after
the config's resize against the model's FPN levels: how many boxes each level receives under
the model's assignment rule, and how many no level matches well, with the config key to change.
`--plot` writes a figure: class and box-size histograms, and a few training images with their
boxes. Exit code 1 when training would fail, 2 for a bad command line or config, else 0.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):   # run as a file (python path/to/tools/x.py): the repository's modules first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import load_config
from public.data.loaders import ensure_builtin_data
from public.data.levels import FPN_STRIDES, LEVEL_NAMES, LevelRule, level_spread_hint, resized_box_sizes
from public.data.validate import DatasetError, Validation, check_same_classes, validate_coco


def summary_lines(report: Validation) -> list[str]:
    counts = [len(b) for b in report.boxes]
    num_boxes = sum(counts)
    labels = np.concatenate(report.labels) if report.labels else np.zeros(0, np.int64)
    per_class = np.bincount(labels, minlength=len(report.category_ids))
    busiest = int(np.argmax(counts)) if counts else 0
    lines = [f"{len(counts)} images, {num_boxes} boxes ({report.num_crowd} crowd regions besides), "
             f"{sum(c == 0 for c in counts)} negatives (no box), "
             f"at most {max(counts, default=0)} boxes in one image"
             + (f" (image id {report.image_ids[busiest]})" if counts else "")]
    lines.append("boxes per class: " + ", ".join(
        f"{name} {n}" for name, n in zip(report.class_names, per_class.tolist())))
    empty = [name for name, n in zip(report.class_names, per_class.tolist()) if n == 0]
    if empty:
        lines.append(f"classes without a box: {', '.join(empty)}")
    return lines


def level_lines(rule: LevelRule, splits: dict[str, tuple[np.ndarray, int]]) -> list[str]:
    lines = [f"box sizes after resize against the levels: {rule.description}"]
    header = f"  {'level':<6}{'stride':>7}  {'range':<24}" + "".join(
        f"{f'{name} ({size} px)':>18}" for name, (_, size) in splits.items())
    lines.append(header)
    results = {name: rule.assign(wh) for name, (wh, _) in splits.items()}
    for k, (level_name, stride) in enumerate(zip(LEVEL_NAMES, FPN_STRIDES)):
        lines.append(f"  {level_name:<6}{stride:>7}  {rule.ranges[k]:<24}" + "".join(
            f"{int((level == k).sum()):>18}" for level, _, _ in results.values()))
    for name, (level, small, large) in results.items():
        if small.any():
            lines.append(f"  {name}: {int(small.sum())} of {len(level)} boxes are too small for any level (narrower "
                         f"than their level's stride, P3: 8 px"
                         + (", or below the IoU threshold with every anchor" if rule.iou_small else "")
                         + f") and match no level well: {rule.small_hint}")
        if large.any():
            lines.append(f"  {name}: {int(large.sum())} of {len(level)} boxes are larger than every anchor can match "
                         f"well: {rule.large_hint}")
        if not small.any() and not large.any() and len(level):
            lines.append(f"  {name}: every box fits a level")
    return lines


# ---- the figure ----------------------------------------------------------------------------
def plot(reports: dict[str, Validation], splits: dict[str, tuple[np.ndarray, int]], rule: LevelRule | None,
         out: Path, num_images: int = 8) -> None:
    """Class and box-size histograms, and a grid of training images with their boxes."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = reports["train"]
    cols = 4
    rows = 1 + math.ceil(num_images / cols)
    fig = plt.figure(figsize=(4 * cols, 3.6 * rows))
    ax = fig.add_subplot(rows, 2, 1)
    x = np.arange(len(train.class_names))
    for offset, (name, report) in zip((-0.2, 0.2), reports.items()):
        counts = np.bincount(np.concatenate(report.labels) if report.labels else np.zeros(0, np.int64),
                             minlength=len(report.class_names))
        ax.bar(x + offset, counts[:len(x)], width=0.4, label=name)
    ax.set_xticks(x, train.class_names, rotation=45 if len(x) > 8 else 0, ha="right" if len(x) > 8 else "center")
    ax.set_ylabel("boxes")
    ax.set_title("boxes per class")
    ax.legend()
    ax = fig.add_subplot(rows, 2, 2)
    all_sides = np.concatenate([np.sqrt(wh.prod(axis=1)) for wh, _ in splits.values()] + [np.zeros(0)])
    low, high = (all_sides.min(), all_sides.max()) if all_sides.size else (1.0, 2.0)
    bins = np.geomspace(max(low, 0.5), max(high, 2 * max(low, 0.5)), 30)
    for name, (wh, size) in splits.items():
        ax.hist(np.sqrt(wh.prod(axis=1)), bins=bins, alpha=0.6, label=f"{name} ({size} px)")
    if rule is not None and rule.kind == "max_side":
        for bound in rule.bounds[1:-1]:   # max(w, h) / 2 = bound is side 2 * bound for a square box
            ax.axvline(2 * bound, color="k", ls="--", lw=0.8)
    elif rule is not None:
        for k in range(rule.anchors.shape[0]):
            ax.axvline(float(np.sqrt(rule.anchors[k, 0].prod())), color="k", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("sqrt(box area) after resize, px (dashed: level boundaries / anchor sizes)")
    ax.set_ylabel("boxes")
    ax.set_title("box sizes")
    ax.legend()
    with_boxes = [i for i, b in enumerate(train.boxes) if len(b)][:num_images]
    for slot, i in enumerate(with_boxes):
        ax = fig.add_subplot(rows, cols, cols + slot + 1)
        image = cv2.imread(str(Path(train.images_dir) / train.file_names[i]),
                           cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is not None:
            ax.imshow(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        for (x1, y1, x2, y2), label in zip(train.boxes[i].tolist(), train.labels[i].tolist()):
            colour = plt.cm.tab10(label % 10)
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=1.5))
            ax.text(x1, y1, train.class_names[label], color="white", fontsize=7, va="bottom",
                    bbox={"facecolor": colour, "pad": 1, "lw": 0})
        ax.set_title(f"image id {train.image_ids[i]}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


# ---- the command ---------------------------------------------------------------------------
def check(cfg, decode: bool = False, plot_to: str | None = None, out=sys.stdout) -> int:
    """Print the check of ``cfg``'s train and val sets; return the exit code (1 if training would fail)."""
    def say(line: str = "") -> None:
        print(line, file=out)

    paths = {"train": (cfg.train_images, cfg.train_annotations), "val": (cfg.val_images, cfg.val_annotations)}
    ensure_builtin_data(cfg)  # the demo shapes or tree crowns, made on first use when the config points there
    mode = "decode" if decode else cfg.check_images
    reports = {name: validate_coco(images, annotations, "header" if mode == "off" else mode)
               for name, (images, annotations) in paths.items()}
    fatal = False
    for name, report in reports.items():
        say(f"{name}: {report.annotations_file} (images in {report.images_dir})")
        for group in report.fatal:
            say(f"  FATAL    {group.format()}")
        for group in report.repaired:
            say(f"  repaired {group.format()}")
        fatal |= bool(report.fatal)
        if report.cleaned:
            for line in summary_lines(report):
                say(f"  {line}")
        say()
    if all(r.cleaned for r in reports.values()):
        try:
            check_same_classes(reports["train"], reports["val"], cfg.train_annotations, cfg.val_annotations)
        except DatasetError as error:
            say(f"FATAL {error}")
            fatal = True
    ready = {name: r for name, r in reports.items() if r.cleaned}
    splits = {name: resized_box_sizes(r, cfg, name == "train") for name, r in ready.items()}
    rule = cfg.level_rule()
    if rule is not None and splits:
        for line in level_lines(rule, splits):
            say(line)
        hint = level_spread_hint(cfg, splits["train"][0]) if "train" in splits else None
        if hint:
            say(f"  train: {hint}")
        say()
    if plot_to and "train" in ready:
        plot(ready, splits, rule, Path(plot_to))
        say(f"figure: {plot_to}")
    say("training would fail: fix the FATAL problems above" if fatal else
        "no fatal problem: training can start" + (" (repairs above are applied at every start)"
                                                   if any(r.repaired for r in reports.values()) else ""))
    return 1 if fatal else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="fcos/config_demo.py", help="a model's config file")
    parser.add_argument("--decode", action="store_true", help="decode every image fully (slower than the header check)")
    parser.add_argument("--plot", nargs="?", const="", default=None, metavar="FILE",
                        help="write a figure (default work_dir/dataset_check.png)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        plot_to = None if args.plot is None else (args.plot or str(Path(cfg.work_dir) / "dataset_check.png"))
        return check(cfg, args.decode, plot_to)
    except (KeyError, TypeError, ValueError, FileNotFoundError, AttributeError) as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
