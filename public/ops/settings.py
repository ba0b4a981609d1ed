"""Checks of the settings a loss or decoder is built from, made where they are used, so that an
impossible value (or combination) is an error naming the config key instead of a silent
wrong result."""
from __future__ import annotations


def require(condition: bool, key: str, value, must: str) -> None:
    """ValueError "config key 'key' = value: must ..." unless ``condition``."""
    if not condition:
        raise ValueError(f"config key '{key}' = {value!r}: {must}")


def check_focal(cfg) -> None:
    require(cfg.focal_gamma >= 0, "focal_gamma", cfg.focal_gamma, "must be >= 0")
    require(cfg.focal_alpha <= 1, "focal_alpha", cfg.focal_alpha, "must be in [0, 1] (or < 0 to disable the weighting)")


def check_iou_thresholds(cfg) -> None:
    """Max-IoU matching: 0 <= bg_iou_thresh <= fg_iou_thresh <= 1."""
    require(0 <= cfg.fg_iou_thresh <= 1, "fg_iou_thresh", cfg.fg_iou_thresh, "must be in [0, 1]")
    require(0 <= cfg.bg_iou_thresh <= 1, "bg_iou_thresh", cfg.bg_iou_thresh, "must be in [0, 1]")
    require(cfg.bg_iou_thresh <= cfg.fg_iou_thresh, "bg_iou_thresh", cfg.bg_iou_thresh,
            f"must not exceed fg_iou_thresh = {cfg.fg_iou_thresh} (anchors between them are ignored; "
            f"above fg_iou_thresh foreground, below bg_iou_thresh background)")


def check_scale_boundaries(cfg) -> None:
    bounds = tuple(cfg.scale_boundaries)
    require(all(b > 0 for b in bounds) and all(a < b for a, b in zip(bounds, bounds[1:])),
            "scale_boundaries", bounds, "must be positive and increasing (P3's upper bound first)")


def check_decoding(cfg) -> None:
    require(0 <= cfg.score_thresh < 1, "score_thresh", cfg.score_thresh, "must be in [0, 1)")
    require(0 < cfg.nms_thresh <= 1, "nms_thresh", cfg.nms_thresh, "must be in (0, 1] (1 keeps every box)")
    require(cfg.topk_candidates >= 1, "topk_candidates", cfg.topk_candidates, "must be >= 1")
    require(cfg.detections_per_img >= 1, "detections_per_img", cfg.detections_per_img, "must be >= 1")
