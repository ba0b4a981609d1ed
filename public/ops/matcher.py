"""Max-IoU anchor matching (RetinaNet, Faster R-CNN's RPN), vectorised over the batch."""
from __future__ import annotations

import torch

# Elements of one [B, chunk, M] IoU block, the bound all assigners share; it bounds matching
# memory for crowded images (500 boxes x 16 images x 2000 anchors = 16M floats = 64 MB per block).
from public.ops.assign import ASSIGN_CHUNK_ELEMENTS
from public.ops.boxes import pairwise_iou

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
