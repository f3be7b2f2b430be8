"""Robust decoding of untrusted image bytes into RGB ``PIL.Image`` objects.

The captioning job reads millions of images of unknown provenance, so every way
an image can be odd (palette + transparency, CMYK, 16-bit, EXIF-rotated phone
photos) must come out as a sensible upright RGB image, and every way an input can
be broken (empty, not an image, truncated, huge) must fail with one exception type,
:class:`ImageDecodeError`, that names the input. Callers (Ray tasks, written
elsewhere) catch that one type to record a per-row failure instead of killing a
whole batch.

Nothing here touches Pillow's process-wide settings (``ImageFile.LOAD_TRUNCATED_IMAGES``,
``Image.MAX_IMAGE_PIXELS``): this module runs inside shared worker processes where
other code may rely on those defaults.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputProblem

__all__ = ["ALLOWED_FORMATS", "DecodeLimits", "ImageDecodeError", "decode_image"]

#: Pillow format names ``decode_image`` will open. Restricting ``Image.open`` to
#: these (instead of trying every registered plugin) keeps untrusted bytes away
#: from exotic parsers, e.g. EPS, which shells out to Ghostscript. ("JPEG" also
#: covers MPO, the multi-picture JPEG many phone cameras write: Pillow's JPEG
#: opener returns those itself.)
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")

# Modes whose alpha channel must be composited instead of dropped. "PA" is a
# palette image with an alpha band; "RGBa"/"La" are premultiplied variants.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

# Background used when flattening transparency: white matches how browsers and
# document viewers show transparent PNG/GIF logos, which is what a captioning
# model should "see" (dropping alpha instead often reveals garbage RGB under
# fully transparent pixels, typically black).
_BACKGROUND = (255, 255, 255)


class ImageDecodeError(InputProblem):
    """An input could not be turned into an RGB image."""

    what = "cannot decode image"

    @property
    def source(self) -> str:
        return self.subject


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds checked before any pixel data is decoded.

    ``max_pixels`` guards against decompression bombs (a few KB of PNG/GIF that
    claims gigapixels); ``max_bytes`` guards against accidentally feeding e.g. a
    multi-GB TIFF scan into a worker. Pillow also refuses images above twice its
    own process-wide ``Image.MAX_IMAGE_PIXELS`` (about 179 Mpx by default) and
    only warns above it; ``decode_image`` refuses those too (reading, never
    changing, that global), so the effective cap is
    ``min(max_pixels, Image.MAX_IMAGE_PIXELS)``.

    Attributes:
        max_pixels: largest image (width x height) decoded, checked from the header first.
        max_bytes: largest encoded image read.
    """

    max_pixels: int = 64_000_000
    max_bytes: int = 100 * 2**20

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_bytes"):
            value = getattr(self, name)
            # bool is an int subclass; True as a limit is surely a mistake.
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(
                    f"DecodeLimits.{name} must be a positive integer, got {value!r}"
                )

    def to_params(self) -> dict[str, int]:
        """MLflow params under the names jobs and their flags use."""
        return {"max_image_pixels": self.max_pixels, "max_image_bytes": self.max_bytes}


_DEFAULT_LIMITS = DecodeLimits()


def decode_image(
    data: bytes, source: str = "<bytes>", limits: DecodeLimits = _DEFAULT_LIMITS
) -> Image.Image:
    """Decode encoded image ``data`` into an upright, fully loaded RGB image.

    Supports the formats in :data:`ALLOWED_FORMATS` (JPEG, PNG, WebP, GIF, TIFF,
    BMP), whatever the file is named. For animated/multi-page files the first
    frame is used. EXIF orientation is applied, transparency is composited over
    white, and high-bit-depth grayscale is rescaled to 8 bits rather than clipped.
    Thread-safe: no process-wide state (Pillow settings, warning filters) is
    changed.

    Args:
        data: The encoded file contents (``bytes``, ``bytearray`` or ``memoryview``).
        source: Where the bytes came from (path/URL/row id); only used in error
            messages so a failure among millions of rows can be traced.
        limits: Size limits checked before pixel data is decoded.

    Returns:
        A new ``PIL.Image.Image`` in mode ``"RGB"`` with its pixels loaded, not tied
        to ``data``.

    Raises:
        ImageDecodeError: for empty, oversized, unrecognised, truncated or
            otherwise corrupt input, or when the header announces more pixels than
            allowed.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(
            source,
            f"expected encoded image bytes, got {type(data).__name__}",
            "pass the raw file contents (e.g. from read_bytes), not a decoded image or path",
        )
    size = len(data) if not isinstance(data, memoryview) else data.nbytes
    if size == 0:
        raise ImageDecodeError(
            source, "the data is empty (0 bytes)", "check that the file was fully written/uploaded"
        )
    if size > limits.max_bytes:
        raise ImageDecodeError(
            source,
            f"the data is {size} bytes, over the limit of {limits.max_bytes} bytes",
            "skip or downscale this file, or raise DecodeLimits.max_bytes if it is expected",
        )

    try:
        image = _open_and_load(data, source, limits)
    except (ImageDecodeError, MemoryError):
        # MemoryError says nothing about the file; let the worker's own
        # out-of-memory handling see it.
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(source, exc) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted data
        # Pillow's plugins raise a zoo of types on corrupt input (OSError for
        # truncation, SyntaxError for bad headers, struct.error, IndexError,
        # ValueError, EOFError, ...). One exception type for callers is the point.
        raise ImageDecodeError(
            source,
            f"the file is corrupt or truncated ({type(exc).__name__}: {exc})",
            "re-download or re-export the file; it cannot be read as stored",
        ) from exc

    return _to_rgb(image, source)


def image_from_array(
    array: Any, source: str = "<array>", limits: DecodeLimits = _DEFAULT_LIMITS
) -> Image.Image:
    """An RGB image from decoded pixels: what ``ray.data.read_images`` yields, ``(H, W, C)`` with
    C in 1, 3, 4, or ``(H, W)``; uint8, or floats in [0, 1]. The same size limit as
    :func:`decode_image`, and alpha composited over white as there.

    Raises:
        ImageDecodeError: not an image's shape or dtype, or more pixels than allowed.
    """
    pixels = np.asarray(array)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)) or 0 in pixels.shape:
        raise ImageDecodeError(
            source, f"an array of shape {pixels.shape} is not an image",
            "pass (height, width, channels) pixels with 1, 3 or 4 channels, or the encoded file's bytes",
        )
    height, width = pixels.shape[:2]
    if height * width > limits.max_pixels:
        raise ImageDecodeError(
            source, f"{width}x{height} pixels is over the limit of {limits.max_pixels}",
            "downscale the image, or raise DecodeLimits.max_pixels if it is expected",
        )
    if pixels.dtype.kind == "f":
        pixels = (np.clip(pixels, 0.0, 1.0) * 255.0).round()
    elif pixels.dtype != np.uint8:
        raise ImageDecodeError(
            source, f"pixels of dtype {pixels.dtype} are not 8-bit",
            "pass uint8 pixels, or floats in [0, 1]",
        )
    image = Image.fromarray(np.ascontiguousarray(pixels.astype(np.uint8)))
    return _to_rgb(image, source)


def _open_and_load(data: bytes, source: str, limits: DecodeLimits) -> Image.Image:
    """Open, check the header size, and fully decode the first frame."""
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        head = bytes(data[:16])
        raise ImageDecodeError(
            source,
            f"the data is not a recognised image format (first bytes: {head!r})",
            "supported formats are JPEG, PNG, WebP, GIF, TIFF and BMP; "
            "check that the path points at an image and not e.g. an HTML error page",
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The Error above 2x Image.MAX_IMAGE_PIXELS; the Warning only arrives as
        # an exception where the process turned warnings into errors.
        raise _bomb_error(source, exc) from exc

    # Image.open only parsed the header, so this check runs before any pixel
    # data is decompressed: a 100000x100000 PNG costs nothing to reject here.
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(
            source, f"the header declares an empty image ({width}x{height})", "skip this file"
        )
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageDecodeError(
            source,
            f"the header declares {width}x{height} = {pixels} pixels, "
            f"over the limit of {limits.max_pixels}",
            "this may be a decompression bomb; skip it, or raise DecodeLimits.max_pixels "
            "if such large images are expected",
        )
    # Pillow merely *warns* between MAX_IMAGE_PIXELS and twice that. Rather than
    # escalate that warning with warnings.catch_warnings() (process-global and
    # not thread-safe: decoding often runs in thread pools), read Pillow's limit
    # (never write it) and refuse the same images here.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if pillow_limit is not None and pixels > pillow_limit:
        raise ImageDecodeError(
            source,
            f"the header declares {width}x{height} = {pixels} pixels, over Pillow's "
            f"process-wide decompression-bomb limit Image.MAX_IMAGE_PIXELS = {pillow_limit}",
            "this may be a decompression bomb; skip it",
        )

    # load() forces the full decode; without it a truncated file would only fail
    # later (or, with LOAD_TRUNCATED_IMAGES, silently yield grey pixels).
    image.load()
    return image


def _bomb_error(source: str, exc: Exception) -> ImageDecodeError:
    return ImageDecodeError(
        source,
        f"the image exceeds Pillow's decompression-bomb limit ({exc})",
        "this is usually a malicious or broken file; skip it",
    )


def _to_rgb(image: Image.Image, source: str) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB."""
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        # Malformed EXIF blocks are common in the wild and the pixels are fine;
        # losing the rotation beats losing the image.
        upright = image

    try:
        rgb = _convert_mode(upright)
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(
            source,
            f"cannot convert pixel mode {upright.mode!r} to RGB ({type(exc).__name__}: {exc})",
            "re-export the image as 8-bit RGB",
        ) from exc

    if rgb is image:
        # Never hand back the object tied to the BytesIO/parser state.
        rgb = rgb.copy()
    return rgb


def _convert_mode(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in _ALPHA_MODES or (
        # A transparent palette index (typical GIF/PNG logos) or a PNG tRNS colour
        # key on L/RGB: go through RGBA so the transparent colour is composited
        # instead of being shown.
        mode in {"P", "L", "RGB"} and "transparency" in image.info
    ):
        return _composite_over_white(image.convert("RGBA"))
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _high_depth_gray_to_rgb(image)
    # L, 1, P, CMYK, YCbCr, and anything else Pillow knows how to convert.
    return image.convert("RGB")


def _composite_over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_gray_to_rgb(image: Image.Image) -> Image.Image:
    """Map 16/32-bit integer or float grayscale to 8 bits without clipping.

    Pillow's own ``convert("L")`` clamps I/I;16 values to 0..255, turning a
    normal 16-bit photo almost entirely white. Instead:

    * ``I;16*`` (16-bit container): fixed scale 0..65535 -> 0..255, so absolute
      brightness is preserved across images.
    * ``I`` (32-bit int): values already in 0..255 are kept; values within
      0..65535 are treated as 16-bit data (older Pillow/TIFF writers store 16-bit
      as ``I``); anything else is min-max stretched.
    * ``F`` (float): 0..1 data is scaled by 255, 0..255 kept, otherwise min-max
      stretched; NaN/inf become the minimum.
    """
    mode = image.mode
    array = np.asarray(image)
    if mode.startswith("I;16"):
        scaled = array.astype(np.float64) / 257.0
    else:
        values = array.astype(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            fill = values[finite].min() if finite.any() else 0.0
            values = np.where(finite, values, fill)
        lo, hi = float(values.min()), float(values.max())
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = values
        elif mode != "F" and lo >= 0.0 and hi <= 65535.0:
            scaled = values / 257.0
        elif hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(values)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
