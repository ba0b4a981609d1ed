"""Target-assignment rules shared by the detectors, vectorised over the whole batch.

Letters: B images, M ground-truth boxes per image (padded), N locations over all levels.
Targets are ``[B, M, 5]`` (x1, y1, x2, y2, label) with pad rows of -1.

``fcos_assign`` is FCOS's rule (spatial + scale constraints); ATSS's "SSC" option is the
same rule on its anchor centres, so it lives here rather than in either model folder.
"""
from __future__ import annotations

import math

import torch

from public.ops.boxes import box_area

INF = 1e8

# Elements of one [B, chunk, M] comparison; bounds assignment memory for crowded images.
ASSIGN_CHUNK_ELEMENTS = 1 << 24


def level_size_bounds(num_per_level: list[int], boundaries: tuple, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-location (lower, upper) bound on max(l, t, r, b) from the level boundaries.

    boundaries (64, 128, 256, 512) give P3 (0, 64), P4 (64, 128), ..., P7 (512, inf) (paper Sec. 3.2).
    """
    edges = [0.0] + [float(b) for b in boundaries] + [INF]
    if len(edges) != len(num_per_level) + 1:
        raise ValueError(f"scale_boundaries {boundaries} needs {len(num_per_level) - 1} values for {len(num_per_level)} levels")
    counts = torch.tensor(num_per_level, device=device)
    lower = torch.tensor(edges[:-1], device=device).repeat_interleave(counts)
    upper = torch.tensor(edges[1:], device=device).repeat_interleave(counts)
    return lower, upper  # [N], [N]


@torch.no_grad()
def fcos_assign(points: torch.Tensor, strides: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                targets: torch.Tensor, center_sampling_radius: float = 1.5) -> torch.Tensor:
    """Match every location to at most one ground-truth box (FCOS paper Sec. 3.1-3.2).

    A location is positive for a box when
      1. it lies strictly inside the box;
      2. with center sampling (radius r > 0), it lies strictly within r * stride of the box
         centre along x and y (the "imprv" rule; the region is implicitly clipped to the box by 1);
      3. its largest distance to a side, max(l, t, r, b), is within its level's (lower, upper)
         range, exclusive at both ends as torchvision's FCOS;
    and when several boxes qualify, the one with the smallest area wins (first in M on ties).

    Args:
        points [N, 2], strides [N], lower [N], upper [N], targets [B, M, 5] (pad rows -1).
    Returns:
        matched_gt: int64 [B, N], the index into M of each location's box, -1 for background.
    """
    B, M = targets.shape[:2]
    N = points.shape[0]
    matched = torch.full((B, N), -1, dtype=torch.long, device=points.device)
    if M == 0:
        return matched
    boxes = targets[..., :4].float()                                   # [B, M, 4]
    valid = targets[..., 4] >= 0                                       # [B, M]
    # Invalid (pad) boxes get an infinite area so they never win the min-area tie-break.
    areas = torch.where(valid, box_area(boxes), torch.full_like(boxes[..., 0], float("inf")))  # [B, M]
    centers = (boxes[..., :2] + boxes[..., 2:]) / 2                    # [B, M, 2]

    chunk = max(1, ASSIGN_CHUNK_ELEMENTS // max(1, B * M))
    for start in range(0, N, chunk):                                   # one pass unless crowded
        sl = slice(start, start + chunk)
        x = points[sl, 0][None, :, None]                                # [1, n, 1]
        y = points[sl, 1][None, :, None]
        x1, y1, x2, y2 = (boxes[:, None, :, i] for i in range(4))      # [B, 1, M] each
        left, top, right, bottom = x - x1, y - y1, x2 - x, y2 - y       # [B, n, M] each
        # 1. strictly inside the box
        inside = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0
        # 3. the level's size range
        max_dist = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))
        in_range = (max_dist > lower[sl][None, :, None]) & (max_dist < upper[sl][None, :, None])
        ok = inside & in_range & valid[:, None, :]
        # 2. center sampling
        if center_sampling_radius > 0:
            radius = (center_sampling_radius * strides[sl])[None, :, None]  # [1, n, 1]
            ok &= ((x - centers[:, None, :, 0]).abs() < radius) & ((y - centers[:, None, :, 1]).abs() < radius)
        # smallest area among the qualifying boxes
        masked_area = torch.where(ok, areas[:, None, :], torch.full_like(left, float("inf")))  # [B, n, M]
        min_area, gt_index = masked_area.min(dim=2)                     # [B, n]
        matched[:, sl] = torch.where(torch.isfinite(min_area), gt_index, torch.full_like(gt_index, -1))
    return matched


@torch.no_grad()
def fcos_assign_sparse(points: torch.Tensor, strides: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                       targets: torch.Tensor, center_sampling_radius: float,
                       feature_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """``fcos_assign`` with center sampling, looking only at the locations near each box.

    With center sampling a location must lie within r * stride of the box centre, so per box
    and level only a (2r + 1) x (2r + 1) patch of the grid can qualify. This gathers a patch
    of ceil(2r) + 3 locations a side around each centre (a margin beyond the exact range),
    applies the same tests with the same arithmetic as ``fcos_assign`` to the gathered
    locations, and resolves the smallest-area rule (first box on ties) with two scatters:
    the same answer in B x M x 5 x 36 work (r = 1.5) instead of B x M x N.

    Args:
        points [N, 2], strides [N], lower [N], upper [N], targets [B, M, 5] (pad rows -1),
        center_sampling_radius r > 0, feature_sizes: (H_l, W_l) of each level, row-major in N.
    Returns:
        matched_gt: int64 [B, N], the index into M of each location's box, -1 for background.
    """
    if center_sampling_radius <= 0:
        raise ValueError("fcos_assign_sparse needs center sampling (radius > 0); use fcos_assign")
    B, M = targets.shape[:2]
    N = points.shape[0]
    device = points.device
    if M == 0:
        return torch.full((B, N), -1, dtype=torch.long, device=device)
    boxes = targets[..., :4].float()                                   # [B, M, 4]
    valid = targets[..., 4] >= 0                                       # [B, M]
    areas = box_area(boxes)                                            # [B, M]
    centers = (boxes[..., :2] + boxes[..., 2:]) / 2                    # [B, M, 2]

    span = int(math.ceil(2 * center_sampling_radius)) + 3              # K locations a side
    steps = torch.arange(span, device=device)                          # [K]
    candidates, start = [], 0
    for h, w in feature_sizes:
        stride, first = strides[start], points[start]                  # the level's stride, its (0, 0) location
        # Grid index of the first candidate column / row, one before the exact range begins.
        col0 = torch.floor((centers[..., 0] - first[0]) / stride - center_sampling_radius).long() - 1  # [B, M]
        row0 = torch.floor((centers[..., 1] - first[1]) / stride - center_sampling_radius).long() - 1
        cols = col0[..., None] + steps                                 # [B, M, K]
        rows = row0[..., None] + steps                                 # [B, M, K]
        on_grid = ((rows >= 0) & (rows < h))[..., :, None] & ((cols >= 0) & (cols < w))[..., None, :]  # [B, M, K, K]
        index = start + rows.clamp(0, h - 1)[..., :, None] * w + cols.clamp(0, w - 1)[..., None, :]   # [B, M, K, K]
        candidates.append(torch.where(on_grid, index, torch.full_like(index, -1)).flatten(2))  # [B, M, K*K]
        start += h * w
    if start != N:
        raise ValueError(f"feature_sizes {feature_sizes} cover {start} locations, points has {N}")
    candidates = torch.cat(candidates, dim=2)                          # [B, M, Q]
    loc = candidates.clamp(min=0)

    # The tests of fcos_assign, on the gathered locations.
    x, y = points[loc, 0], points[loc, 1]                              # [B, M, Q] each
    left, top = x - boxes[..., 0, None], y - boxes[..., 1, None]
    right, bottom = boxes[..., 2, None] - x, boxes[..., 3, None] - y
    inside = torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0
    max_dist = torch.maximum(torch.maximum(left, top), torch.maximum(right, bottom))
    in_range = (max_dist > lower[loc]) & (max_dist < upper[loc])
    radius = center_sampling_radius * strides[loc]
    near = ((x - centers[..., 0, None]).abs() < radius) & ((y - centers[..., 1, None]).abs() < radius)
    ok = (candidates >= 0) & inside & in_range & near & valid[..., None]  # [B, M, Q]

    # Smallest area per location, then the first box among equal areas.
    b, m, q = ok.nonzero(as_tuple=True)                                # [P] each
    flat = b * N + candidates[b, m, q]                                 # [P] into B * N
    area = areas[b, m]
    best_area = torch.full((B * N,), float("inf"), device=device).scatter_reduce(0, flat, area, "amin")
    smallest = area == best_area[flat]
    best_box = torch.full((B * N,), M, dtype=torch.long, device=device).scatter_reduce(
        0, flat[smallest], m[smallest], "amin")
    return torch.where(best_box < M, best_box, torch.full_like(best_box, -1)).view(B, N)
