"""Synthetic high-resolution scenes: small coloured shapes and one glyph on a plain background.

A scene is plain data (:class:`Scene`) drawn with PIL by :func:`render`. Every scene is a pure
function of ``(split, seed, index)`` (:func:`make_scene`), so the train and held-out splits are
reproducible and disjoint by construction (they draw from different seed strings).

Sizes are chosen so that each image maps to one of the testbed model's anyres grids (1x2, 2x1,
2x2, 1x3, 3x1 tiles of 64 px) and objects are ~16-22 canvas pixels (the images are 0.85-1x their
canvas), two to three 8 px patches across in a sub-image tile. On the squashed 64 px full image
they shrink to 5-11 px, about one patch: their shape and the glyph's identity are resolved by the
sub-image tiles, while colour blobs stay visible at the base resolution.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageDraw, ImageFont

# Non-uniform frequencies, so that POPE's "popular" negatives (frequent objects absent from the
# scene) differ from its "random" ones.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
}
COLOR_WEIGHTS = (0.24, 0.2, 0.2, 0.14, 0.11, 0.11)
SHAPES = ("circle", "square", "triangle", "cross")
SHAPE_WEIGHTS = (0.34, 0.28, 0.22, 0.16)
GLYPHS = ("A", "E", "H", "K", "R", "2", "3", "5", "7", "9")
# Canvas (height, width) of each anyres grid of the testbed model, in tiles of TILE pixels.
TILE = 64
GRIDS: tuple[tuple[int, int], ...] = ((1, 2), (2, 1), (2, 2), (1, 3), (3, 1))
MAX_SHAPES = 5


@dataclass(frozen=True)
class Thing:
    """One drawn object. ``x``, ``y``: centre in image pixels; ``size``: bounding-box side."""

    kind: str  # a shape name, or "glyph"
    color: str  # a COLORS key; glyphs are drawn in "black"
    x: float
    y: float
    size: float
    char: str = ""  # the glyph's character

    @property
    def label(self) -> str:
        """``"red circle"`` or ``"character 7"``."""
        return f"character {self.char}" if self.kind == "glyph" else f"{self.color} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """An image's content. ``size`` is ``(height, width)``; ``shapes`` exclude the glyph."""

    size: tuple[int, int]
    background: tuple[int, int, int]
    shapes: tuple[Thing, ...]
    glyph: Thing
    key: str  # "split:seed:index", unique per scene

    @property
    def things(self) -> tuple[Thing, ...]:
        return (*self.shapes, self.glyph)

    def count(self, shape: str) -> int:
        return sum(thing.kind == shape for thing in self.shapes)

    def has(self, color: str, shape: str) -> bool:
        return any(t.kind == shape and t.color == color for t in self.shapes)


def scene_rng(split: str, seed: int, index: int) -> random.Random:
    """The random stream of one scene (string seeds hash with SHA-512: stable across runs)."""
    return random.Random(f"{split}:{seed}:{index}")


def _image_size(rng: random.Random) -> tuple[tuple[int, int], float]:
    """``((height, width), scale)``: a grid's canvas scaled by ``scale``, aspect jittered.

    Never larger than the canvas: the processor picks the canvas of highest effective
    resolution, so a larger image would always land on the biggest grids, never on 1x2 or 2x1.
    """
    rows, cols = rng.choice(GRIDS)
    scale = rng.uniform(0.85, 1.0)
    # a little aspect jitter so unpadding (letterbox removal) is exercised too
    jitter = rng.uniform(0.94, 1.06)
    height = min(round(rows * TILE * scale * jitter), rows * TILE)
    width = min(round(cols * TILE * scale / jitter), cols * TILE)
    return (height, width), scale


def _place(rng: random.Random, size: tuple[int, int], side: float, taken: list[Thing]) -> tuple[float, float] | None:
    height, width = size
    margin = side * 0.6 + 2
    for _ in range(50):
        x, y = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        if all(math.hypot(x - t.x, y - t.y) > (side + t.size) * 0.75 + 3 for t in taken):
            return x, y
    return None


def make_scene(split: str, seed: int, index: int) -> Scene:
    """The scene ``index`` of ``split`` ("train" or "heldout") under ``seed``."""
    rng = scene_rng(split, seed, index)
    # object sizes scale with the image so they are ~16-22 px once resized onto the canvas
    size, scale = _image_size(rng)
    background = tuple(rng.randint(215, 250) for _ in range(3))
    things: list[Thing] = []
    glyph_side = rng.uniform(18, 22) * scale
    x, y = _place(rng, size, glyph_side, things)  # an empty canvas always has room
    glyph = Thing("glyph", "black", x, y, glyph_side, rng.choice(GLYPHS))
    things.append(glyph)
    for _ in range(rng.randint(2, MAX_SHAPES)):
        side = rng.uniform(16, 20) * scale
        spot = _place(rng, size, side, things)
        if spot is None:
            continue
        kind = rng.choices(SHAPES, SHAPE_WEIGHTS)[0]
        color = rng.choices(tuple(COLORS), COLOR_WEIGHTS)[0]
        things.append(Thing(kind, color, spot[0], spot[1], side))
    return Scene(size, background, tuple(things[1:]), glyph, f"{split}:{seed}:{index}")


@cache
def _glyph_mask(char: str) -> Image.Image:
    """The character's ink in PIL's built-in bitmap font, cropped to its bounding box (mode L)."""
    font = ImageFont.load_default_imagefont()
    cell = Image.new("L", (8, 12), 0)
    ImageDraw.Draw(cell).text((0, 0), char, fill=255, font=font)
    return cell.crop(cell.getbbox())


def _draw_shape(draw: ImageDraw.ImageDraw, thing: Thing, fill) -> None:
    r = thing.size / 2
    x, y = thing.x, thing.y
    if thing.kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif thing.kind == "square":
        s = r * 0.85  # same visual mass as the circle
        draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    elif thing.kind == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill)
    elif thing.kind == "cross":
        w = r * 0.36
        draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
        draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {thing.kind!r}")


def _paint(scene: Scene, mode: str, background, fill_of) -> Image.Image:
    """The scene's objects drawn onto a ``mode`` image, each with ``fill_of(index, thing)``
    (index into :attr:`Scene.things`)."""
    height, width = scene.size
    image = Image.new(mode, (width, height), background)
    draw = ImageDraw.Draw(image)
    for index, thing in enumerate(scene.shapes):
        _draw_shape(draw, thing, fill_of(index, thing))
    glyph = scene.glyph
    mask = _glyph_mask(glyph.char)
    target_h = max(round(glyph.size), 4)
    target_w = max(round(target_h * mask.width / mask.height), 2)
    mask = mask.resize((target_w, target_h), Image.NEAREST)
    image.paste(fill_of(len(scene.shapes), glyph), (int(glyph.x - target_w / 2), int(glyph.y - target_h / 2)), mask)
    return image


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of ``scene.size``."""
    return _paint(scene, "RGB", scene.background, lambda _, thing: (0, 0, 0) if thing.kind == "glyph" else COLORS[thing.color])


def label_map(scene: Scene) -> Image.Image:
    """Which object each pixel of :func:`render` shows: a mode-L image of ``scene.size``, 0 for
    the background and ``i + 1`` for ``scene.things[i]`` (shapes in order, the glyph last)."""
    return _paint(scene, "L", 0, lambda index, _: index + 1)
