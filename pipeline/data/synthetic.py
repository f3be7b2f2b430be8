"""Synthetic images for tests and benchmarks, where no data set can be downloaded."""

from __future__ import annotations

import numpy as np
from PIL import Image


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    """A smooth random colour field of ``(height, width)`` pixels: structured enough that CLS
    attention is not uniform, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((max(2, height // 64), max(2, width // 64), 3))
    return Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
