"""Built-in tree-crowns dataset: small, hard, realistic-looking aerial tiles, in COCO format.

Modelled on a real case users bring: 400x400 aerial RGB tiles of tree crowns, a few dozen
training tiles, ~15 boxes a tile, boxes 8-100 px with a median near 37 px. Unlike the demo
shapes (public/data/demo.py), which a small FCOS learns to ~0.8 mAP, this set is meant to be
learnable but hard, so that a from-scratch run gets a modest mAP and tuning shows:

- two classes: "tree" (live crowns, ~88% of boxes) and the rarer "dead_tree" (grey-brown,
  leafless, see-through crowns), so that class confusion shows;
- crowns are soft, lobed blobs with dome shading from the tile's sun direction, leafy clump
  texture and a cast shadow; some are darker, rounder conifers; sizes log-skewed over 8-100 px;
- the background is grass and soil at several noise scales, with paths, furrows and
  distractors that are not objects: grass tussocks and bright stones (small blobs, no shading
  and no shadow) and large dark shadow patches;
- crowns cluster and overlap: bigger (taller) crowns are drawn over smaller ones, and a
  placement is refused when it would leave an earlier crown less than MIN_VISIBLE_FRACTION
  visible;
- the tile is blurred a little and has sensor noise.

Box convention (COCO's): the box is the full extent of the crown's outline, hidden parts
included (each crown is at least MIN_VISIBLE_FRACTION visible), clipped to the tile; a crown
cut by the tile edge is boxed to the edge and placed only if at least MIN_INSIDE_FRACTION of
it lies inside. The outline is where the crown's soft edge reaches half opacity.

Generated deterministically from a seed on first use (48 + 16 tiles in a few seconds) into
`data/crowns/`, with the layout of public/data/demo.py; the helpers there write it atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from public.data.demo import DrawnImage, builtin_paths, ensure_generated, write_builtin_data

CROWNS_ROOT: Path = Path(__file__).resolve().parents[2] / "data" / "crowns"
CROWNS_CLASSES: tuple[str, ...] = ("tree", "dead_tree")
CROWNS_CATEGORY_IDS: tuple[int, ...] = (1, 2)

TILE_SIZE = 400                    # tiles are TILE_SIZE x TILE_SIZE, as in the real case
OBJECTS_PER_TILE = (5, 25)         # crowns tried per tile, uniform; a few placements are refused: ~15 boxes
CROWN_SIZE_RANGE = (7, 85)         # nominal crown diameter in pixels (lobes make boxes ~15% larger)
CROWN_SIZE_SKEW = 1.45             # log(diameter) = lo + (hi - lo) * U ** (1 / skew): median 33 px, boxes' ~38
DEAD_FRACTION_MAX = 0.25           # each tile's dead-tree rate is uniform in [0, this]
CONIFER_FRACTION = 0.3             # live crowns drawn as rounder, darker conifers
CLUSTERED_FRACTION = 0.6           # crowns placed near one of the tile's cluster centres
MIN_VISIBLE_FRACTION = 0.5         # a crown drawn later may hide at most half of an earlier one
MIN_INSIDE_FRACTION = 0.5          # a crown cut by the tile edge keeps at least half inside
PLACEMENT_TRIES = 20

# Base colours (RGB) that each tile or object jitters.
GRASS_COLOURS = ((96, 118, 62), (124, 132, 74), (84, 104, 58))
SOIL_COLOUR = (138, 118, 90)
LIVE_CROWN_DARK, LIVE_CROWN_LIGHT = (38, 64, 30), (98, 130, 58)
CONIFER_COLOUR = (36, 60, 32)
DEAD_CROWN_COLOUR = (160, 150, 138)


def crowns_paths(root: str | os.PathLike = CROWNS_ROOT) -> dict[str, str]:
    """Paths of the crowns dataset's image folders and annotation files under `root`."""
    return builtin_paths(root)


def ensure_crowns_data(
    root: str | os.PathLike = CROWNS_ROOT, num_train: int = 48, num_val: int = 16, seed: int = 0
) -> dict[str, str]:
    """Generate the crowns dataset under `root` unless its annotation files already exist
    (atomically, see `public.data.demo.ensure_generated`); an existing dataset is reused as
    is, whatever `num_*`/`seed` it was made with.

    Returns:
        `crowns_paths(root)`.
    """
    return ensure_generated(root, lambda folder: generate_crowns_data(folder, num_train, num_val, seed))


def generate_crowns_data(root: str | os.PathLike, num_train: int, num_val: int, seed: int) -> None:
    """Write `num_train` + `num_val` tiles and their COCO json files under `root`
    (deterministic per split: same arguments -> byte-identical files)."""
    write_builtin_data(root, num_train, num_val, seed, _draw_split, CROWNS_CATEGORY_IDS, CROWNS_CLASSES,
                       "densedet tree crowns (synthetic aerial tiles)")


def _draw_split(rng: np.random.Generator, count: int) -> Iterable[DrawnImage]:
    for _ in range(count):
        yield _draw_tile(rng, TILE_SIZE, TILE_SIZE)


# ---- one tile --------------------------------------------------------------------------------
def _draw_tile(rng: np.random.Generator, height: int, width: int) -> DrawnImage:
    """Background, distractors, then crowns from small to big (taller trees hide smaller ones)."""
    canvas = _background(rng, height, width)  # [H, W, 3] float32 RGB 0..255
    _draw_distractors(rng, canvas)
    sun_angle = rng.uniform(0, 2 * np.pi)
    elevation = rng.uniform(np.radians(35), np.radians(65))
    sun = np.array([np.cos(sun_angle) * np.cos(elevation), np.sin(sun_angle) * np.cos(elevation),
                    np.sin(elevation)])  # [3] unit vector towards the sun (x right, y down, z up)
    shadow_length = rng.uniform(0.25, 0.55) / np.tan(elevation)  # shadow offset per pixel of diameter
    shadow_strength = rng.uniform(0.4, 0.65)
    dead_rate = rng.uniform(0, DEAD_FRACTION_MAX)
    clusters = rng.uniform(0, [width, height], (int(rng.integers(1, 4)), 2))  # [K, 2] (x, y)

    log_lo, log_hi = np.log(CROWN_SIZE_RANGE[0]), np.log(CROWN_SIZE_RANGE[1])
    count = int(rng.integers(OBJECTS_PER_TILE[0], OBJECTS_PER_TILE[1] + 1))
    diameters = np.sort(np.exp(log_lo + (log_hi - log_lo) * rng.random(count) ** (1 / CROWN_SIZE_SKEW)))

    owner = np.full((height, width), -1, dtype=np.int64)  # [H, W] the crown on top, -1 = ground
    extents: list[int] = []   # outline pixels (inside the tile) of each placed crown
    visible: list[int] = []   # of which not hidden by later crowns
    objects = []
    for diameter in diameters:
        class_index = int(rng.random() < dead_rate)
        conifer = class_index == 0 and rng.random() < CONIFER_FRACTION
        rgb, alpha, extent = _crown(rng, diameter, class_index == 1, conifer, sun)  # [P, P, 3], [P, P], [P, P]
        side = extent.shape[0]
        for _try in range(PLACEMENT_TRIES):
            if rng.random() < CLUSTERED_FRACTION:
                centre = clusters[rng.integers(len(clusters))] + rng.normal(0, 0.12 * width, 2)
            else:
                centre = rng.uniform(-0.1 * diameter, [width + 0.1 * diameter, height + 0.1 * diameter])
            x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
            cut = _overlap(x0, y0, side, side, height, width)
            if cut is None:
                continue
            inside, local = cut
            here = extent[local]  # [h, w] outline pixels inside the tile
            if here.sum() < MIN_INSIDE_FRACTION * extent.sum():
                continue
            hidden = np.bincount(owner[inside][here] + 1, minlength=len(extents) + 1)[1:]  # [K]
            if np.all(np.asarray(visible) - hidden >= MIN_VISIBLE_FRACTION * np.asarray(extents)):
                break
        else:
            continue  # nowhere keeps the earlier crowns visible enough: one crown fewer
        visible = list(np.asarray(visible, dtype=np.int64) - hidden)
        extents.append(int(here.sum()))
        visible.append(extents[-1])
        owner[inside][here] = len(extents) - 1

        offset = -sun[:2] / np.linalg.norm(sun[:2]) * diameter * shadow_length  # shadow falls away from the sun
        strength = shadow_strength * (0.5 if class_index == 1 else 1.0)  # bare branches cast thin shadows
        shade = cv2.GaussianBlur(alpha, (0, 0), max(0.6, diameter / 12))  # [P, P] soft-edged shadow
        _multiply(canvas, 1 - strength * shade, x0 + int(round(offset[0])), y0 + int(round(offset[1])))
        canvas[inside] = canvas[inside] * (1 - alpha[local][..., None]) + rgb[local] * alpha[local][..., None]

        rows, cols = np.flatnonzero(here.any(axis=1)), np.flatnonzero(here.any(axis=0))
        ox, oy = inside[1].start, inside[0].start
        objects.append((class_index, (ox + int(cols[0]), oy + int(rows[0]),
                                      ox + int(cols[-1]) + 1, oy + int(rows[-1]) + 1)))
    return _camera(rng, canvas), objects


def _camera(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """A little blur, a brightness/contrast change and sensor noise; float [H, W, 3] -> uint8."""
    canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.4, 1.0))
    canvas = (canvas - 110) * rng.uniform(0.85, 1.15) + 110 + rng.uniform(-12, 12)
    canvas += rng.uniform(1.5, 4.0) * rng.standard_normal(canvas.shape, dtype=np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8)


# ---- ground and distractors ----------------------------------------------------------------------
def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grass with patches of bare soil, texture at several scales, maybe a path and furrows."""
    grass = (np.array(GRASS_COLOURS[rng.integers(len(GRASS_COLOURS))]) + rng.uniform(-12, 12, 3)).astype(np.float32)
    soil = (np.array(SOIL_COLOUR) + rng.uniform(-15, 15, 3)).astype(np.float32)  # [3]
    patches = _noise(rng, height, width, rng.uniform(60, 140)) + rng.uniform(-0.6, 0.9)  # [H, W]
    soil_weight = 1 / (1 + np.exp(-4 * (patches - 1.0)))  # [H, W] in 0..1, soft patch edges
    if rng.random() < 0.35:  # a winding path of bare soil
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)  # [H, W] each
        angle = rng.uniform(0, np.pi)
        across = -np.sin(angle) * (xs - width / 2) + np.cos(angle) * (ys - height / 2)  # [H, W]
        across += 25 * _noise(rng, height, width, 120)
        soil_weight = np.maximum(soil_weight, np.clip(rng.uniform(4, 9) - np.abs(across), 0, 1))
    base = grass * (1 - soil_weight[..., None]) + soil * soil_weight[..., None]  # [H, W, 3]
    light = 1 + sum(amp * _noise(rng, height, width, cell)
                    for cell, amp in ((2, 0.05), (5, 0.05), (12, 0.06), (30, 0.06), (80, 0.07)))  # [H, W]
    if rng.random() < 0.3:  # mowing or ploughing furrows
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        phase = (np.cos(angle) * xs + np.sin(angle) * ys) * (2 * np.pi / rng.uniform(6, 16))
        light += rng.uniform(0.03, 0.07) * np.sin(phase)
    tint = 1 + _noise(rng, height, width, 20)[..., None] * rng.uniform(0.02, 0.05, 3).astype(np.float32)  # mottling
    return base * light[..., None] * tint  # [H, W, 3] float32


def _draw_distractors(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Things that are not trees: tussocks and stones (small, flat, no shadow), shadow patches."""
    height, width = canvas.shape[:2]
    for _ in range(int(rng.integers(15, 60))):  # grass tussocks and low bushes: darker or lighter green
        alpha, _extent, _d = _blob(rng, np.exp(rng.uniform(np.log(3), np.log(18))), 0.2, 1.5)
        alpha *= rng.uniform(0.4, 0.9)
        _multiply(canvas, 1 - alpha * rng.uniform(-0.25, 0.45), *_random_corner(rng, alpha, height, width))
    for _ in range(int(rng.integers(0, 10))):  # stones and bare spots: pale grey-brown
        alpha, _extent, _d = _blob(rng, np.exp(rng.uniform(np.log(3), np.log(16))), 0.15, 1.0)
        colour = np.array(SOIL_COLOUR) + 40 + rng.uniform(-20, 20, 3)
        _blend(canvas, colour, alpha * rng.uniform(0.4, 0.8), *_random_corner(rng, alpha, height, width))
    for _ in range(int(rng.integers(0, 4))):  # shadows of things outside the classes, ponds
        alpha, _extent, _d = _blob(rng, rng.uniform(20, 90), 0.3, 4.0)
        _multiply(canvas, 1 - alpha * rng.uniform(0.3, 0.5), *_random_corner(rng, alpha, height, width))


def _random_corner(rng: np.random.Generator, patch: np.ndarray, height: int, width: int) -> tuple[int, int]:
    side = patch.shape[0]
    return int(rng.integers(-side // 2, width - side // 2)), int(rng.integers(-side // 2, height - side // 2))


# ---- one crown -------------------------------------------------------------------------------------
def _crown(rng: np.random.Generator, diameter: float, dead: bool, conifer: bool,
           sun: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One crown in a square patch around it.

    Returns:
        rgb float32 [P, P, 3], alpha float32 [P, P] (how much it covers the ground, 0..1),
        extent bool [P, P] (its full outline, which the box bounds).
    """
    alpha, extent, d = _blob(rng, diameter, 0.06 if conifer else 0.14, rng.uniform(1.0, 2.0))
    side = alpha.shape[0]
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5 - side / 2  # [P, P] each, from the centre
    rho = np.maximum(np.hypot(xs, ys), 1e-6)
    # Dome (cone for conifers) normals lit from the sun: bright sun side, dark far side.
    tilt = d if not conifer else np.full_like(d, 0.6)
    z = np.sqrt(np.clip(1 - tilt ** 2, 0.05, 1))
    lit = (tilt * xs / rho * sun[0] + tilt * ys / rho * sun[1] + z * sun[2])  # [P, P] cosine of incidence
    radius = diameter / 2
    clumps = _noise(rng, side, side, max(1.5, radius / 3.5)) * (0.16 if dead else 0.22)  # leafy clumps
    fine = _noise(rng, side, side, 1.5) * 0.1
    if dead:
        colour = np.array(DEAD_CROWN_COLOUR) + rng.uniform(-25, 15) + rng.uniform(-5, 5, 3)  # grey, barely tinted
        light = 0.7 + 0.4 * np.clip(lit, 0, 1) + clumps + fine
        # Bare limbs radiating from the trunk, twigs between them, the ground seen through the gaps.
        bend = _noise(rng, side, side, max(2.0, radius / 3)) * 0.6
        limbs = np.cos(rng.integers(5, 10) * (np.arctan2(ys, xs) + bend)) * (1 - 0.5 * d)  # [P, P]
        twigs = _noise(rng, side, side, 1.5)
        alpha = alpha * np.clip(0.25 + np.maximum(1.6 * (limbs - 0.3), twigs + 0.3), 0, 1)
    else:
        if conifer:
            colour = np.array(CONIFER_COLOUR) + rng.uniform(-8, 8, 3)
            bend = _noise(rng, side, side, max(2.0, radius / 3)) * 0.5
            clumps = clumps + 0.08 * np.cos(rng.integers(7, 13) * (np.arctan2(ys, xs) + bend))  # whorled branches
        else:
            colour = (np.array(LIVE_CROWN_DARK) + rng.random() * np.subtract(LIVE_CROWN_LIGHT, LIVE_CROWN_DARK)
                      + rng.uniform(-10, 10, 3))
        light = 0.45 + 0.85 * np.clip(lit, 0, 1) + clumps + fine
    rgb = colour[None, None, :] * np.clip(light, 0.2, 2.0)[..., None]  # [P, P, 3]
    return rgb.astype(np.float32), alpha.astype(np.float32), extent


def _blob(rng: np.random.Generator, diameter: float, lobes: float,
          edge: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A soft, lobed, ragged round outline of about `diameter` px, centred in a square patch.

    Args:
        lobes: amplitude of the low-frequency lobes, relative to the radius.
        edge: width of the soft edge in pixels.

    Returns:
        alpha float32 [P, P] (0..1, 0.5 on the outline), inside bool [P, P] (alpha >= 0.5),
        d float32 [P, P] (distance from the centre relative to the outline's radius, clipped to 0..1).
    """
    radius = diameter / 2
    orders = np.arange(2, 7)  # [5] lobe counts
    amplitudes = rng.uniform(0, lobes, len(orders)) / np.sqrt(orders - 1)
    phases = rng.uniform(0, 2 * np.pi, len(orders))
    reach = 1 + amplitudes.sum() + 0.15  # the farthest the outline can get, in radii (lobes + ragged edge)
    side = int(np.ceil(2 * radius * reach + 2 * edge)) + 2
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5 - side / 2  # [P, P] each
    rho = np.hypot(xs, ys)
    direction = (xs + 1j * ys) / np.maximum(rho, 1e-6)  # [P, P] complex e^(i theta)
    lobed = sum(a * np.exp(1j * phase) * direction ** int(k) for k, a, phase in zip(orders, amplitudes, phases))
    outline = radius * (1 + lobed.real)  # [P, P]: radius * (1 + sum_k a_k cos(k theta + phase_k))
    outline += _noise(rng, side, side, max(1.2, radius / 6)) * 0.1 * radius  # ragged, leafy edge
    alpha = np.clip(0.5 - (rho - outline) / edge, 0, 1).astype(np.float32)
    return alpha, alpha >= 0.5, np.clip(rho / np.maximum(outline, 1e-3), 0, 1).astype(np.float32)


# ---- small helpers -----------------------------------------------------------------------------
def _noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise float32 [H, W], standard deviation ~0.5-0.6, with features ~`cell` px apart."""
    coarse = rng.normal(0.0, 1.0, (int(height / cell) + 3, int(width / cell) + 3)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _overlap(x0: int, y0: int, patch_h: int, patch_w: int, height: int, width: int):
    """Where a patch with top-left (x0, y0) meets the image: (image slices, patch slices), or None."""
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + patch_w, width), min(y0 + patch_h, height)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def _multiply(canvas: np.ndarray, factor: np.ndarray, x0: int, y0: int) -> None:
    """canvas *= factor [P, P] over the patch at top-left (x0, y0), in place."""
    cut = _overlap(x0, y0, *factor.shape, *canvas.shape[:2])
    if cut is not None:
        canvas[cut[0]] *= factor[cut[1]][..., None]


def _blend(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Paint `colour` [3] with opacity `alpha` [P, P] over the patch at top-left (x0, y0), in place."""
    cut = _overlap(x0, y0, *alpha.shape, *canvas.shape[:2])
    if cut is not None:
        a = alpha[cut[1]][..., None]
        canvas[cut[0]] = canvas[cut[0]] * (1 - a) + colour * a
