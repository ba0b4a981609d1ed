"""Check a config's datasets before training on them.

    python -m public.data.check --config fcos/config.py [key=value ...] [--decode] [--plot [FILE]]

Reads the train and val sets of the config with the same validation pass training runs at
start (`validate.py`), and prints every problem grouped and counted, a summary (images, boxes,
negatives, boxes per class, most boxes in one image), and the box sizes after the config's
resize against the model's FPN levels: how many boxes each level receives under the model's
assignment rule, and how many no level matches well, with the config key to change.
`--plot` writes a figure: class and box-size histograms, and a few training images with their
boxes. Exit code 1 when training would fail, 2 for a bad command line or config, else 0.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from public.data.demo import DEMO_ROOT, ensure_demo_data
from public.data.transforms import Resize
from public.data.validate import DatasetError, Validation, check_same_classes, validate_coco

# P3-P7, the levels public/models/backbone.py builds for every model.
FPN_STRIDES = (8, 16, 32, 64, 128)
LEVEL_NAMES = ("P3", "P4", "P5", "P6", "P7")


# ---- the model's levels --------------------------------------------------------------------
@dataclass
class LevelRule:
    """Which FPN level a box of a given size goes to, and which boxes no level matches well.

    kind: "max_side" (FCOS scale ranges: max(w, h) / 2, what max(l, t, r, b) is at the box
    centre, in (bounds[k], bounds[k + 1]]) or "anchor" (the level of the anchor shape with the
    best IoU with the box when both are centred at the same point).
    """
    description: str
    ranges: list[str]                    # per level, for the table
    kind: str
    bounds: tuple = ()                   # max_side: (0, b1, ..., inf)
    anchors: np.ndarray | None = None    # anchor: [L, S, 2] (w, h) per level and shape
    poor_iou: float = 0.0                # anchor: best centred IoU below this fits poorly
    iou_small: bool = False              # anchor: a box below poor_iou and smaller than its anchor is too small
    large_hint: str = ""
    small_hint: str = ""

    def assign(self, wh: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """wh [N, 2] resized box sizes -> (level [N] int64, too_small [N] bool, too_large [N] bool).

        too_small: narrower than the stride of its level, so the grid may put no location (or
        anchor centre) inside it; with `iou_small`, also below `poor_iou` with every anchor
        because the box is smaller than the smallest ones. too_large: only for anchors, below
        `poor_iou` with every anchor because the box is bigger than the largest ones."""
        w, h = wh[:, 0], wh[:, 1]
        too_large = np.zeros(len(wh), dtype=bool)
        small_anchor = np.zeros(len(wh), dtype=bool)
        if self.kind == "max_side":
            level = np.searchsorted(np.asarray(self.bounds[1:-1]), np.maximum(w, h) / 2, side="left")
        else:
            aw, ah = self.anchors[..., 0].reshape(-1), self.anchors[..., 1].reshape(-1)  # [L*S]
            inter = np.minimum(w[:, None], aw) * np.minimum(h[:, None], ah)             # [N, L*S]
            iou = inter / (w[:, None] * h[:, None] + aw * ah - inter)
            best = iou.argmax(axis=1)
            level = best // self.anchors.shape[1]
            best_area = (aw * ah)[best]
            poor = iou.max(axis=1) < self.poor_iou
            too_large = poor & (w * h > best_area)
            small_anchor = poor & (w * h < best_area) & self.iou_small
        level = np.asarray(level, dtype=np.int64)
        too_small = (np.minimum(w, h) < np.asarray(FPN_STRIDES)[level]) | small_anchor
        return level, too_small, too_large


def level_rule(cfg) -> LevelRule | None:
    """The assignment rule of ``cfg``'s model, from its config fields (None if it has none we know)."""
    small = "raise min_size (training) / test_min_size (evaluation) so small objects cover more pixels"
    if hasattr(cfg, "anchor_octave_base"):            # RetinaNet: 3 scales x 3 ratios per level
        octave = np.array([2 ** (j / cfg.anchor_scales_per_octave) for j in range(cfg.anchor_scales_per_octave)])
        ratios = np.sqrt(np.asarray(cfg.aspect_ratios, dtype=np.float64))  # height / width
        shapes = [[(size / r, size * r) for size in cfg.anchor_octave_base * s * octave for r in ratios]
                  for s in FPN_STRIDES]
        return LevelRule(
            f"RetinaNet anchors (anchor_octave_base={cfg.anchor_octave_base}, anchor_scales_per_octave="
            f"{cfg.anchor_scales_per_octave}, aspect_ratios={tuple(cfg.aspect_ratios)}): a box goes to the level of "
            f"its best-IoU anchor; it fits poorly below fg_iou_thresh={cfg.fg_iou_thresh} with every anchor",
            [f"anchors {cfg.anchor_octave_base * s:g}-{cfg.anchor_octave_base * s * octave[-1]:.0f} px" for s in FPN_STRIDES],
            "anchor", anchors=np.array(shapes), poor_iou=cfg.fg_iou_thresh, iou_small=True,
            large_hint="lower max_size, or raise anchor_octave_base",
            small_hint=small + ", or lower anchor_octave_base")
    if hasattr(cfg, "octave_base_scale") and getattr(cfg, "positive_type", "ATSS") != "SSC":
        shapes = np.array([[(cfg.octave_base_scale * s, cfg.octave_base_scale * s)] for s in FPN_STRIDES])
        iou_rule = getattr(cfg, "positive_type", "ATSS") == "IoU"
        return LevelRule(
            f"ATSS anchors (octave_base_scale={cfg.octave_base_scale}, one square anchor per location; "
            f"positive_type={cfg.positive_type!r}): a box goes mostly to the level of its best-IoU anchor"
            + (f"; it fits poorly below fg_iou_thresh={cfg.fg_iou_thresh}" if iou_rule else
               "; its threshold adapts, so only boxes over twice the largest anchor's side fit poorly"),
            [f"anchor {cfg.octave_base_scale * s:g} px" for s in FPN_STRIDES],
            "anchor", anchors=shapes, poor_iou=cfg.fg_iou_thresh if iou_rule else 0.25, iou_small=iou_rule,
            large_hint="lower max_size, or raise octave_base_scale",
            small_hint=small + (", or lower octave_base_scale" if iou_rule else ""))
    if hasattr(cfg, "scale_boundaries"):              # FCOS, and ATSS's "SSC"
        bounds = (0.0, *map(float, cfg.scale_boundaries), math.inf)
        return LevelRule(
            f"FCOS scale ranges (scale_boundaries={tuple(cfg.scale_boundaries)}): a box goes to the level whose "
            f"range holds max(w, h) / 2 of the resized box",
            [f"({bounds[k]:g}, {bounds[k + 1]:g}]" for k in range(len(FPN_STRIDES))],
            "max_side", bounds=bounds, small_hint=small + ", or lower scale_boundaries")
    return None


# The factors tried on the key that moves boxes between levels (level_spread_hint).
_LEVEL_FACTORS = (0.5, 2.0, 0.25, 4.0, 0.125)  # the smallest change first
CROWDED_SHARE = 0.9   # one level with this share of the boxes or more: the others learn from few


def _level_key(cfg, rule: LevelRule) -> str:
    if rule.kind == "max_side":
        return "scale_boundaries"
    return "anchor_octave_base" if hasattr(cfg, "anchor_octave_base") else "octave_base_scale"


def level_spread_hint(cfg, wh: np.ndarray) -> str | None:
    """One line when CROWDED_SHARE or more of the boxes ``wh`` [N, 2] (sizes after the resize)
    go to a single level; None otherwise. It names the value of the model's level key
    (scale_boundaries for FCOS, anchor_octave_base for RetinaNet, octave_base_scale for ATSS),
    scaled by a power of 2: the smallest change that brings the largest share below
    CROWDED_SHARE, else the one that spreads them best (lowers the largest share by 0.2 or more),
    never one that makes more than 2% more of the boxes too small for their level."""
    import copy

    rule = level_rule(cfg)
    if rule is None or len(wh) == 0:
        return None
    key = _level_key(cfg, rule)
    level, too_small, _ = rule.assign(wh)
    shares = np.bincount(level, minlength=len(FPN_STRIDES)) / len(level)
    if shares.max() < CROWDED_SHARE:
        return None
    line = (f"{shares.max():.0%} of the boxes go to {LEVEL_NAMES[int(shares.argmax())]} under "
            f"{key}={getattr(cfg, key)!r}: the other levels learn from few")
    best = None
    for factor in _LEVEL_FACTORS:
        value = getattr(cfg, key)
        scaled = tuple(type(v)(v * factor) for v in value) if isinstance(value, tuple) else value * factor
        trial = copy.copy(cfg)
        setattr(trial, key, scaled)
        trial_level, trial_small, _ = level_rule(trial).assign(wh)
        trial_shares = np.bincount(trial_level, minlength=len(FPN_STRIDES)) / len(trial_level)
        if trial_small.sum() > too_small.sum() + 0.02 * len(wh):
            continue
        if trial_shares.max() < CROWDED_SHARE:
            best = (scaled, trial_shares)
            break
        if best is None or trial_shares.max() < best[1].max():
            best = (scaled, trial_shares)
    if best is not None and (best[1].max() < CROWDED_SHARE or best[1].max() <= shares.max() - 0.2):
        spread = ", ".join(f"{name} {share:.0%}" for name, share in zip(LEVEL_NAMES, best[1]) if share >= 0.005)
        line += f"; {key}={best[0]!r} spreads them ({spread})"
    return line


def level_warnings(cfg, wh: np.ndarray) -> list[str]:
    """What ``train.py`` says at start about the training boxes ``wh`` [N, 2] (sizes after the
    resize) against ``cfg``'s levels: the crowding line of ``level_spread_hint``, and one line
    when 10% or more of them match no level well (too small or too large), with the key to change."""
    rule = level_rule(cfg)
    if rule is None or len(wh) == 0:
        return []
    lines = []
    _, small, large = rule.assign(wh)
    if small.mean() >= 0.1:
        lines.append(f"{small.mean():.0%} of the boxes ({int(small.sum())} of {len(wh)}) are too small for their "
                     f"level and match none well: {rule.small_hint}")
    if large.mean() >= 0.1:
        lines.append(f"{large.mean():.0%} of the boxes ({int(large.sum())} of {len(wh)}) are larger than every "
                     f"anchor can match well: {rule.large_hint}")
    hint = level_spread_hint(cfg, wh)
    return lines + ([hint] if hint else [])


# ---- statistics ----------------------------------------------------------------------------
def resized_box_sizes(report: Validation, cfg, train: bool) -> tuple[np.ndarray, int]:
    """Box (w, h) [N, 2] after the config's resize, and the shorter side used: the test size for
    evaluation, the median of min_size's choices (the middle of its range) for training."""
    if train:
        sizes = sorted(cfg.min_size)
        size = int(round((sizes[0] + sizes[-1]) / 2)) if cfg.multiscale_mode == "range" else sizes[len(sizes) // 2]
    else:
        size = cfg.test_min_size
    resize = Resize((size,), cfg.max_size, square=cfg.resize_mode == "square")
    out = []
    for (height, width), boxes in zip(report.sizes, report.boxes):
        if len(boxes) and np.isfinite(height) and np.isfinite(width):
            new_h, new_w = resize.output_size(int(height), int(width), size)
            wh = boxes[:, 2:] - boxes[:, :2]                               # [N_i, 2]
            out.append(wh * np.array([new_w / width, new_h / height]))
    return (np.concatenate(out) if out else np.zeros((0, 2))), size


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
    if any(Path(p).resolve().is_relative_to(DEMO_ROOT) for pair in paths.values() for p in pair):
        ensure_demo_data()
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
        if report.ground_truth is not None:
            for line in summary_lines(report):
                say(f"  {line}")
        say()
    if all(r.ground_truth is not None for r in reports.values()):
        try:
            check_same_classes(reports["train"], reports["val"], cfg.train_annotations, cfg.val_annotations)
        except DatasetError as error:
            say(f"FATAL {error}")
            fatal = True
    ready = {name: r for name, r in reports.items() if r.ground_truth is not None}
    splits = {name: resized_box_sizes(r, cfg, name == "train") for name, r in ready.items()}
    rule = level_rule(cfg)
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
    from config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
        plot_to = None if args.plot is None else (args.plot or str(Path(cfg.work_dir) / "dataset_check.png"))
        return check(cfg, args.decode, plot_to)
    except (KeyError, TypeError, ValueError, FileNotFoundError, AttributeError) as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
