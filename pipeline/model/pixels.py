"""Pixels as they cross from CPU decode work to the vision tower: uint8 tiles, normalised on the
tower's device.

The stock image processor resizes, pads and splits an image into tiles, then rescales
(``x * rescale_factor``) and normalises (``(x - image_mean) / image_std``) each tile. The first
steps keep integer pixel values; the last two turn one byte into four. So the decode side runs the
stock processor with ``do_rescale`` and ``do_normalize`` switched off and ships uint8 tiles
(4x fewer bytes than float32), and :class:`PixelNormaliser` applies the processor's own two
steps on the vision side, where the tower runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def uint8_tiles(image_processor: Any, image: Any) -> np.ndarray:
    """``(P, 3, H, W)`` uint8: the stock processor's tiles of one image before rescaling and
    normalising (``P == 1`` for single-tile processors)."""
    values = image_processor(images=[image], return_tensors="np", do_rescale=False, do_normalize=False)
    tiles = np.asarray(values["pixel_values"][0])
    if tiles.ndim == 3:  # single-partition processors give one (3, H, W) tile
        tiles = tiles[None]
    # resizing may hand back floats holding whole values (or a resampler's near-integers)
    return np.clip(np.rint(tiles), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PixelNormaliser:
    """The rescale and normalise steps of a stock image processor, on torch tensors.

    Attributes:
        rescale_factor: multiplies the raw 0..255 values (1/255 for CLIP).
        mean, std: per-channel, applied after rescaling.
    """

    rescale_factor: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_processor(cls, image_processor: Any) -> PixelNormaliser:
        """The constants of ``image_processor`` (skipping a step it has switched off)."""
        channels = 3
        rescale = float(image_processor.rescale_factor) if getattr(image_processor, "do_rescale", True) else 1.0
        if getattr(image_processor, "do_normalize", True):
            mean, std = _per_channel(image_processor.image_mean, channels), _per_channel(image_processor.image_std, channels)
        else:
            mean, std = (0.0,) * channels, (1.0,) * channels
        return cls(rescale, mean, std)

    def __call__(self, tiles: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``(P, 3, H, W)`` uint8 tiles -> the tower's input in ``dtype`` on ``device``.

        The arithmetic runs in float32 (as the stock processor's does), then casts once.
        """
        values = tiles.to(device, non_blocking=True).to(torch.float32) * self.rescale_factor
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return ((values - mean) / std).to(dtype)


def _per_channel(value: float | list[float], channels: int) -> tuple[float, ...]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * channels
    return tuple(values)
