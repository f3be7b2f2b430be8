"""Tests for pipeline.data.images.decode_image: formats, pixel modes, EXIF, and bad input."""

from __future__ import annotations

import importlib.util
import io
import pickle
import random
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from pipeline.data.images import DecodeLimits, ImageDecodeError, decode_image

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "images"
ORIENTATION = 0x0112
WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **params)
    return buf.getvalue()


def scene(size: tuple[int, int] = (37, 23)) -> Image.Image:
    """Small RGB image, red in the top-left quadrant, blue elsewhere (odd size on purpose)."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1] // 2))
    return image


def noisy(size: tuple[int, int] = (128, 128)) -> Image.Image:
    """Incompressible pixels, so cutting the file in half really cuts pixel data."""
    rng = random.Random(0)
    return Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3)))


def png_with_header_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed up).

    Costs nothing to build; decoding it for real would need width*height pixels,
    so a decoder that checks the header first rejects it instantly.
    """
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def assert_close(pixel, expected, tol=12):
    assert all(abs(a - b) <= tol for a, b in zip(pixel, expected)), (pixel, expected)


# --------------------------------------------------------------------------- #
# formats
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "fmt, params",
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"quality": 95}),
        ("GIF", {}),
        ("TIFF", {}),
        ("BMP", {}),
    ],
)
def test_formats_decode_to_rgb_with_size_and_colours(fmt, params):
    image = decode_image(encode(scene(), fmt, **params), source=f"x.{fmt.lower()}")
    assert image.mode == "RGB"
    assert image.size == (37, 23)
    assert_close(image.getpixel((2, 2)), (255, 0, 0), tol=40)
    assert_close(image.getpixel((34, 20)), (0, 0, 255), tol=40)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    image = decode_image(data)
    assert image.size == (16, 16)
    assert_close(image.getpixel((8, 8)), (255, 0, 0), tol=5)


def test_mpo_multi_picture_jpeg_uses_first_picture():
    # Phone cameras write MPO (JPEG + extra pictures) under a .jpg name.
    first, second = Image.new("RGB", (24, 16), (255, 0, 0)), Image.new("RGB", (24, 16), (0, 0, 255))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    image = decode_image(data)
    assert image.size == (24, 16)
    assert_close(image.getpixel((5, 5)), (255, 0, 0), tol=10)


def test_formats_outside_the_allow_list_are_rejected():
    # EPS would make Pillow run Ghostscript on untrusted bytes; PPM is simply not expected.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    ppm = encode(scene(), "PPM")
    for data in (eps, ppm):
        with pytest.raises(ImageDecodeError, match="not a recognised image format"):
            decode_image(data, source="odd")


# --------------------------------------------------------------------------- #
# pixel modes
# --------------------------------------------------------------------------- #


def test_grayscale_l():
    gray = Image.new("L", (20, 10), 77)
    image = decode_image(encode(gray, "PNG"))
    assert image.mode == "RGB" and image.size == (20, 10)
    assert image.getpixel((5, 5)) == (77, 77, 77)


def test_bilevel_1():
    image = decode_image(encode(Image.new("1", (9, 9), 1), "BMP"))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == WHITE


def test_palette_without_transparency():
    pal = scene().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    image = decode_image(encode(pal, "PNG"))
    assert image.mode == "RGB" and image.size == (37, 23)
    assert_close(image.getpixel((2, 2)), (255, 0, 0), tol=5)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_is_composited_over_white(fmt):
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0, 0, 0] * 254)  # index 0 black (transparent), 1 red
    pal.paste(0, (0, 0, 5, 10))
    image = decode_image(encode(pal, fmt, transparency=0))
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == WHITE  # was black under the transparent index
    assert_close(image.getpixel((8, 8)), (200, 30, 30), tol=2)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(fmt):
    cmyk = Image.new("CMYK", (12, 8), (0, 255, 255, 0))  # pure red in CMYK
    image = decode_image(encode(cmyk, fmt))
    assert image.mode == "RGB" and image.size == (12, 8)
    assert_close(image.getpixel((4, 4)), (255, 0, 0), tol=25)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_rgba_alpha_is_composited_not_dropped(fmt):
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # transparent *black*
    rgba.paste((255, 0, 0, 255), (5, 0, 10, 5))  # opaque red
    rgba.paste((0, 0, 255, 128), (5, 5, 10, 10))  # half-transparent blue
    params = {"lossless": True} if fmt == "WEBP" else {}
    image = decode_image(encode(rgba, fmt, **params))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE  # dropping alpha would give black
    assert image.getpixel((7, 2)) == (255, 0, 0)
    assert_close(image.getpixel((7, 7)), (127, 127, 255), tol=3)


def test_la_alpha_is_composited():
    la = Image.new("LA", (6, 6), (0, 0))
    la.paste((50, 255), (3, 0, 6, 6))
    image = decode_image(encode(la, "PNG"))
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((4, 4)) == (50, 50, 50)


def test_rgb_png_with_transparent_colour_key():
    rgb = Image.new("RGB", (4, 4), (10, 20, 30))
    rgb.paste((200, 100, 0), (2, 0, 4, 4))
    image = decode_image(encode(rgb, "PNG", transparency=(10, 20, 30)))
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((3, 3)) == (200, 100, 0)


def gradient16(width: int = 256, height: int = 8) -> np.ndarray:
    row = np.linspace(0, 65535, width).round().astype(np.uint16)
    return np.tile(row, (height, 1))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_is_scaled_not_clipped(fmt):
    source = Image.fromarray(gradient16())
    assert source.mode == "I;16"
    data = encode(source, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    image = decode_image(data)
    assert image.mode == "RGB" and image.size == (256, 8)
    values = np.asarray(image)[..., 0].astype(int)
    assert values.min() <= 2 and values.max() >= 253
    # Clipping (Pillow's convert("L")) would make nearly everything 255.
    assert abs(values.mean() - 127.5) < 3
    assert abs(int(values[0, 128]) - 128) <= 2


def test_32bit_int_grayscale_holding_16bit_data():
    source = Image.fromarray(gradient16().astype(np.int32))
    assert source.mode == "I"
    values = np.asarray(decode_image(encode(source, "TIFF")))[..., 0].astype(int)
    assert values.min() <= 2 and values.max() >= 253 and abs(values.mean() - 127.5) < 3


@pytest.mark.parametrize(
    "lo, hi", [(0.0, 1.0), (-3.0, 1000.0)], ids=["unit-range", "arbitrary-range"]
)
def test_float_grayscale(lo, hi):
    array = np.tile(np.linspace(lo, hi, 64, dtype=np.float32), (4, 1))
    source = Image.fromarray(array)
    assert source.mode == "F"
    values = np.asarray(decode_image(encode(source, "TIFF")))[..., 0].astype(int)
    assert values.min() <= 2 and values.max() >= 253


# --------------------------------------------------------------------------- #
# EXIF orientation
# --------------------------------------------------------------------------- #


def test_exif_orientation_6_is_applied():
    upright = Image.new("RGB", (40, 60), (0, 160, 0))
    upright.paste((255, 0, 0), (0, 0, 40, 10))  # red band marks the top
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: 60x40
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    image = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert image.size == (40, 60)  # swapped back to portrait
    assert_close(image.getpixel((20, 3)), (255, 0, 0), tol=40)
    assert_close(image.getpixel((20, 55)), (0, 160, 0), tol=40)


def test_malformed_exif_does_not_lose_the_image(monkeypatch):
    data = bytearray(encode(Image.new("RGB", (8, 6), (1, 2, 3)), "JPEG"))
    # A corrupt APP1/Exif segment right after SOI: the pixels are still fine.
    bogus = b"Exif\x00\x00" + b"\xff" * 20
    segment = b"\xff\xe1" + struct.pack(">H", len(bogus) + 2) + bogus
    data = bytes(data[:2]) + segment + bytes(data[2:])
    assert decode_image(data).size == (8, 6)

    # And when Pillow's EXIF parsing itself blows up, the image is kept unrotated.
    def broken_exif_transpose(image, **kwargs):
        raise SyntaxError("bad EXIF IFD")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken_exif_transpose)
    image = decode_image(data)
    assert image.mode == "RGB" and image.size == (8, 6)


# --------------------------------------------------------------------------- #
# bundled samples
# --------------------------------------------------------------------------- #

EXPECTED_SAMPLES = {  # name: (width, height) as displayed
    "jpeg_384x192.jpg": (384, 192),
    "png_180x360.png": (180, 360),
    "webp_540x192.webp": (540, 192),
    "jpeg_321x345.jpg": (321, 345),
    "grayscale_372x186.png": (372, 186),
    "palette_366x384.gif": (366, 384),
    "rgba_189x576.png": (189, 576),
    "exif_rotated_192x543.jpg": (192, 543),
}


def sample_generator():
    """``samples/make_sample_images.py``, loaded as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("make_sample_images", SAMPLES.parent / "make_sample_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_samples_are_present_small_and_decode():
    names = sorted(p.name for p in SAMPLES.iterdir())
    assert names == sorted(EXPECTED_SAMPLES)
    assert sum(p.stat().st_size for p in SAMPLES.iterdir()) < 400_000
    for name, size in EXPECTED_SAMPLES.items():
        image = decode_image((SAMPLES / name).read_bytes(), source=name)
        assert image.mode == "RGB" and image.size == size, name


def test_sample_modes_cover_the_tricky_cases():
    with Image.open(SAMPLES / "exif_rotated_192x543.jpg") as raw:
        assert raw.size == (543, 192) and raw.getexif().get(ORIENTATION) == 6
    with Image.open(SAMPLES / "palette_366x384.gif") as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    with Image.open(SAMPLES / "rgba_189x576.png") as raw:
        assert raw.mode == "RGBA"
    with Image.open(SAMPLES / "grayscale_372x186.png") as raw:
        assert raw.mode == "L"
    # the transparent background composites to white
    assert decode_image((SAMPLES / "rgba_189x576.png").read_bytes()).getpixel((0, 0)) == WHITE
    assert decode_image((SAMPLES / "palette_366x384.gif").read_bytes()).getpixel((0, 0)) == WHITE


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_samples_are_held_out_scenes_on_every_grid_decoded_upright():
    from pipeline.testbed.scenes import GRIDS, make_scene

    generator = sample_generator()
    samples = generator.pick_samples()
    assert sorted(s.name for s in samples) == sorted(EXPECTED_SAMPLES)
    assert {s.grid for s in samples} == set(GRIDS)
    # no sample scene is in the evaluation set (seed 0, 48 scenes)
    content = lambda scene: (scene.size, scene.shapes, scene.glyph)
    assert not {content(s.scene) for s in samples} & {content(make_scene("heldout", 0, i)) for i in range(48)}
    for sample in samples:
        decoded = decode_image((SAMPLES / sample.name).read_bytes(), source=sample.name)
        assert generator.grid_of((decoded.height, decoded.width)) == sample.grid, sample.name
        expected = generator.enlarged(sample.scene)
        if sample.name.startswith("grayscale"):
            expected = expected.convert("L")
        elif sample.name.startswith(("palette", "rgba")):  # the background was the transparent part
            pixels = np.asarray(expected).copy()
            pixels[np.all(pixels == sample.scene.background, axis=-1)] = WHITE
            expected = Image.fromarray(pixels)
        error = np.abs(_pixels(decoded) - _pixels(expected))
        if sample.name.endswith((".png", ".gif")):
            assert error.max() == 0, sample.name
        else:
            # lossy encoders stay within a few levels on average; the scene turned or flipped the
            # wrong way is 20 or more off
            assert error.mean() < 4, (sample.name, error.mean())


# --------------------------------------------------------------------------- #
# bad input
# --------------------------------------------------------------------------- #


def _truncated(fmt: str) -> bytes:
    data = encode(noisy(), fmt)
    return data[: len(data) // 2]


BAD_INPUTS = {
    "zero-bytes": (b"", DecodeLimits(), "empty"),
    "text": (b"<html><body>404 Not Found</body></html>", DecodeLimits(), "not a recognised image"),
    "truncated-jpeg": (_truncated("JPEG"), DecodeLimits(), "truncated"),
    "truncated-png": (_truncated("PNG"), DecodeLimits(), "truncated"),
    "over-max-bytes": (encode(scene(), "PNG"), DecodeLimits(max_bytes=50), "over the limit"),
    # 10^10 pixels: also over Pillow's own hard limit.
    "png-bomb-100000x100000": (png_with_header_size(100_000, 100_000), DecodeLimits(), "pixels"),
    # 81 Mpx: under Pillow's warning threshold, over our default 64 Mpx.
    "png-9000x9000-default-limit": (png_with_header_size(9000, 9000), DecodeLimits(), "over the limit"),
    "png-over-custom-limit": (png_with_header_size(200, 200), DecodeLimits(max_pixels=10_000), "over the limit"),
    # 100 Mpx: Pillow *warns*; the warning must become an error, not leak.
    "png-pillow-warning": (png_with_header_size(10_000, 10_000), DecodeLimits(max_pixels=10**9), "decompression"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_decode_error_naming_the_source(name):
    data, limits, fragment = BAD_INPUTS[name]
    source = f"s3://bucket/bad/{name}.img"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak as a warning either
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data, source=source, limits=limits)
    message = str(info.value)
    assert source in message
    assert fragment in message.lower()
    assert info.value.source == source and info.value.problem and info.value.hint
    assert isinstance(info.value, ValueError)


def test_pillow_warning_range_is_refused_whatever_the_warning_filters():
    # 10000x10000 is above Image.MAX_IMAGE_PIXELS (Pillow only warns) but under
    # the custom limit; decode_image must refuse it itself, not via warnings.
    data = png_with_header_size(10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageDecodeError, match="MAX_IMAGE_PIXELS"):
            decode_image(data, source="big.png", limits=DecodeLimits(max_pixels=10**9))


def test_non_bytes_input_is_rejected():
    with pytest.raises(ImageDecodeError, match="str"):
        decode_image("photo.jpg", source="row-1")  # type: ignore[arg-type]


def test_bytearray_and_memoryview_accepted():
    data = encode(scene(), "PNG")
    assert decode_image(bytearray(data)).size == (37, 23)
    assert decode_image(memoryview(data)).size == (37, 23)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_global_state_untouched():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    for data, limits, _ in BAD_INPUTS.values():
        with pytest.raises(ImageDecodeError):
            decode_image(data, limits=limits)
    decode_image(encode(scene(), "JPEG"))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)) == before


def test_error_pickles_for_ray():
    error = ImageDecodeError("s3://b/x.jpg", "the data is empty", "check the upload")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ImageDecodeError and str(copy) == str(error)
    assert (copy.source, copy.problem, copy.hint) == (error.source, error.problem, error.hint)


@pytest.mark.parametrize("kwargs", [{"max_pixels": 0}, {"max_bytes": -1}, {"max_pixels": 1.5}, {"max_bytes": True}])
def test_decode_limits_validated(kwargs):
    with pytest.raises(ValueError, match="DecodeLimits"):
        DecodeLimits(**kwargs)


def test_result_is_independent_copy():
    image = decode_image(encode(scene(), "PNG"))
    image.putpixel((0, 0), (1, 2, 3))  # writable, loaded, not tied to a closed file
    assert image.getpixel((0, 0)) == (1, 2, 3)
