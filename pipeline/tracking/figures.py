"""Pictures of what a job kept: which patches survived, per partition, and tokens per image.

:func:`draw_kept_patches` is the paper's Figures 3 and 4 for the user's own images: every
partition the model saw, drawn with the patches that were kept left clear and the dropped ones
darkened. The partitions are rebuilt from the original image with the processor's own geometry
(:class:`~hired_ops.partition.PartitionLayout`), so a highlighted patch is the pixels the vision
tower actually encoded for that token:

* partition 0, the full image: the original squashed to one ``tile x tile`` square (LLaVA-NeXT),
  or, for a single-partition model (LLaVA-1.5), its shortest edge resized to the tile and the
  centre ``tile x tile`` cropped, as CLIP's processor does;
* partitions 1..k, the sub-images: ``tile x tile`` crops, in raster order, of the original resized
  (aspect preserved) to fit the grid's canvas and centred on it with black padding.

Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot): nothing global is touched,
no display is needed, and they are freed once unreferenced.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import isqrt
from typing import Protocol

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from hired_ops.partition import PartitionLayout
from hired_ops.vision import VisionGeometry

# When only the encoded image is known, the patch size in pixels is unknown: it fixes nothing but
# the pixel rounding of the resized content, so the LLaVA value (CLIP-L/14) is assumed.
DEFAULT_PATCH_PX = 14
# How dropped and never-candidate patches are shown: dropped ones keep a trace of their content
# (so the picture still reads), letterbox padding is a flat grey distinct from both.
DROPPED_BRIGHTNESS = 0.25
PADDING_GREY = 160
TILE_INCHES = 2.4


class KeptPatches(Protocol):
    """What the drawing reads from an :class:`~pipeline.model.encoded.EncodedImage` (or a look-alike)."""

    partition: np.ndarray  # (K,) partition of each kept token, 0 = full image
    patch: np.ndarray  # (K,) raster index of each kept token within its partition
    available: np.ndarray  # (P,) candidate patches per partition
    image_size: tuple[int, int]  # original (height, width)
    grid: tuple[int, int]  # sub-image (rows, cols); (0, 0) for a single-partition model


def resolve_layout(
    encoded: KeptPatches, geometry_or_layout: VisionGeometry | PartitionLayout | None = None
) -> PartitionLayout:
    """The partition geometry an encoded image was cut with, checked against it.

    With ``None`` the layout is inferred from the encoded image alone: the full image has no
    padding, so its available count is ``side * side``, and the canvas is the grid times the tile.
    """
    if isinstance(geometry_or_layout, PartitionLayout):
        layout = geometry_or_layout
    elif isinstance(geometry_or_layout, VisionGeometry):
        layout = geometry_or_layout.layout(tuple(encoded.image_size))
    elif geometry_or_layout is None:
        full_image_patches = int(encoded.available[0])
        side = isqrt(full_image_patches)
        if side * side != full_image_patches:
            raise ValueError(
                f"cannot infer the patch grid: the full image has {full_image_patches} candidates, "
                "not a square number; pass the model's VisionGeometry"
            )
        tile = side * DEFAULT_PATCH_PX
        rows, cols = (int(v) for v in encoded.grid)
        if rows * cols == 0:
            layout = PartitionLayout.single(tuple(encoded.image_size), tile, DEFAULT_PATCH_PX)
        else:
            layout = PartitionLayout(tuple(encoded.image_size), (rows * tile, cols * tile), tile, DEFAULT_PATCH_PX)
    else:
        raise TypeError(
            "geometry_or_layout must be a VisionGeometry, a PartitionLayout or None, "
            f"got {type(geometry_or_layout).__name__}"
        )
    if tuple(layout.image_size) != tuple(encoded.image_size) or tuple(layout.grid) != tuple(encoded.grid):
        raise ValueError(
            f"the layout (image {tuple(layout.image_size)}, grid {tuple(layout.grid)}) does not match the "
            f"encoded image (image {tuple(encoded.image_size)}, grid {tuple(encoded.grid)})"
        )
    return layout


def partition_pixels(image: Image.Image, layout: PartitionLayout, resample: int = Image.BICUBIC) -> list[np.ndarray]:
    """``(tile, tile, 3)`` uint8 pixels of every partition, full image first, as the processor cuts
    them (before normalisation).

    A mode-L image keeps its one channel (``(tile, tile)`` arrays); with ``resample=Image.NEAREST``
    that cuts a label map (an object id per pixel) without blending ids, so each patch's labels
    are exactly the pixels the tower sees for it.
    """
    source = image if image.mode == "L" else image.convert("RGB")
    tile = layout.tile
    if not layout.anyres:
        return [_resize_and_centre_crop(source, tile, resample)]
    tiles = [np.asarray(source.resize((tile, tile), resample))]
    rows, cols = layout.grid
    top, left, new_h, new_w = layout.content_box
    canvas = Image.new(source.mode, (layout.canvas[1], layout.canvas[0]), 0)
    canvas.paste(source.resize((new_w, new_h), resample), (left, top))
    pixels = np.asarray(canvas)
    for r in range(rows):
        for c in range(cols):
            tiles.append(pixels[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile])
    return tiles


def _resize_and_centre_crop(image: Image.Image, tile: int, resample: int) -> np.ndarray:
    """CLIP preprocessing: shortest edge to ``tile`` (the other scaled and truncated), centre crop."""
    short, long = sorted(image.size)
    scaled = int(tile * long / short)
    width, height = (tile, scaled) if image.width <= image.height else (scaled, tile)
    top, left = (height - tile) // 2, (width - tile) // 2
    resized = image.resize((width, height), resample)
    return np.asarray(resized)[top : top + tile, left : left + tile]


def kept_masks(encoded: KeptPatches, layout: PartitionLayout) -> np.ndarray:
    """``(P, side, side)`` bool: which patches of each partition were kept."""
    side = layout.side
    masks = np.zeros((layout.num_partitions, side * side), dtype=bool)
    partition = np.asarray(encoded.partition, dtype=np.int64)
    patch = np.asarray(encoded.patch, dtype=np.int64)
    if partition.size and (partition.max() >= layout.num_partitions or patch.max() >= side * side):
        raise ValueError(
            f"kept tokens point outside the layout ({layout.num_partitions} partitions of {side * side} patches)"
        )
    masks[partition, patch] = True
    return masks.reshape(-1, side, side)


def shade_partition(pixels: np.ndarray, kept: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Pixels with dropped patches darkened and non-candidate (padding) patches flat grey.

    ``kept`` and ``candidates`` are ``(side, side)`` bool; ``pixels`` is ``(tile, tile, 3)`` uint8.
    """
    scale = pixels.shape[0] // kept.shape[0]
    # patch masks -> pixel masks: every patch covers a scale x scale block
    kept_px = np.kron(kept, np.ones((scale, scale), dtype=bool))
    candidate_px = np.kron(candidates, np.ones((scale, scale), dtype=bool))
    out = pixels.astype(np.float32)
    out[~kept_px] *= DROPPED_BRIGHTNESS
    out[~candidate_px] = PADDING_GREY
    return out.round().astype(np.uint8)


def draw_kept_patches(
    image: Image.Image,
    encoded: KeptPatches,
    geometry_or_layout: VisionGeometry | PartitionLayout | None = None,
    title: str | None = None,
) -> Figure:
    """Every partition of ``image`` with its kept patches clear and dropped ones darkened.

    The full image is on the left; the sub-images on the right in their ``rows x cols``
    arrangement, each titled ``kept/available``. A single-partition model (LLaVA-1.5) gets one
    panel. Save with ``fig.savefig(path)`` or ``mlflow.log_figure``.

    Args:
        image: the original image the tokens were encoded from.
        encoded: its kept tokens (an :class:`~pipeline.model.encoded.EncodedImage`).
        geometry_or_layout: the model's :class:`VisionGeometry`, or the image's
            :class:`PartitionLayout`; ``None`` infers it from ``encoded`` (see :func:`resolve_layout`).
        title: figure title; defaults to the kept and available totals.
    """
    # A single-partition model records the tile it saw, not the original size: nothing to check.
    if any(encoded.grid) and (image.height, image.width) != tuple(encoded.image_size):
        raise ValueError(
            f"the image is {image.height}x{image.width} (h x w) but the tokens were encoded from "
            f"{encoded.image_size[0]}x{encoded.image_size[1]}: pass the original image"
        )
    layout = resolve_layout(encoded, geometry_or_layout)
    masks = kept_masks(encoded, layout)
    candidates = layout.candidate_mask().numpy().reshape(-1, layout.side, layout.side)
    tiles = partition_pixels(image, layout)
    available = np.asarray(encoded.available)
    rows, cols = layout.grid

    # The full image is drawn as tall as the sub-image grid, so both halves share one scale.
    full_span = max(rows, 1)
    fig = Figure(figsize=(TILE_INCHES * (full_span + cols), TILE_INCHES * full_span + 0.9), layout="constrained")
    grid = fig.add_gridspec(full_span, 1 + cols, width_ratios=[full_span] + [1] * cols)
    panels = [(fig.add_subplot(grid[:, 0]), "full image")]
    for r in range(rows):
        for c in range(cols):
            panels.append((fig.add_subplot(grid[r, 1 + c]), f"sub-image {r * cols + c + 1} ({r},{c})"))
    for index, (axis, name) in enumerate(panels):
        axis.imshow(shade_partition(tiles[index], masks[index], candidates[index]), interpolation="nearest")
        axis.set_title(f"{name}: {int(masks[index].sum())}/{int(available[index])}", fontsize=9)
        axis.set_axis_off()
    total = f"{int(masks.sum())}/{int(available.sum())} tokens kept"
    fig.suptitle(f"{title}: {total}" if title else total, fontsize=11)
    fig.supxlabel("clear: kept   dark: dropped   grey: padding (never a candidate)", fontsize=8)
    return fig


def tokens_histogram(values: Sequence[int] | np.ndarray, title: str = "Visual tokens kept per image") -> Figure:
    """Histogram of visual tokens kept per image, with the mean marked.

    A budgeted method gives every image ``min(budget, available)`` tokens, so this is usually a
    spike at the budget plus a tail of small images; methods that pick their own count (PruMerge)
    spread out.
    """
    data = np.asarray(values, dtype=np.float64)
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    axis = fig.add_subplot()
    axis.set_xlabel("visual tokens kept")
    axis.set_ylabel("images")
    if data.size == 0:
        axis.text(0.5, 0.5, "no successful images", ha="center", va="center", transform=axis.transAxes)
        axis.set_title(title)
        return fig
    low, high = int(np.floor(data.min())), int(np.ceil(data.max()))
    # Token counts are integers: one bin per count while that stays readable.
    bins = np.arange(low, high + 2) - 0.5 if high - low < 60 else 40
    axis.hist(data, bins=bins, color="#4c72b0", edgecolor="white")
    mean = float(data.mean())
    axis.axvline(mean, color="#c44e52", linestyle="--", label=f"mean {mean:.1f}")
    axis.legend()
    axis.set_title(f"{title} (n={data.size})")
    return fig
