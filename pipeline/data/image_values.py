"""The image column of a dataset row, in every form Ray users hold images in: encoded bytes, a
path or URL, a ``{"bytes", "path"}`` struct (Hugging Face ``datasets``' Image feature, lmms-eval
Parquet, and this project's own read stage), or decoded pixels (``ray.data.read_images``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from .images import DecodeLimits, ImageDecodeError, decode_image, image_from_array
from .rows import row_bytes


def _missing(value: Any) -> bool:
    # Arrow hands a null back as None, or as NaN in a numpy batch
    return value is None or (isinstance(value, float) and np.isnan(value))


def image_source(value: Any, fallback: str) -> str:
    """Where an image value came from, for messages: its path when it names one, else ``fallback``
    (a row's id or position)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"]:
        return value["path"]
    return fallback


def load_image(
    value: Any, source: str, storage_options: dict | None = None, limits: DecodeLimits = DecodeLimits()
) -> Image.Image:
    """The RGB image an image column's value stands for (read, checked and decoded).

    Raises:
        ImageDecodeError: the value is missing or of no known form, or what it holds is not an
            image within ``limits``.
        OSError: a path or URL that cannot be read.
    """
    if isinstance(value, Image.Image):
        return image_from_array(np.asarray(value.convert("RGBA")), source, limits)
    if isinstance(value, np.ndarray) and value.dtype != object:
        return image_from_array(value, source, limits)
    if isinstance(value, (bytes, bytearray, memoryview, np.bytes_)):
        return decode_image(bytes(value), source, limits)
    if isinstance(value, str) and value:
        return decode_image(row_bytes(value, None, storage_options), source, limits)
    if isinstance(value, dict):
        inline = None if _missing(value.get("bytes")) else value.get("bytes")
        path = value.get("path")
        if inline is not None or (isinstance(path, str) and path):
            return decode_image(row_bytes(path or source, inline, storage_options), source, limits)
    if _missing(value) or isinstance(value, dict):
        raise ImageDecodeError(source, "the row has no image", "give each row an image: bytes, a path or URL, or pixels")
    raise ImageDecodeError(
        source, f"an image column value of type {type(value).__name__} is not an image",
        "give bytes, a path or URL, a {bytes, path} struct, or (height, width, channels) pixels",
    )
