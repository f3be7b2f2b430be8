"""Generate the small committed sample images in ``samples/images/``.

Run from anywhere:  python samples/make_sample_images.py

The images are synthetic but recognisable scenes (sky, sun, mountains, a house,
a street, shapes, text) so a captioning model has something to describe, and
they deliberately cover the formats and pixel modes ``pipeline.data.images`` must
handle: JPEG/PNG/WebP/GIF, landscape/portrait/panorama/square, grayscale,
palette with transparency, RGBA, and an EXIF-rotated JPEG (orientation 6).

Deterministic: all randomness comes from one seeded ``random.Random``, and the
output depends only on the Pillow version (its encoders and built-in font).
Pillow only; no numpy.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT_DIR = Path(__file__).resolve().parent / "images"
SEED = 20240601

# EXIF tag id of Orientation; value 6 = "rotate 90° clockwise to display".
_ORIENTATION_TAG = 0x0112


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` (no system fonts, so output is portable)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _vertical_gradient(
    size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int], bands: int = 0
) -> Image.Image:
    """A top-to-bottom colour gradient; ``bands`` > 0 quantises it (PNG compresses bands well)."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / max(1, height - 1)
        if bands:
            t = round(t * bands) / bands
        color = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom))
        draw.line([(0, y), (width, y)], fill=color)
    return image


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int, fill="white") -> None:
    draw.text(xy, text, font=_font(size), fill=fill, stroke_width=max(1, size // 12), stroke_fill="black")


def landscape(rng: random.Random) -> Image.Image:
    """640x480: sky, sun, mountains, lake, a house with a red roof."""
    image = _vertical_gradient((640, 480), (90, 150, 230), (200, 225, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse([480, 50, 560, 130], fill=(255, 220, 60))
    for i in range(4):
        x = 80 + i * 160 + rng.randint(-30, 30)
        peak = rng.randint(150, 230)
        shade = 90 + i * 15
        draw.polygon([(x - 190, 330), (x, peak), (x + 190, 330)], fill=(shade, shade + 20, shade))
        draw.polygon([(x - 30, peak + 35), (x, peak), (x + 30, peak + 35)], fill=(245, 245, 250))
    draw.rectangle([0, 330, 640, 480], fill=(60, 140, 70))
    draw.ellipse([300, 380, 620, 460], fill=(70, 120, 200))
    draw.rectangle([90, 300, 210, 390], fill=(230, 210, 170))
    draw.polygon([(80, 300), (150, 250), (220, 300)], fill=(190, 40, 40))
    draw.rectangle([135, 340, 165, 390], fill=(110, 70, 40))
    _label(draw, (20, 20), "LANDSCAPE", 32)
    return image


def portrait(rng: random.Random) -> Image.Image:
    """480x720: a lighthouse on rocks at dusk (flat colours keep the PNG small)."""
    image = _vertical_gradient((480, 720), (40, 30, 90), (250, 150, 90), bands=12)
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        x, y = rng.randint(0, 479), rng.randint(0, 250)
        draw.ellipse([x, y, x + 3, y + 3], fill=(255, 255, 230))
    draw.rectangle([0, 560, 480, 720], fill=(30, 60, 110))
    draw.polygon([(60, 600), (160, 500), (330, 520), (420, 610)], fill=(70, 60, 55))
    # tower: white with red stripes, lamp room on top
    draw.polygon([(200, 520), (215, 260), (265, 260), (280, 520)], fill=(240, 240, 240))
    for y in (300, 380, 460):
        draw.rectangle([200, y, 280, y + 30], fill=(200, 30, 40))
    draw.rectangle([208, 225, 272, 260], fill=(255, 230, 120))
    draw.polygon([(200, 225), (240, 190), (280, 225)], fill=(40, 40, 40))
    draw.polygon([(272, 240), (480, 200), (480, 280)], fill=(255, 240, 170))
    _label(draw, (20, 660), "PORTRAIT", 32)
    return image


def panorama(rng: random.Random) -> Image.Image:
    """1024x256: a city skyline at night with lit windows."""
    image = _vertical_gradient((1024, 256), (10, 15, 50), (60, 40, 110))
    draw = ImageDraw.Draw(image)
    draw.ellipse([880, 25, 930, 75], fill=(240, 240, 210))
    x = 0
    while x < 1024:
        width = rng.randint(40, 90)
        top = rng.randint(70, 190)
        draw.rectangle([x, top, x + width - 4, 256], fill=(25, 25, 35))
        for wy in range(top + 8, 246, 14):
            for wx in range(x + 6, x + width - 12, 12):
                if rng.random() < 0.45:
                    draw.rectangle([wx, wy, wx + 5, wy + 7], fill=(255, 210, 90))
        x += width
    _label(draw, (20, 16), "PANORAMA", 28)
    return image


def square(rng: random.Random) -> Image.Image:
    """336x336: coloured geometric shapes on a light background (classic VQA-style)."""
    image = Image.new("RGB", (336, 336), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    draw.ellipse([30, 30, 150, 150], fill=(220, 40, 40))  # red circle
    draw.rectangle([190, 40, 300, 150], fill=(40, 90, 220))  # blue square
    draw.polygon([(90, 190), (30, 300), (150, 300)], fill=(40, 170, 60))  # green triangle
    draw.regular_polygon((245, 245, 60), 5, fill=(250, 200, 30))  # yellow pentagon
    for _ in range(12):
        x, y = rng.randint(0, 330), rng.randint(0, 330)
        draw.ellipse([x, y, x + 6, y + 6], fill=(120, 120, 120))
    _label(draw, (110, 160), "SHAPES", 24)
    return image


def grayscale(rng: random.Random) -> Image.Image:
    """320x240 mode L: a checkerboard floor with a ball and its shadow."""
    image = Image.new("L", (320, 240), 200)
    draw = ImageDraw.Draw(image)
    for row in range(6):
        for col in range(10):
            shade = 60 if (row + col) % 2 else 230
            draw.rectangle([col * 32, 120 + row * 20, col * 32 + 31, 120 + row * 20 + 19], fill=shade)
    draw.ellipse([130, 185, 210, 205], fill=30)
    cx = 170 + rng.randint(-5, 5)
    for r in range(40, 0, -4):  # crude shading: concentric discs getting lighter
        draw.ellipse([cx - r, 140 - r, cx + r, 140 + r], fill=90 + (40 - r) * 4)
    _label(draw, (10, 10), "GRAYSCALE", 24, fill=255)
    return image


def palette_gif(rng: random.Random) -> Image.Image:
    """256x256 mode P with a transparent index: a flower sticker on a transparent background."""
    image = Image.new("P", (256, 256), 0)
    palette = [255, 255, 255,  # 0: background (transparent)
               250, 90, 150,   # 1: petals
               250, 210, 40,   # 2: centre
               40, 150, 50,    # 3: stem/leaves
               20, 20, 20]     # 4: outline/text
    image.putpalette(palette + [0, 0, 0] * (256 - len(palette) // 3))
    draw = ImageDraw.Draw(image)
    draw.rectangle([122, 128, 134, 250], fill=3)
    draw.ellipse([60, 170, 125, 200], fill=3)
    draw.ellipse([131, 190, 196, 220], fill=3)
    petals = 6 + rng.randint(0, 2)
    for i in range(petals):
        draw.regular_polygon((128, 90, 60), 3, rotation=i * 360 / petals, fill=1)
    draw.ellipse([98, 60, 158, 120], fill=2, outline=4, width=2)
    draw.text((8, 8), "GIF", font=_font(20), fill=4)
    image.info["transparency"] = 0
    return image


def rgba_png(rng: random.Random) -> Image.Image:
    """300x200 RGBA: a semi-transparent speech bubble and a fully transparent corner."""
    image = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([20, 20, 280, 140], radius=30, fill=(30, 120, 220, 255))
    draw.polygon([(70, 140), (60, 190), (120, 140)], fill=(30, 120, 220, 255))
    draw.ellipse([200, 110, 290, 195], fill=(240, 60, 60, 128))  # half-transparent
    draw.text((50, 60), "Hello, RGBA!", font=_font(30), fill=(255, 255, 255, 255))
    # top-left pixel stays (0, 0, 0, 0): decoders must composite it to white.
    _ = rng
    return image


def exif_rotated(rng: random.Random) -> Image.Image:
    """320x480 upright portrait scene (a tree, red bar on top), stored rotated with orientation 6."""
    upright = _vertical_gradient((320, 480), (150, 200, 255), (230, 245, 255), bands=8)
    draw = ImageDraw.Draw(upright)
    draw.rectangle([0, 0, 320, 24], fill=(220, 0, 0))  # marks the true top
    draw.rectangle([0, 400, 320, 480], fill=(90, 160, 70))
    draw.rectangle([145, 250, 175, 410], fill=(110, 70, 40))
    for _ in range(6):
        dx, dy = rng.randint(-50, 50), rng.randint(-40, 40)
        draw.ellipse([100 + dx, 150 + dy, 220 + dx, 270 + dy], fill=(40, 130, 50))
    _label(draw, (90, 40), "UPRIGHT", 28)
    # The camera stored the sensor rows sideways; orientation 6 tells viewers to
    # rotate 90° clockwise, so store the scene rotated 90° counter-clockwise.
    return upright.transpose(Image.Transpose.ROTATE_90)


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)

    def out(name: str) -> str:
        return str(OUT_DIR / name)

    landscape(rng).save(out("landscape_640x480.jpg"), quality=85, optimize=True)
    portrait(rng).save(out("portrait_480x720.png"), optimize=True)
    panorama(rng).save(out("panorama_1024x256.webp"), quality=80, method=6)
    square(rng).save(out("square_336x336.jpg"), quality=90, optimize=True)
    grayscale(rng).save(out("grayscale_320x240.png"), optimize=True)
    gif = palette_gif(rng)
    gif.save(out("palette_256x256.gif"), transparency=0)
    rgba_png(rng).save(out("rgba_300x200.png"), optimize=True)

    rotated = exif_rotated(rng)  # stored 480x320, displayed 320x480
    exif = Image.Exif()
    exif[_ORIENTATION_TAG] = 6
    rotated.save(out("exif_rotated_320x480.jpg"), quality=85, optimize=True, exif=exif.tobytes())

    total = 0
    for path in sorted(OUT_DIR.iterdir()):
        size = path.stat().st_size
        total += size
        print(f"{path.name:32s} {size:8d} bytes")
    print(f"{'total':32s} {total:8d} bytes")


if __name__ == "__main__":
    main()
