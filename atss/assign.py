"""ATSS sample assignment (paper Sec. 3-4) and the alternative rules of its ablations,
vectorised over the whole batch.

Letters: B images, M ground-truth boxes per image (padded), N anchors over all levels (one
per location), K candidates per box. Targets are ``[B, M, 5]`` (x1, y1, x2, y2, label) with
pad rows of -1. Every assignment returns ``matched_gt: int64 [B, N]``, the index into M of
each anchor's box, -1 for background.

"ATSS" (``atss_assign``, the paper), "SSC" (``ssc_assign``, FCOS's spatial and scale
constraints) and "TOPK" (``topk_assign``, the k highest-IoU anchors of each box) are here;
"IoU", RetinaNet's max-IoU rule, is ``public.ops.assign_max_iou.assign_by_iou``.
"""
from __future__ import annotations

import torch

from public.ops.assign_fcos import fcos_assign, level_size_bounds
from public.ops.boxes import box_centers, encode_distances, paired_iou

# An anchor centre counts as inside a box when its smallest distance to a side exceeds this
# many pixels (official ATSS: ``min(l, t, r, b) > 0.01``).
INSIDE_EPS = 0.01

# Elements of one [B, m, N_l] block of centre distances while selecting candidates (a float32
# distance and an int64 sort key each, ~12 bytes an element: ~100 MB per block at most).
CANDIDATE_CHUNK_ELEMENTS = 1 << 23


def centers_inside(centers: torch.Tensor, boxes: torch.Tensor, eps: float = INSIDE_EPS) -> torch.Tensor:
    """centers [..., 2] strictly inside boxes [..., 4] (broadcast) by more than ``eps`` -> bool [...]."""
    return encode_distances(centers, boxes).min(dim=-1).values > eps


def _closest_anchors(anchor_centers: torch.Tensor, gt_centers: torch.Tensor, k: int) -> torch.Tensor:
    """The k anchors of one level closest (L2) to each box centre, nearest first.

    Equal distances go to the lower anchor index: the sort key is the float32 distance's bit
    pattern (monotone for non-negative floats) times n plus the index, so ``topk`` on it is
    deterministic on every device and agrees with a stable sort. Boxes are taken in chunks of
    m so that a [B, m, n] block stays under ``CANDIDATE_CHUNK_ELEMENTS``.

    Args:
        anchor_centers: [n, 2] float32, one level's anchor centres.
        gt_centers: [B, M, 2] float32.
        k: candidates per box, at most n.
    Returns:
        int64 [B, M, k], indices into the level's n anchors.
    """
    B, M = gt_centers.shape[:2]
    n = anchor_centers.shape[0]
    index = torch.arange(n, device=anchor_centers.device)
    chunk = max(1, CANDIDATE_CHUNK_ELEMENTS // max(1, B * n))
    out = []
    for start in range(0, M, chunk):                                   # one pass unless crowded
        centers = gt_centers[:, start:start + chunk]                    # [B, m, 2]
        dx = anchor_centers[None, None, :, 0] - centers[..., 0, None]   # [B, m, n]
        dy = anchor_centers[None, None, :, 1] - centers[..., 1, None]   # [B, m, n]
        distance = (dx * dx + dy * dy).sqrt()                           # [B, m, n]
        key = distance.view(torch.int32).to(torch.int64) * n + index    # [B, m, n], unique per row
        out.append(key.topk(k, dim=2, largest=False).indices)           # [B, m, k], sorted
    return torch.cat(out, dim=1)                                        # [B, M, k]


def _resolve_claims(candidates: torch.Tensor, iou: torch.Tensor, is_pos: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """Give each anchor claimed by several boxes to the one of highest IoU (lowest index on ties).

    Args:
        candidates: int64 [B, M, K] anchor indices (distinct within a box).
        iou: [B, M, K] IoU of each (box, candidate) pair.
        is_pos: bool [B, M, K], the pair is a positive.
        num_anchors: N.
    Returns:
        matched_gt: int64 [B, N], -1 for anchors no box claims.
    """
    B, M, _ = candidates.shape
    flat_idx = candidates.reshape(B, -1)                                # [B, M*K]
    claim_iou = torch.where(is_pos, iou, torch.full_like(iou, -1.0)).reshape(B, -1)  # [B, M*K]
    best_iou = torch.full((B, num_anchors), -1.0, dtype=iou.dtype, device=iou.device)
    best_iou.scatter_reduce_(1, flat_idx, claim_iou, reduce="amax")     # [B, N]
    is_best = is_pos.reshape(B, -1) & (claim_iou == best_iou.gather(1, flat_idx))  # [B, M*K]
    box_index = torch.arange(M, device=candidates.device)[None, :, None].expand_as(candidates).reshape(B, -1)
    winner = torch.full((B, num_anchors), M, dtype=torch.long, device=candidates.device)
    winner.scatter_reduce_(1, flat_idx, torch.where(is_best, box_index, torch.full_like(box_index, M)), reduce="amin")
    return torch.where(winner < M, winner, torch.full_like(winner, -1))   # [B, N]


@torch.no_grad()
def atss_assign(anchors: torch.Tensor, num_per_level: list[int], targets: torch.Tensor, topk: int = 9) -> torch.Tensor:
    """Adaptive Training Sample Selection (ATSS paper, Algorithm 1), for every box of every image.

    For each ground-truth box g:
      1. (lines 3-6) on each level, the k = ``topk`` anchors whose centres are closest (L2) to
         g's centre are candidates (k capped at the level's anchor count; equal distances go
         to the lower anchor index): K = sum_l min(k, N_l) candidates;
      2. (line 7) IoU of every candidate with g;
      3. (lines 8-9) mean and standard deviation of those IoUs (unbiased, ``torch.std`` as the
         official code);
      4. (line 10) IoU threshold = mean + std;
      5. (lines 11-15) positives: candidates with IoU >= threshold whose centre lies inside g
         (official: smallest distance to a side > 0.01 px);
    then (line 17 note) an anchor that is positive for several boxes goes to the one with the
    highest IoU (the lowest box index on equal IoU). Pad boxes (label < 0) never match.

    Deviation: the mean and std are computed in float64. In float32 the mean of K equal IoUs
    (e.g. a box smaller than the anchors it sits in) can round above the IoU itself, which
    would drop every positive of that box; in float64 the sum of K float32 values is exact,
    so equal IoUs give threshold == IoU exactly.

    Memory: no [B, N, M] tensor is built. Candidate selection holds one [B, m, N_l] block of
    distances (boxes chunked, see ``_closest_anchors``); everything after it is [B, M, K].

    Args:
        anchors: [N, 4] xyxy, shared by the batch, level by level.
        num_per_level: anchors per level, summing to N.
        targets: [B, M, 5] (x1, y1, x2, y2, label), pad rows -1; M may be 0.
        topk: candidates per level per box (9 in the paper).
    Returns:
        matched_gt: int64 [B, N], index into M; -1 background.
    """
    B, M = targets.shape[:2]
    N = anchors.shape[0]
    if M == 0 or N == 0:
        return torch.full((B, N), -1, dtype=torch.long, device=anchors.device)
    boxes = targets[..., :4].to(anchors.dtype)                          # [B, M, 4]
    valid = targets[..., 4] >= 0                                        # [B, M]
    anchor_centers = box_centers(anchors)                               # [N, 2]

    # 1. the k closest anchors per level
    candidates, start = [], 0
    for count in num_per_level:                                         # the 5 levels
        if count > 0:
            level_idx = _closest_anchors(anchor_centers[start:start + count], box_centers(boxes), min(topk, count))
            candidates.append(level_idx + start)                        # [B, M, k_l]
        start += count
    candidates = torch.cat(candidates, dim=2)                           # [B, M, K]

    # 2. IoU of each candidate with its box
    candidate_anchors = anchors[candidates]                             # [B, M, K, 4]
    iou = paired_iou(candidate_anchors, boxes[:, :, None, :])           # [B, M, K]
    # 3.-4. adaptive threshold per box
    iou64 = iou.double()
    threshold = iou64.mean(dim=2) + iou64.std(dim=2)                    # [B, M]
    # 5. IoU above the threshold, centre inside the box, a real box
    is_pos = (iou64 >= threshold[..., None]) \
        & centers_inside(anchor_centers[candidates], boxes[:, :, None, :]) \
        & valid[..., None]                                              # [B, M, K]
    # then (line 17 note): an anchor claimed by several boxes goes to its highest IoU
    return _resolve_claims(candidates, iou, is_pos, N)


@torch.no_grad()
def ssc_assign(points: torch.Tensor, strides: torch.Tensor, num_per_level: list[int], targets: torch.Tensor,
               scale_boundaries: tuple = (64, 128, 256, 512)) -> torch.Tensor:
    """FCOS's spatial and scale constraints (the official ATSS "SSC" option) on anchor centres:
    inside the box, max(l, t, r, b) in the level's range, smallest box on conflicts.

    This is ``public.ops.assign_fcos.fcos_assign`` without center sampling (the FCOS paper's rule,
    as official SSC). Deviation from the official SSC: the range bounds are exclusive and
    "inside" is > 0 px, as FCOS's assignment here (official SSC: inclusive bounds, > 0.01 px).

    Args:
        points: [N, 2] anchor centres; strides [N]; num_per_level; targets [B, M, 5].
    Returns:
        matched_gt: int64 [B, N], -1 background.
    """
    lower, upper = level_size_bounds(num_per_level, scale_boundaries, points.device)
    return fcos_assign(points, strides, lower, upper, targets, center_sampling_radius=0.0)


@torch.no_grad()
def topk_assign(anchors: torch.Tensor, targets: torch.Tensor, topk: int = 9) -> torch.Tensor:
    """The ``topk`` anchors of highest IoU of each box (official ATSS "TOPK" option).

    For each box: rank all N anchors by IoU minus a tie-breaker, distance / (extent * 1000)
    (closer centres first among equal IoUs; the official code divides by the image's largest
    distance, here by a bound of it, the diagonal spanned by the anchor and box centres);
    keep the k best whose centre lies inside the box (> 0.01 px); an anchor claimed by
    several boxes goes to the highest IoU. Pad boxes never match. IoU blocks are [B, m, N]
    with the boxes chunked to stay under ``CANDIDATE_CHUNK_ELEMENTS``.

    Args:
        anchors: [N, 4]; targets: [B, M, 5] with pad rows -1; topk: positives per box at most.
    Returns:
        matched_gt: int64 [B, N], -1 background.
    """
    B, M = targets.shape[:2]
    N = anchors.shape[0]
    if M == 0 or N == 0:
        return torch.full((B, N), -1, dtype=torch.long, device=anchors.device)
    boxes = targets[..., :4].to(anchors.dtype)                          # [B, M, 4]
    valid = targets[..., 4] >= 0                                        # [B, M]
    anchor_centers = box_centers(anchors)                               # [N, 2]
    gt_centers = box_centers(boxes)                                     # [B, M, 2]
    lo = torch.minimum(anchor_centers.min(dim=0).values, gt_centers.amin(dim=(0, 1)))  # [2]
    hi = torch.maximum(anchor_centers.max(dim=0).values, gt_centers.amax(dim=(0, 1)))  # [2]
    extent = (hi - lo).norm().clamp(min=1.0)                            # >= every centre distance

    k = min(topk, N)
    chunk = max(1, CANDIDATE_CHUNK_ELEMENTS // max(1, B * N))
    candidates = []
    for start in range(0, M, chunk):                                    # one pass unless crowded
        sl = slice(start, start + chunk)
        iou = paired_iou(anchors[None, None], boxes[:, sl, None, :])    # [B, m, N]
        distance = (anchor_centers[None, None] - gt_centers[:, sl, None, :]).norm(dim=-1)  # [B, m, N]
        candidates.append((iou - distance / (extent * 1000)).topk(k, dim=2).indices)     # [B, m, k]
    candidates = torch.cat(candidates, dim=1)                           # [B, M, k]
    iou = paired_iou(anchors[candidates], boxes[:, :, None, :])         # [B, M, k]
    is_pos = centers_inside(anchor_centers[candidates], boxes[:, :, None, :]) & valid[..., None]
    return _resolve_claims(candidates, iou, is_pos, N)
