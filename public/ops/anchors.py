"""Location grids of the feature pyramid: points, their strides, and anchors."""
from __future__ import annotations

import torch

# The strides of P3..P7, the levels public/models/backbone.py builds for every model.
FPN_STRIDES = (8, 16, 32, 64, 128)


def grid_steps(image_size: tuple[int, int] | None, feature_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(step_y, step_x) between the locations of one level, in pixels.

    ``image_size`` None: the level's stride. Given (the padded input's (H, W)): ``H // h`` and
    ``W // w``, torchvision's AnchorGenerator rule, which equals the stride when the padded size
    is a multiple of it and is smaller otherwise: at an 800 x 1344 input, P6 (13 x 21 cells) is
    spaced 61 x 64 and P7 (7 x 11) 114 x 122 instead of 64 and 128, so its far locations sit up
    to 84 px from where the stride puts them. The regression unit stays the stride.
    """
    if image_size is None:
        return stride, stride
    return int(image_size[0]) // int(feature_size[0]), int(image_size[1]) // int(feature_size[1])


def grid_points(
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    offset: float,
    device: torch.device,
    *,
    image_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Centres of every feature-map cell of every level, in input pixels.

    Args:
        feature_sizes: (H_l, W_l) of each level.
        strides: stride of each level in pixels.
        offset: where in its cell a location sits, as a fraction of the stride. The FCOS and
            ATSS papers' code use 0.5 (cell centre, ``x * s + s // 2``); torchvision's FCOS and
            RetinaNet use 0.0 (cell corner, ``x * s``).
        image_size: (H, W) of the padded input: given, locations are spaced by
            ``grid_steps(image_size, (h, w), stride)`` (torchvision's rule) instead of the stride.

    Returns:
        points: float32 [N, 2] (x, y), level by level, row-major within a level.
        point_strides: float32 [N], the stride of each location's level.
        num_per_level: [H_l * W_l for each level], summing to N.
    """
    points, point_strides, num_per_level = [], [], []
    for (h, w), stride in zip(feature_sizes, strides):
        step_y, step_x = grid_steps(image_size, (h, w), stride)
        xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * step_x
        ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * step_y
        y, x = torch.meshgrid(ys, xs, indexing="ij")                    # [H, W] each
        points.append(torch.stack([x.reshape(-1), y.reshape(-1)], 1))   # [H*W, 2]
        point_strides.append(torch.full((h * w,), float(stride), device=device))
        num_per_level.append(h * w)
    return torch.cat(points), torch.cat(point_strides), num_per_level


def retinanet_anchor_sizes(
    octave_base: float = 4.0,
    scales_per_octave: int = 3,
    strides: tuple[int, ...] = (8, 16, 32, 64, 128),
    integer: bool = False,
) -> list[tuple[float, ...]]:
    """Anchor sizes of each level: ``octave_base * stride * 2 ** (k / scales_per_octave)``.

    The RetinaNet paper (Sec. 4) uses octave base 4 and 3 scales per octave on P3-P7: sizes
    32..512 times (2^0, 2^(1/3), 2^(2/3)). ``integer=True`` truncates each size to an int as
    torchvision's ``_default_anchorgen`` does (``int(32 * 2 ** (1/3)) = 40``, not 40.32).

    Returns:
        one tuple of ``scales_per_octave`` sizes (pixels) per level.
    """
    out = []
    for stride in strides:
        base = octave_base * stride
        sizes = tuple(base * 2 ** (k / scales_per_octave) for k in range(scales_per_octave))
        out.append(tuple(float(int(s)) for s in sizes) if integer else sizes)
    return out


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...], round_corners: bool = False,
                 device: torch.device | None = None) -> torch.Tensor:
    """The A = len(aspect_ratios) * len(sizes) anchors of one location, centred on (0, 0).

    Aspect ratio = height / width; an anchor of size s and ratio r has area s^2. Order: ratio
    major, size minor (for each ratio, every size), as torchvision's ``AnchorGenerator``.
    ``round_corners`` rounds the corners to integers, as torchvision does.

    Returns:
        float32 [A, 4] (x1, y1, x2, y2).
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32, device=device)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32, device=device)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)              # [R * S]
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)              # [R * S]
    anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2                # [A, 4]
    return anchors.round() if round_corners else anchors


def grid_anchors(
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    sizes_per_level: list[tuple[float, ...]],
    aspect_ratios: tuple[float, ...],
    offset: float,
    device: torch.device,
    *,
    round_corners: bool = False,
    image_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Anchors of every location of every level, in input pixels.

    Args:
        feature_sizes: (H_l, W_l) of each level.
        strides: stride of each level in pixels.
        sizes_per_level: anchor sizes (sqrt of the area, pixels) of each level.
        aspect_ratios: height / width ratios, shared by the levels.
        offset: anchor centres at ((x + offset) * stride, (y + offset) * stride); torchvision
            uses 0.0, the papers' code (Detectron) about 0.5.
        round_corners: round the centred anchors' corners to integers (torchvision).
        image_size: (H, W) of the padded input: given, anchor centres are spaced by
            ``grid_steps`` (torchvision's rule) instead of the stride.

    Returns:
        anchors: float32 [N, 4] xyxy; order: level, then row-major location, then anchor
            (A = len(sizes) * len(aspect_ratios) per location, ratio major, size minor).
        num_per_level: H_l * W_l * A for each level, summing to N.
    """
    anchors, num_per_level = [], []
    for (h, w), stride, sizes in zip(feature_sizes, strides, sizes_per_level):
        base = cell_anchors(sizes, aspect_ratios, round_corners, device)  # [A, 4]
        step_y, step_x = grid_steps(image_size, (h, w), stride)
        xs = (torch.arange(w, device=device, dtype=torch.float32) + offset) * step_x
        ys = (torch.arange(h, device=device, dtype=torch.float32) + offset) * step_y
        y, x = torch.meshgrid(ys, xs, indexing="ij")                     # [H, W] each
        x, y = x.reshape(-1), y.reshape(-1)
        shifts = torch.stack([x, y, x, y], dim=1)                         # [H*W, 4]
        anchors.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))  # [H*W*A, 4]
        num_per_level.append(h * w * base.shape[0])
    return torch.cat(anchors), num_per_level
