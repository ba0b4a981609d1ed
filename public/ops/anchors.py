"""Location grids of the feature pyramid."""
from __future__ import annotations

import torch


def grid_points(
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    offset: float,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Centres of every feature-map cell of every level, in input pixels.

    Args:
        feature_sizes: (H_l, W_l) of each level.
        strides: stride of each level in pixels.
        offset: where in its cell a location sits, as a fraction of the stride. The FCOS and
            ATSS papers' code use 0.5 (cell centre, ``x * s + s // 2``); torchvision's FCOS and
            RetinaNet use 0.0 (cell corner, ``x * s``).

    Returns:
        points: float32 [N, 2] (x, y), level by level, row-major within a level.
        point_strides: float32 [N], the stride of each location's level.
        num_per_level: [H_l * W_l for each level], summing to N.
    """
    points, point_strides, num_per_level = [], [], []
    for (h, w), stride in zip(feature_sizes, strides):
        xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * stride
        ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * stride
        y, x = torch.meshgrid(ys, xs, indexing="ij")                    # [H, W] each
        points.append(torch.stack([x.reshape(-1), y.reshape(-1)], 1))   # [H*W, 2]
        point_strides.append(torch.full((h * w,), float(stride), device=device))
        num_per_level.append(h * w)
    return torch.cat(points), torch.cat(point_strides), num_per_level
