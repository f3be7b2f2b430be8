"""Generate the committed sample images in ``samples/images/``: held-out testbed scenes.

Run from anywhere:  python samples/make_sample_images.py

Each image is a scene of the testbed generator's held-out split under seed 1
(``pipeline.testbed.scenes.make_scene("heldout", 1, index)``; the evaluation set in
``samples/eval/`` uses seed 0, so the two share no scene), enlarged 3x with nearest-neighbour
sampling: a "high-resolution photo" of the scene, which the processor scales down again. So the
default model (``hired/testbed-llava-next``) has something it can describe, and the reference
captions this script prints say what it should answer.

Scenes are picked so that the enlarged image lands on the scene's own anyres grid, and the eight
together cover the testbed model's five grids (1x2, 2x1, 2x2, 1x3, 3x1 tiles). They also cover
the formats and pixel modes ``pipeline.data.images`` must handle: JPEG, PNG, WebP, GIF (palette
with a transparent index), RGBA PNG, grayscale, and a JPEG stored rotated with EXIF orientation 6,
so that only ``exif_transpose`` shows the scene upright. In the GIF and the RGBA PNG the scene's
background is the transparent part, so decoding composites it over white.

File names are ``<format or mode>_<W>x<H>.<ext>``, width and height as displayed. Deterministic:
a scene is a pure function of its index, and the bytes depend only on Pillow's encoders.
"""

from __future__ import annotations

import sys
from functools import reduce
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageChops

REPO = Path(__file__).resolve().parents[1]
# this checkout's generator, whichever copy of the project the interpreter has installed
sys.path.insert(0, str(REPO))

from hired_ops.partition import select_grid_resolution  # noqa: E402
from pipeline.testbed.questions import caption  # noqa: E402
from pipeline.testbed.scenes import GRIDS, TILE, Scene, make_scene, render  # noqa: E402

OUT_DIR = REPO / "samples" / "images"
SEED = 1
SCALE = 3
PINPOINTS = [(rows * TILE, cols * TILE) for rows, cols in GRIDS]
# (name prefix, grid as (rows, cols) of tiles), in the order scenes are picked
SPECS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("jpeg", (1, 2)),
    ("png", (2, 1)),
    ("webp", (1, 3)),
    ("jpeg", (2, 2)),
    ("grayscale", (1, 2)),
    ("palette", (2, 2)),
    ("rgba", (3, 1)),
    ("exif_rotated", (3, 1)),
)
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "grayscale": "png", "palette": "gif", "rgba": "png", "exif_rotated": "jpg"}
# EXIF tag id of Orientation; value 6 = "rotate 90° clockwise to display".
ORIENTATION_TAG = 0x0112


class Sample(NamedTuple):
    """One sample image: its file name, the scene's index in the split, the scene and its grid."""

    name: str
    index: int
    scene: Scene
    grid: tuple[int, int]


def grid_of(size: tuple[int, int]) -> tuple[int, int]:
    """``(rows, cols)`` of tiles the testbed processor gives an image of ``size`` (height, width)."""
    height, width = select_grid_resolution(size, PINPOINTS)
    return height // TILE, width // TILE


def enlarged(scene: Scene) -> Image.Image:
    """The scene rendered and enlarged ``SCALE`` times (nearest neighbour: the same flat colours)."""
    image = render(scene)
    return image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)


def pick_samples() -> list[Sample]:
    """One scene per entry of ``SPECS``: the first unused index whose enlarged image keeps the
    scene's own grid. Exact 1:2 and 2:1 scenes are rare (about 1 in 150), hence the long scan."""
    used: set[int] = set()
    samples = []
    for prefix, grid in SPECS:
        index = 0
        while True:
            scene = make_scene("heldout", SEED, index)
            height, width = scene.size
            if index not in used and grid_of(scene.size) == grid_of((height * SCALE, width * SCALE)) == grid:
                break
            index += 1
        used.add(index)
        name = f"{prefix}_{width * SCALE}x{height * SCALE}.{EXTENSIONS[prefix]}"
        samples.append(Sample(name, index, scene, grid))
    return samples


def _transparent_background(image: Image.Image, scene: Scene) -> Image.Image:
    """RGBA: the scene's background fully transparent, everything drawn on it opaque."""
    background = Image.new("RGB", image.size, scene.background)
    # the largest channel difference, so that no colour near the background's is lost
    difference = reduce(ImageChops.lighter, ImageChops.difference(image, background).split())
    rgba = image.convert("RGBA")
    rgba.putalpha(difference.point(lambda value: 255 if value else 0))
    return rgba


def save(sample: Sample, out_dir: Path) -> Path:
    """Write one sample in its format and mode; returns its path."""
    path = out_dir / sample.name
    image = enlarged(sample.scene)
    prefix = sample.name.rsplit("_", 1)[0]
    if prefix == "jpeg":
        image.save(path, quality=90, optimize=True)
    elif prefix == "png":
        image.save(path, optimize=True)
    elif prefix == "webp":
        image.save(path, quality=80, method=6)
    elif prefix == "grayscale":
        image.convert("L").save(path, optimize=True)
    elif prefix == "palette":
        # an exact palette, background first so that index 0 is the transparent one
        colors = [sample.scene.background] + sorted(c for _, c in image.getcolors() if c != sample.scene.background)
        palette = Image.new("P", (1, 1))
        palette.putpalette([v for color in colors for v in color])
        image.quantize(palette=palette, dither=Image.Dither.NONE).save(path, transparency=0)
    elif prefix == "rgba":
        _transparent_background(image, sample.scene).save(path, optimize=True)
    elif prefix == "exif_rotated":
        # The camera stored the sensor rows sideways; orientation 6 tells viewers to rotate 90°
        # clockwise, so store the scene rotated 90° counter-clockwise.
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(path, quality=90, optimize=True, exif=exif.tobytes())
    else:
        raise ValueError(f"no encoder for {sample.name}")
    return path


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    print("| file | grid | scene | reference caption |")
    print("|---|---|---|---|")
    for sample in pick_samples():
        save(sample, OUT_DIR)
        rows, cols = sample.grid
        print(f"| `{sample.name}` | {rows}x{cols} | {sample.index} | {caption(sample.scene)} |")
    total = sum(path.stat().st_size for path in OUT_DIR.iterdir())
    print(f"\n{total} bytes in {OUT_DIR.relative_to(REPO)}")


if __name__ == "__main__":
    main()
