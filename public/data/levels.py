"""Box sizes against a model's FPN levels: which level each box goes to, which boxes no level
matches well, and the value of the model's level key that spreads crowded levels.

Each model's config declares its rule (``Config.level_rule()``, built with ``scale_range_rule``
or ``anchor_rule``); ``train.py`` prints ``level_warnings`` at start and
``python -m tools.check_dataset`` prints the whole table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from public.data.transforms import Resize
from public.data.validate import Validation
from public.ops.anchors import FPN_STRIDES

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
    key: str                             # the config key that moves boxes between levels
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


SMALL_HINT = "raise min_size (training) / test_min_size (evaluation) so small objects cover more pixels"


def scale_range_rule(scale_boundaries: tuple) -> LevelRule:
    """FCOS's rule (and ATSS's "SSC"): a box goes to the level whose range holds max(w, h) / 2."""
    bounds = (0.0, *map(float, scale_boundaries), math.inf)
    return LevelRule(
        f"FCOS scale ranges (scale_boundaries={tuple(scale_boundaries)}): a box goes to the level whose "
        f"range holds max(w, h) / 2 of the resized box",
        [f"({bounds[k]:g}, {bounds[k + 1]:g}]" for k in range(len(FPN_STRIDES))],
        "max_side", "scale_boundaries", bounds=bounds, small_hint=SMALL_HINT + ", or lower scale_boundaries")


def anchor_rule(description: str, key: str, sizes: list[float], octave_steps: int, aspect_ratios: tuple,
                poor_iou: float, iou_small: bool) -> LevelRule:
    """A box goes to the level of its best-IoU anchor (both centred at one point).

    Args:
        description: the rule in words, for the table's heading.
        key: the config key that scales the anchors (the hint names it).
        sizes: the smallest anchor side of each level, in pixels.
        octave_steps: anchor sizes per octave (size x 2^(j / octave_steps), j < octave_steps).
        aspect_ratios: height / width of the anchor shapes.
        poor_iou: a box whose best IoU is below this fits poorly.
        iou_small: a box below ``poor_iou`` and smaller than its anchor counts as too small.
    """
    octave = np.array([2 ** (j / octave_steps) for j in range(octave_steps)])
    ratios = np.sqrt(np.asarray(aspect_ratios, dtype=np.float64))
    shapes = [[(size / r, size * r) for size in base * octave for r in ratios] for base in sizes]
    ranges = [f"anchors {base:g}-{base * octave[-1]:.0f} px" if octave_steps > 1 else f"anchor {base:g} px"
              for base in sizes]
    return LevelRule(description, ranges, "anchor", key, anchors=np.array(shapes), poor_iou=poor_iou,
                     iou_small=iou_small, large_hint=f"lower max_size, or raise {key}",
                     small_hint=SMALL_HINT + (f", or lower {key}" if iou_small else ""))


# The factors tried on the key that moves boxes between levels (level_spread_hint).
_LEVEL_FACTORS = (0.5, 2.0, 0.25, 4.0, 0.125)  # the smallest change first
CROWDED_SHARE = 0.9   # one level with this share of the boxes or more: the others learn from few


def level_spread_hint(cfg, wh: np.ndarray) -> str | None:
    """One line when CROWDED_SHARE or more of the boxes ``wh`` [N, 2] (sizes after the resize)
    go to a single level; None otherwise. It names the value of the model's level key
    (scale_boundaries for FCOS, anchor_octave_base for RetinaNet, octave_base_scale for ATSS),
    scaled by a power of 2: the smallest change that brings the largest share below
    CROWDED_SHARE, else the one that spreads them best (lowers the largest share by 0.2 or more),
    never one that makes more than 2% more of the boxes too small for their level."""
    rule = cfg.level_rule()
    if rule is None or len(wh) == 0:
        return None
    key = rule.key
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
        trial = cfg.replace(**{key: scaled})
        trial_level, trial_small, _ = trial.level_rule().assign(wh)
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
    rule = cfg.level_rule()
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


