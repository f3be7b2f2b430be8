"""Synthetic high-resolution scenes: small coloured shapes and one glyph, at two densities.

A scene is plain data (:class:`Scene`) drawn with PIL by :func:`render`. Every scene is a pure
function of ``(split, seed, index, density)`` (:func:`make_scene`), so the train and held-out splits
are reproducible and disjoint by construction (they draw from different seed strings).

Two densities (:data:`DENSITIES`): ``standard`` scenes hold 2-5 shapes on a plain background;
``dense`` scenes hold 6-9 smaller shapes on a striped background with grey clutter marks (which
name nothing), and the glyph sits next to a shape. Most questions about a standard scene need
very little of the image; a dense one needs most of its tiles, so it ranks dropping methods.

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
# no shape kind occurs more often than the largest count a question asks about
MAX_OF_A_KIND = 5


@dataclass(frozen=True)
class Density:
    """How full a scene is. Sizes are canvas pixels (scaled with the image).

    Attributes:
        name: ``standard`` or ``dense``.
        shapes: (min, max) shapes drawn (fewer when no room is left).
        shape_side: (min, max) side of a shape.
        glyph_side: (min, max) height of the glyph.
        clutter: (min, max) grey marks that are none of the named objects.
        striped: a striped background instead of a plain one.
        glyph_near: the glyph is placed next to a shape rather than anywhere.
    """

    name: str
    shapes: tuple[int, int]
    shape_side: tuple[float, float]
    glyph_side: tuple[float, float]
    clutter: tuple[int, int] = (0, 0)
    striped: bool = False
    glyph_near: bool = False


DENSITIES = {
    "standard": Density("standard", (2, MAX_SHAPES), (16, 20), (18, 22)),
    "dense": Density("dense", (6, 9), (11, 14), (13, 16), clutter=(3, 6), striped=True, glyph_near=True),
}


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
    key: str  # "split:seed:index" (standard) or "dense:split:seed:index", unique per scene
    # grey marks and background stripes: (x0, y0, x1, y1, width, grey level) lines, drawn first
    marks: tuple[tuple[float, float, float, float, int, int], ...] = ()

    @property
    def things(self) -> tuple[Thing, ...]:
        return (*self.shapes, self.glyph)

    def count(self, shape: str) -> int:
        return sum(thing.kind == shape for thing in self.shapes)

    def has(self, color: str, shape: str) -> bool:
        return any(t.kind == shape and t.color == color for t in self.shapes)


def scene_key(split: str, seed: int, index: int, density: str = "standard") -> str:
    """The scene's unique key; standard scenes keep the key they always had."""
    return f"{split}:{seed}:{index}" if density == "standard" else f"{density}:{split}:{seed}:{index}"


def scene_rng(key: str) -> random.Random:
    """The random stream of one scene (string seeds hash with SHA-512: stable across runs)."""
    return random.Random(key)


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


def _near(rng: random.Random, size: tuple[int, int], side: float, taken: list[Thing]) -> tuple[float, float] | None:
    """A free spot just beside one of the ``taken`` objects (touching distance plus 1-4 px)."""
    height, width = size
    margin = side * 0.6 + 2
    for _ in range(50):
        anchor = rng.choice(taken)
        angle = rng.uniform(0, 2 * math.pi)
        gap = (side + anchor.size) * 0.75 + 3 + rng.uniform(1, 4)
        x, y = anchor.x + gap * math.cos(angle), anchor.y + gap * math.sin(angle)
        if margin <= x <= width - margin and margin <= y <= height - margin and all(
            math.hypot(x - t.x, y - t.y) > (side + t.size) * 0.75 + 3 for t in taken
        ):
            return x, y
    return None


def _marks(rng: random.Random, size: tuple[int, int], density: Density, background) -> list[tuple]:
    """Background stripes (a shade darker than the background) and grey clutter strokes."""
    height, width = size
    marks = []
    if density.striped:
        shade = max(background) - rng.randint(14, 24)
        period, slope = rng.uniform(5, 9), rng.choice((-1, 1))
        for offset in range(-height, width + height, max(1, round(period))):
            marks.append((offset, 0, offset + slope * height, height, 1, shade))
    for _ in range(rng.randint(*density.clutter)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        length, angle = rng.uniform(4, 10), rng.uniform(0, math.pi)
        marks.append((x, y, x + length * math.cos(angle), y + length * math.sin(angle), rng.randint(1, 2), rng.randint(90, 160)))
    return marks


def make_scene(split: str, seed: int, index: int, density: str = "standard") -> Scene:
    """The scene ``index`` of ``split`` ("train" or "heldout") under ``seed``, at ``density``."""
    profile = DENSITIES[density]
    key = scene_key(split, seed, index, density)
    rng = scene_rng(key)
    # object sizes scale with the image so they keep their canvas size once resized onto it
    size, scale = _image_size(rng)
    background = tuple(rng.randint(215, 250) for _ in range(3))
    shapes: list[Thing] = []
    glyph_side = rng.uniform(*profile.glyph_side) * scale
    glyph = None
    if not profile.glyph_near:
        x, y = _place(rng, size, glyph_side, [])  # an empty canvas always has room
        glyph = Thing("glyph", "black", x, y, glyph_side, rng.choice(GLYPHS))
    for _ in range(rng.randint(*profile.shapes)):
        side = rng.uniform(*profile.shape_side) * scale
        spot = _place(rng, size, side, shapes + ([glyph] if glyph else []))
        if spot is None:
            continue
        kind = rng.choices(SHAPES, SHAPE_WEIGHTS)[0]
        while sum(t.kind == kind for t in shapes) >= MAX_OF_A_KIND:
            kind = rng.choices(SHAPES, SHAPE_WEIGHTS)[0]
        color = rng.choices(tuple(COLORS), COLOR_WEIGHTS)[0]
        shapes.append(Thing(kind, color, spot[0], spot[1], side))
    if glyph is None:
        spot = _near(rng, size, glyph_side, shapes) or _place(rng, size, glyph_side, shapes)
        if spot is None:  # no room left: the last shape gives way to the glyph
            last = shapes.pop()
            spot = (last.x, last.y)
        glyph = Thing("glyph", "black", spot[0], spot[1], glyph_side, rng.choice(GLYPHS))
    marks = tuple(_marks(rng, size, profile, background))
    return Scene(size, background, tuple(shapes), glyph, key, marks)


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
    if mode == "RGB":  # stripes and clutter show nothing: they stay background in the label map
        for x0, y0, x1, y1, line, grey in scene.marks:
            draw.line((x0, y0, x1, y1), fill=(grey, grey, grey), width=line)
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
