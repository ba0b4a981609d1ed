"""Max-IoU anchor matching (RetinaNet, Faster R-CNN's RPN), vectorised over the batch."""
from __future__ import annotations

import torch

# Elements of one [B, chunk, M] IoU block, the bound all assigners share; it bounds matching
# memory for crowded images (500 boxes x 16 images x 2000 anchors = 16M floats = 64 MB per block).
from public.ops.assign_fcos import ASSIGN_CHUNK_ELEMENTS
from public.ops.boxes import paired_iou, pairwise_iou

BACKGROUND = -1
IGNORE = -2


@torch.no_grad()
def max_iou_assign(anchors: torch.Tensor, targets: torch.Tensor, fg_iou_thresh: float = 0.5,
                   bg_iou_thresh: float = 0.4, allow_low_quality_matches: bool = True) -> torch.Tensor:
    """Match every anchor to at most one ground-truth box by IoU (RetinaNet paper, Sec. 4).

    Letters: B images, N anchors, M boxes per image (padded).

      1. each anchor takes the box it overlaps most (the first such box in M on ties);
      2. IoU >= ``fg_iou_thresh``: foreground; IoU < ``bg_iou_thresh``: background;
         in between: ignored (no loss at all);
      3. with ``allow_low_quality_matches``, every anchor whose IoU with some box equals that
         box's best IoU over all anchors (ties included) becomes foreground even below the
         thresholds, so that no box is left without an anchor. Such an anchor takes the box
         of step 1 (its own best), not necessarily the box it is a best anchor of: this is
         torchvision's ``Matcher.set_low_quality_matches_`` and detectron2's rule.
         Deviation: a box that overlaps no anchor at all (best IoU 0) gets no anchor, where
         torchvision would make every anchor foreground.

    Pad boxes (label < 0) never match. The IoU is computed in blocks of anchors so that a
    [B, chunk, M] block stays under ``ASSIGN_CHUNK_ELEMENTS``, each block once.

    Args:
        anchors: [N, 4] xyxy, shared by the batch.
        targets: [B, M, 5] (x1, y1, x2, y2, label), pad rows -1; M may be 0.
    Returns:
        matched_gt: int64 [B, N], index into M; -1 background, -2 ignore.
    """
    B, M = targets.shape[:2]
    N = anchors.shape[0]
    device = anchors.device
    matched = torch.full((B, N), BACKGROUND, dtype=torch.long, device=device)
    if M == 0 or N == 0:
        return matched
    boxes = targets[..., :4].to(anchors.dtype)                           # [B, M, 4]
    valid = targets[..., 4] >= 0                                         # [B, M]

    chunk = max(1, ASSIGN_CHUNK_ELEMENTS // max(1, B * M))
    best_iou_per_box = torch.full((B, M), -1.0, dtype=anchors.dtype, device=device)  # [B, M]
    all_best = torch.empty((B, N), dtype=torch.long, device=device)      # step 1 box of every anchor
    # Step 3 needs each box's best IoU over all anchors, known only after the last block. So
    # that the IoU is computed once, each block records its own best anchors of every box
    # (ties included; a few per box) as (image, anchor, box) triples with that IoU; the
    # triples whose IoU is the global best are kept at the end.
    tie_index, tie_value = [], []
    for start in range(0, N, chunk):
        sl = slice(start, start + chunk)
        iou = pairwise_iou(anchors[sl], boxes)                           # [B, n, M]
        iou.masked_fill_(~valid[:, None, :], -1.0)  # pad boxes: never an anchor's best box nor a best-anchor tie
        # 1. the best box of each anchor
        best_iou, best_box = iou.max(dim=2)                              # [B, n]
        all_best[:, sl] = best_box
        # 2. thresholds
        matched[:, sl] = torch.where(
            best_iou >= fg_iou_thresh, best_box,
            torch.where(best_iou >= bg_iou_thresh, torch.full_like(best_box, IGNORE), matched[:, sl]))
        if allow_low_quality_matches:
            block_best = iou.max(dim=1).values                           # [B, M]
            best_iou_per_box = torch.maximum(best_iou_per_box, block_best)
            # Boxes without overlap in this block (best 0: every anchor would tie) record nothing.
            target_iou = torch.where(block_best > 0, block_best, torch.full_like(block_best, float("inf")))
            b, n, m = (iou == target_iou[:, None, :]).nonzero(as_tuple=True)  # [T] each
            tie_index.append(torch.stack([b, n + start, m]))
            tie_value.append(block_best[b, m])

    if allow_low_quality_matches:
        # 3. the best anchors of each box take their own best box; pad and zero-overlap boxes excluded
        b, n, m = torch.cat(tie_index, dim=1)                            # [T] each
        value = torch.cat(tie_value)                                     # [T]
        keep = value == best_iou_per_box[b, m]
        b, n = b[keep], n[keep]
        matched[b, n] = all_best[b, n]
    return matched


def _anchor_shapes(anchors: torch.Tensor, num_per_level: list[int], feature_sizes: list[tuple[int, int]],
                   strides) -> dict[str, torch.Tensor]:
    """One row per anchor shape (level, a), S rows: its size, the centre of its anchor at grid
    (row 0, col 0), and the grid it repeats on. Anchor (row, col, a) of a level is number
    ``start + (row * W + col) * A + a`` of ``anchors``, centred near
    (cx0 + col * stride, cy0 + row * stride) (``grid_anchors``' layout)."""
    cells, ints, level_strides, start = [], [], [], 0
    for count, (h, w), stride in zip(num_per_level, feature_sizes, strides, strict=True):
        if count % max(1, h * w):
            raise ValueError(f"a level of {count} anchors is not a whole number per location of its {h}x{w} grid")
        A = count // (h * w) if h * w else 0
        cells.append(anchors[start:start + A])                         # [A, 4] at (row 0, col 0)
        ints += [(h, w, start, A, a) for a in range(A)]
        level_strides += [float(stride)] * A
        start += count
    if start != anchors.shape[0]:
        raise ValueError(f"num_per_level {num_per_level} covers {start} anchors, anchors has {anchors.shape[0]}")
    cells = torch.cat(cells)                                            # [S, 4]
    ints = torch.tensor(ints, dtype=torch.long, device=anchors.device).view(-1, 5)  # [S, 5]
    return {"width": cells[:, 2] - cells[:, 0], "height": cells[:, 3] - cells[:, 1],
            "cx0": (cells[:, 0] + cells[:, 2]) / 2, "cy0": (cells[:, 1] + cells[:, 3]) / 2,
            "stride": torch.tensor(level_strides, dtype=anchors.dtype, device=anchors.device),
            "H": ints[:, 0], "W": ints[:, 1], "start": ints[:, 2], "A": ints[:, 3], "a": ints[:, 4]}


def assign_by_iou(outputs: dict, targets: torch.Tensor, fg_iou_thresh: float, bg_iou_thresh: float,
                  allow_low_quality_matches: bool = True) -> torch.Tensor:
    """Max-IoU matching of a model's ``anchors``: ``max_iou_assign_sparse`` where the outputs
    describe the anchors' grids (``num_per_level``, ``feature_sizes``, ``level_strides``, as the
    RetinaNet and ATSS models give), ``max_iou_assign`` on any other anchors. Same answer."""
    thresholds = (fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches)
    if "feature_sizes" in outputs:
        return max_iou_assign_sparse(outputs["anchors"], targets, outputs["num_per_level"], outputs["feature_sizes"],
                                     outputs["level_strides"], *thresholds)
    return max_iou_assign(outputs["anchors"], targets, *thresholds)


def _own_best_box(anchors: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The first best box over all boxes of their image, for anchors given as image * N + anchor
    (sorted): laid out as [B, T_max, 4] so that ``pairwise_iou`` (the dense rule's arithmetic)
    runs without gathering the boxes per anchor; blocks of T_max keep it under the chunk bound."""
    B, M = valid.shape
    N = anchors.shape[0]
    image = keys // N                                                    # [T]
    per_image = torch.bincount(image, minlength=B)                      # [B]
    slot = torch.arange(keys.numel(), device=keys.device) - (per_image.cumsum(0) - per_image)[image]
    laid = anchors.new_zeros(B, int(per_image.max()), 4)                 # [B, T_max, 4]
    laid[image, slot] = anchors[keys % N]
    best = torch.empty(B, laid.shape[1], dtype=torch.long, device=keys.device)
    chunk = max(1, ASSIGN_CHUNK_ELEMENTS // max(1, B * M))
    for start in range(0, laid.shape[1], chunk):
        iou = pairwise_iou(laid[:, start:start + chunk], boxes)         # [B, t, M]
        iou.masked_fill_(~valid[:, None, :], -1.0)
        best[:, start:start + chunk] = iou.max(dim=2).indices
    return best[image, slot]


# Slack that keeps the sparse matcher's windows supersets of the exact ranges despite rounding:
# relative, on IoU thresholds and overlap bounds, and in grid cells, on window edges.
_SLACK = 1e-3
_GRID_EPS = 0.01


def _window(center: torch.Tensor, radius: torch.Tensor, first: torch.Tensor, stride: torch.Tensor,
            size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid positions whose anchor centre (first + i * stride) lies within ``radius`` of
    ``center``, clipped to the grid: (first index, count), [B, M, S] each."""
    lo = torch.ceil((center - radius - first) / stride - _GRID_EPS).long().clamp(min=0)
    hi = torch.minimum(torch.floor((center + radius - first) / stride + _GRID_EPS).long(), size - 1)
    return lo, (hi - lo + 1).clamp(min=0)


@torch.no_grad()
def max_iou_assign_sparse(anchors: torch.Tensor, targets: torch.Tensor, num_per_level: list[int],
                          feature_sizes: list[tuple[int, int]], strides, fg_iou_thresh: float = 0.5,
                          bg_iou_thresh: float = 0.4, allow_low_quality_matches: bool = True) -> torch.Tensor:
    """``max_iou_assign`` for anchors laid on grids, evaluating only anchor-box pairs that can matter.

    Same arguments and the same result as ``max_iou_assign`` (tested equal), plus the grid
    layout of ``grid_anchors``: anchors per level, (H_l, W_l) and stride of each level.

    The dense rule needs, per anchor, every box it overlaps by at least the lower threshold
    (t = min(fg, bg)), and per box, its best anchors. Both are local:
      - an anchor of size (w_a, h_a) reaches IoU t with a box (w_b, h_b) only if the
        intersection is at least I = t (area_a + area_b) / (1 + t), so the overlap along x is at
        least I / min(h_a, h_b) and the centres are at most (w_a + w_b) / 2 - I / min(h_a, h_b)
        apart along x (likewise y): per box and anchor shape, a window of the grid;
      - per box and anchor shape, the intersection only shrinks as the anchor centre moves away
        from the box centre, so the best anchor of each shape is at the nearest grid position:
        those S anchors give each box's best IoU b_m (up to rounding), and its best anchors
        lie in the window for t_m = min(t, b_m).
    Each box gathers the anchors of its windows (thresholds and edges widened by a small slack,
    so the windows hold every qualifying pair despite rounding), their IoU is computed with
    ``pairwise_iou``'s arithmetic (the same values, so the same ties), the per-anchor best
    and first-best box and per-box best come from scatters, and the few low-quality anchors
    recompute their own best box over all boxes of their image, exactly as the dense rule.
    Work: S + a window's pairs per box (about 100 on random boxes at 512 x 512) instead of N (49k).

    Returns:
        matched_gt: int64 [B, N], index into M; -1 background, -2 ignore.
    """
    B, M = targets.shape[:2]
    N = anchors.shape[0]
    device, dtype = anchors.device, anchors.dtype
    lower = min(fg_iou_thresh, bg_iou_thresh)
    if M == 0 or N == 0 or lower <= 0:   # lower <= 0: every anchor is at least ignored, nothing is local
        return max_iou_assign(anchors, targets, fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches)
    boxes = targets[..., :4].to(dtype)                                   # [B, M, 4]
    valid = targets[..., 4] >= 0                                         # [B, M]
    shape = _anchor_shapes(anchors, num_per_level, feature_sizes, strides)  # [S] each
    box_w = (boxes[..., 2] - boxes[..., 0])[..., None]                   # [B, M, 1]
    box_h = (boxes[..., 3] - boxes[..., 1])[..., None]
    box_cx = ((boxes[..., 0] + boxes[..., 2]) / 2)[..., None]
    box_cy = ((boxes[..., 1] + boxes[..., 3]) / 2)[..., None]

    threshold = torch.full((B, M), lower, dtype=dtype, device=device)
    if allow_low_quality_matches:
        # Each box's best IoU, up to rounding (which the slack covers): per shape, at the
        # grid position nearest to the box centre.
        col = torch.round((box_cx - shape["cx0"]) / shape["stride"]).long()   # [B, M, S]
        row = torch.round((box_cy - shape["cy0"]) / shape["stride"]).long()
        col = torch.minimum(col.clamp(min=0), shape["W"] - 1)
        row = torch.minimum(row.clamp(min=0), shape["H"] - 1)
        n = shape["start"] + (row * shape["W"] + col) * shape["A"] + shape["a"]  # [B, M, S]
        best = paired_iou(anchors[n], boxes[:, :, None, :]).amax(dim=2)      # [B, M]
        threshold = torch.minimum(threshold, best)
    threshold = torch.where(valid, threshold, torch.zeros_like(threshold)) * (1 - _SLACK)
    t = threshold[..., None]                                             # [B, M, 1]

    # Windows per (image, box, shape).
    min_w = torch.minimum(shape["width"], box_w)                          # [B, M, S]
    min_h = torch.minimum(shape["height"], box_h)
    need = t * (shape["width"] * shape["height"] + box_w * box_h) / (1 + t)  # least intersection
    need_x, need_y = need / min_h, need / min_w                           # least overlap along x, y
    reachable = (t > 0) & (need_x <= min_w * (1 + _SLACK)) & (need_y <= min_h * (1 + _SLACK))
    col_lo, n_cols = _window(box_cx, ((shape["width"] + box_w) / 2 - need_x).clamp(min=0), shape["cx0"],
                             shape["stride"], shape["W"])
    row_lo, n_rows = _window(box_cy, ((shape["height"] + box_h) / 2 - need_y).clamp(min=0), shape["cy0"],
                             shape["stride"], shape["H"])
    count = torch.where(reachable, n_cols * n_rows, torch.zeros_like(n_cols))  # [B, M, S]

    # Every (image, box, anchor) pair of the windows.
    b, m, s = count.nonzero(as_tuple=True)                               # [K] each
    per_window = count[b, m, s]                                          # [K]
    window = torch.repeat_interleave(torch.arange(b.numel(), device=device), per_window)  # [P]
    local = torch.arange(window.numel(), device=device) - (per_window.cumsum(0) - per_window)[window]
    width = n_cols[b, m, s][window]
    col = col_lo[b, m, s][window] + local % width
    row = row_lo[b, m, s][window] + local // width
    b, m, s = b[window], m[window], s[window]                            # [P] each
    n = shape["start"][s] + (row * shape["W"][s] + col) * shape["A"][s] + shape["a"][s]
    iou = paired_iou(anchors[n], boxes[b, m])                            # [P]

    # 1-2. each anchor's best IoU and first best box, then the thresholds.
    anchor_key = b * N + n                                               # [P] into B * N
    anchor_best = torch.full((B * N,), -1.0, dtype=dtype, device=device).scatter_reduce(0, anchor_key, iou, "amax")
    is_best = iou == anchor_best[anchor_key]
    first_box = torch.full((B * N,), M, dtype=torch.long, device=device).scatter_reduce(
        0, anchor_key[is_best], m[is_best], "amin")
    matched = torch.where(anchor_best >= fg_iou_thresh, first_box,
                          torch.where(anchor_best >= bg_iou_thresh, torch.full_like(first_box, IGNORE),
                                      torch.full_like(first_box, BACKGROUND)))  # [B * N]
    if allow_low_quality_matches:
        # 3. anchors tied for a box's best IoU (> 0) take their own best box. Where that
        # anchor's best IoU is at least the lower threshold, every box it could prefer is among
        # its pairs and ``first_box`` holds it; the others look at every box of their image.
        box_key = b * M + m
        box_best = torch.zeros(B * M, dtype=dtype, device=device).scatter_reduce(0, box_key, iou, "amax")
        tied = torch.zeros(B * N, dtype=torch.bool, device=device)
        tied[anchor_key[(iou == box_best[box_key]) & (iou > 0)]] = True
        matched = torch.where(tied, first_box, matched)
        keys = (tied & (anchor_best < lower)).nonzero().squeeze(1)     # [T], sorted, so image-major
        if keys.numel():
            matched[keys] = _own_best_box(anchors, boxes, valid, keys)
    return matched.view(B, N)
