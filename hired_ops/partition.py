"""Anyres partition geometry: which sub-image covers which part of the original image.

LLaVA-NeXT encodes an image as a full image (the original squashed to a square tile) plus a grid
of sub-images cut from an aspect-preserving resize of the original, centred on a padded canvas.
HiRED needs two geometric facts from that layout, both computed here from the same formulas the
stock processor and model use, so that our candidates are exactly the patches the stock model keeps:

* which patches of each sub-image are real (the model "unpads" the letterbox away), and
* how much of each full-image patch lies inside each sub-image's region of the original image.

Coordinates: sizes are ``(height, width)``; a tile is ``tile`` pixels square and holds
``side x side`` patches (``side = tile // patch``, 24 for CLIP-L/14 at 336 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

Size = tuple[int, int]


def select_grid_resolution(image_size: Size, pinpoints: list[Size]) -> Size:
    """The canvas ``(height, width)`` the processor picks for an image of ``image_size``.

    Maximises the effective (downscaled, capped at original) resolution, then minimises waste.
    """
    height, width = image_size
    best, best_effective, best_waste = None, -1, math.inf
    for cand_h, cand_w in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = cand_h * cand_w - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (int(cand_h), int(cand_w)), effective, waste
    if best is None:
        raise ValueError("image_grid_pinpoints is empty: the model config must list at least one resolution")
    return best


def fit_inside(image_size: Size, canvas: Size) -> Size:
    """Aspect-preserving resize of ``image_size`` to fit ``canvas`` (the processor's rounding)."""
    height, width = image_size
    canvas_h, canvas_w = canvas
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), canvas_h), canvas_w
    return canvas_h, min(math.ceil(width * scale_h), canvas_w)


@dataclass(frozen=True)
class PartitionLayout:
    """Geometry of one image's partitions. Partition 0 is the full image; 1..k the sub-images
    in raster order of the grid (as the processor emits them)."""

    image_size: Size
    canvas: Size
    tile: int
    patch: int
    anyres: bool = True  # False: LLaVA-1.5 style, the full image is the only partition

    def __post_init__(self) -> None:
        if min(self.image_size) < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.tile % self.patch:
            raise ValueError(f"tile {self.tile} is not a multiple of patch {self.patch}")
        if self.canvas[0] % self.tile or self.canvas[1] % self.tile:
            raise ValueError(f"canvas {self.canvas} is not a whole number of {self.tile}px tiles")

    @classmethod
    def for_image(cls, image_size: Size, pinpoints: list[Size], tile: int, patch: int) -> PartitionLayout:
        return cls(tuple(image_size), select_grid_resolution(image_size, pinpoints), tile, patch)

    @classmethod
    def single(cls, image_size: Size, tile: int, patch: int) -> PartitionLayout:
        """A model without anyres partitioning (LLaVA-1.5): one square tile, no sub-images."""
        return cls(tuple(image_size), (tile, tile), tile, patch, anyres=False)

    @property
    def side(self) -> int:
        """Patches along one side of a tile."""
        return self.tile // self.patch

    @property
    def grid(self) -> Size:
        """Sub-image grid ``(rows, cols)``; ``(0, 0)`` without anyres."""
        if not self.anyres:
            return 0, 0
        return self.canvas[0] // self.tile, self.canvas[1] // self.tile

    @property
    def num_subimages(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_partitions(self) -> int:
        return 1 + self.num_subimages

    @cached_property
    def content_box(self) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the resized image on the padded canvas, in pixels."""
        new_h, new_w = fit_inside(self.image_size, self.canvas)
        return (self.canvas[0] - new_h) // 2, (self.canvas[1] - new_w) // 2, new_h, new_w

    @cached_property
    def unpadded_rows_cols(self) -> tuple[slice, slice]:
        """Rows and columns of the stitched patch grid that the stock model keeps after unpadding.

        The model unpads in patch units with its own rounding (not the processor's pixel
        padding), so this reproduces that rule: it decides which sub-image patches exist.
        """
        rows, cols = self.grid
        cur_h, cur_w = rows * self.side, cols * self.side
        orig_h, orig_w = self.image_size
        if orig_w / orig_h > cur_w / cur_h:
            new_h = int(round(orig_h * (cur_w / orig_w), 7))
            pad = (cur_h - new_h) // 2
            return slice(pad, cur_h - pad), slice(0, cur_w)
        new_w = int(round(orig_w * (cur_h / orig_h), 7))
        pad = (cur_w - new_w) // 2
        return slice(0, cur_h), slice(pad, cur_w - pad)

    def candidate_mask(self) -> torch.Tensor:
        """``(P, side*side)`` bool: patches that carry content and may be kept.

        The full image has no padding; sub-image patches outside the unpadded grid never count.
        """
        rows, cols = self.grid
        side = self.side
        full = torch.ones(1, side * side, dtype=torch.bool)
        if not self.anyres:
            return full
        stitched = torch.zeros(rows * side, cols * side, dtype=torch.bool)
        row_keep, col_keep = self.unpadded_rows_cols
        stitched[row_keep, col_keep] = True
        tiles = stitched.view(rows, side, cols, side).permute(0, 2, 1, 3).reshape(rows * cols, side * side)
        return torch.cat([full, tiles], dim=0)

    def available(self) -> torch.Tensor:
        """``(P,)`` long: candidate patches per partition."""
        return self.candidate_mask().sum(dim=1)

    def subimage_coverage(self) -> torch.Tensor:
        """``(k, side*side)`` float: fraction of each full-image patch's area inside sub-image i.

        Sub-image i's region is its tile on the canvas, clipped to the resized content and mapped
        back to original-image coordinates (undoing the resize and the centred padding). The full
        image is the original squashed to one tile, so full-image patch (a, b) covers the original
        rectangle ``[a*H/side, (a+1)*H/side) x [b*W/side, (b+1)*W/side)``. Columns sum to 1 over
        sub-images because the regions tile the original image.
        """
        rows, cols = self.grid
        side = self.side
        if not self.anyres:
            return torch.zeros(0, side * side)
        top, left, new_h, new_w = self.content_box
        orig_h, orig_w = self.image_size
        tile = torch.arange(max(rows, cols) + 1, dtype=torch.float64) * self.tile

        def region_edges(start: torch.Tensor, offset: int, extent: int, original: int) -> torch.Tensor:
            # canvas pixels -> clip to content -> original-image coordinates
            return (start - offset).clamp(0, extent) * (original / extent)

        y_edges = region_edges(tile[: rows + 1], top, new_h, orig_h)  # (rows+1,)
        x_edges = region_edges(tile[: cols + 1], left, new_w, orig_w)  # (cols+1,)
        patch_y = torch.arange(side + 1, dtype=torch.float64) * (orig_h / side)
        patch_x = torch.arange(side + 1, dtype=torch.float64) * (orig_w / side)

        def overlap(region: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
            # (n_regions, side): length of each patch interval inside each region interval
            lo = torch.maximum(region[:-1, None], patches[None, :-1])
            hi = torch.minimum(region[1:, None], patches[None, 1:])
            return (hi - lo).clamp(min=0) / (patches[1:] - patches[:-1])[None, :]

        frac_y, frac_x = overlap(y_edges, patch_y), overlap(x_edges, patch_x)  # (rows, side), (cols, side)
        cover = frac_y[:, None, :, None] * frac_x[None, :, None, :]  # (rows, cols, side, side)
        return cover.reshape(rows * cols, side * side).to(torch.float32)

    def stitched_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Raster order of the stitched sub-image grid as ``(partition, patch)`` pairs.

        Returns two ``(rows*side * cols*side,)`` long tensors: the sub-image partition index
        (1..k) and the patch index within it, for every stitched position in raster order.
        """
        rows, cols = self.grid
        side = self.side
        y = torch.arange(rows * side)[:, None]
        x = torch.arange(cols * side)[None, :]
        partition = 1 + (y // side) * cols + (x // side)
        patch = (y % side) * side + (x % side)
        return partition.flatten(), patch.flatten()
