"""Generate the small labelled evaluation set in this folder (images + VQA/MCQ/POPE manifests).

Deterministic: shapes are placed with a fixed seed and every label is written here by hand, so
re-running reproduces the manifests exactly (image bytes may differ across Pillow/FreeType
versions; the scenes and labels do not). Needs only Pillow >= 10.1 (``load_default(size=...)``).

    python samples/eval/make_eval_set.py            # writes next to this file
    python samples/eval/make_eval_set.py --out DIR  # writes elsewhere
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SEED = 20240611

Color = tuple[int, int, int]

RED: Color = (220, 30, 30)
GREEN: Color = (40, 160, 60)
BLUE: Color = (40, 80, 210)
YELLOW: Color = (245, 210, 40)
PURPLE: Color = (130, 50, 170)
ORANGE: Color = (245, 140, 20)
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
LIGHT_BLUE: Color = (170, 205, 240)
LIGHT_GREY: Color = (225, 225, 225)
PALE_YELLOW: Color = (250, 240, 190)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill: Color) -> None:
    """Draw a shape of "radius" ``r`` centred on (cx, cy)."""
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=fill)
    elif kind == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.42
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def shapes_scene(
    rng: random.Random,
    size: tuple[int, int],
    background: Color,
    shapes: list[tuple[str, Color]],
) -> Image.Image:
    """Shapes in separate cells of a grid, jittered, so they never overlap and stay countable."""
    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    n = len(shapes)
    # The grid follows the aspect ratio so wide images get a row and tall ones a column.
    cols = max(1, min(n, round(math.sqrt(n * width / height))))
    rows = math.ceil(n / cols)
    cell_w, cell_h = width / cols, height / rows
    cells = [(c, r) for r in range(rows) for c in range(cols)]
    rng.shuffle(cells)
    for (kind, color), (col, row) in zip(shapes, cells):
        r = min(cell_w, cell_h) * rng.uniform(0.25, 0.35)
        slack_x, slack_y = cell_w / 2 - r * 1.1, cell_h / 2 - r * 1.1
        cx = (col + 0.5) * cell_w + rng.uniform(-slack_x, slack_x)
        cy = (row + 0.5) * cell_h + rng.uniform(-slack_y, slack_y)
        draw_shape(draw, kind, cx, cy, r, color)
    return image


def word_scene(size: tuple[int, int], word: str, background: Color, ink: Color) -> Image.Image:
    """One large word, centred, in Pillow's built-in scalable font."""
    width, height = size
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font_size = int(min(height * 0.4, width * 1.4 / max(1, len(word))))
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    draw.text(((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top), word, font=font, fill=ink)
    return image


def bar_chart(
    size: tuple[int, int],
    labels: list[str],
    values: list[int],
    colors: list[Color],
    horizontal: bool = False,
) -> Image.Image:
    """A plain bar chart with axis, category labels and the value printed on each bar."""
    width, height = size
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(14, min(width, height) // 18))
    margin = min(width, height) * 0.14
    top_value = max(values) * 1.15
    n = len(values)
    if not horizontal:
        x0, y0, x1, y1 = margin, margin * 0.6, width - margin * 0.5, height - margin
        draw.line([(x0, y0), (x0, y1), (x1, y1)], fill=BLACK, width=3)
        slot = (x1 - x0) / n
        for i, (label, value, color) in enumerate(zip(labels, values, colors)):
            left, right = x0 + slot * (i + 0.2), x0 + slot * (i + 0.8)
            top = y1 - (y1 - y0) * value / top_value
            draw.rectangle([left, top, right, y1 - 2], fill=color)
            mid = (left + right) / 2
            draw.text((mid, y1 + 8), label, font=font, fill=BLACK, anchor="mt")
            draw.text((mid, top - 6), str(value), font=font, fill=BLACK, anchor="mb")
    else:
        x0, y0, x1, y1 = margin * 1.6, margin * 0.5, width - margin, height - margin * 0.5
        draw.line([(x0, y0), (x0, y1)], fill=BLACK, width=3)
        slot = (y1 - y0) / n
        for i, (label, value, color) in enumerate(zip(labels, values, colors)):
            top, bottom = y0 + slot * (i + 0.25), y0 + slot * (i + 0.75)
            right = x0 + (x1 - x0) * value / top_value
            draw.rectangle([x0 + 2, top, right, bottom], fill=color)
            mid = (top + bottom) / 2
            draw.text((x0 - 10, mid), label, font=font, fill=BLACK, anchor="rm")
            draw.text((right + 8, mid), str(value), font=font, fill=BLACK, anchor="lm")
    return image


# --------------------------------------------------------------------------------------------
# The set: every scene with its hand-written labels
# --------------------------------------------------------------------------------------------


@dataclass
class Scene:
    name: str
    ext: str  # "png" or "jpg": both decoders get exercised
    draw: Callable[[random.Random], Image.Image]
    vqa: tuple[str, list[str]] | None = None  # question, 10 human answers
    mcq: list[tuple[str, list[str], str]] = field(default_factory=list)  # question, choices, letter
    pope: list[tuple[str, str]] = field(default_factory=list)  # question, "yes"/"no"

    @property
    def image_path(self) -> str:
        return f"images/{self.name}.{self.ext}"


def _answers(*counts: tuple[str, int]) -> list[str]:
    out = [answer for answer, n in counts for _ in range(n)]
    assert len(out) == 10, f"VQA rows carry 10 human answers, got {len(out)}"
    return out


SCENES: list[Scene] = [
    Scene(
        "red_circle",
        "png",
        lambda rng: shapes_scene(rng, (640, 480), LIGHT_BLUE, [("circle", RED)]),
        vqa=("What color is the circle?", _answers(("red", 8), ("Red", 1), ("orange", 1))),
        mcq=[("What shape is in the image?", ["square", "circle", "triangle", "star"], "B")],
        pope=[("Is there a circle in the image?", "yes"), ("Is there a triangle in the image?", "no")],
    ),
    Scene(
        "three_squares",
        "png",
        lambda rng: shapes_scene(rng, (480, 800), WHITE, [("square", GREEN)] * 3),
        vqa=("How many squares are there?", _answers(("3", 7), ("three", 2), ("4", 1))),
        mcq=[("How many squares are in the image?", ["1", "2", "4", "3"], "D")],
        pope=[("Is there a square in the image?", "yes"), ("Is there a star in the image?", "no")],
    ),
    Scene(
        "word_hello",
        "png",
        lambda rng: word_scene((1000, 400), "HELLO", PALE_YELLOW, BLACK),
        vqa=("What word is written in the image?", _answers(("hello", 8), ("HELLO", 1), ("hello.", 1))),
        mcq=[("Which word is shown in the image?", ["HELP", "HELLO", "YELLOW", "HOTEL"], "B")],
    ),
    Scene(
        "yellow_triangle",
        "png",
        lambda rng: shapes_scene(rng, (336, 336), BLACK, [("triangle", YELLOW)]),
        vqa=("What shape is shown?", _answers(("triangle", 9), ("pyramid", 1))),
        mcq=[("What color is the triangle?", ["red", "blue", "yellow", "green"], "C")],
        pope=[("Is there a triangle in the image?", "yes")],
    ),
    Scene(
        "bar_chart",
        "png",
        lambda rng: bar_chart((900, 900), ["cat", "dog", "fox", "owl"], [3, 7, 5, 2], [BLUE, ORANGE, GREEN, PURPLE]),
        vqa=("Which label has the tallest bar?", _answers(("dog", 8), ("dogs", 1), ("fox", 1))),
        mcq=[("How many bars are in the chart?", ["4", "3", "5", "6"], "A")],
    ),
    Scene(
        "five_circles",
        "jpg",
        lambda rng: shapes_scene(rng, (800, 600), LIGHT_GREY, [("circle", BLUE)] * 5),
        vqa=("How many circles are there?", _answers(("5", 8), ("five", 1), ("6", 1))),
        pope=[("Is there a circle in the image?", "yes"), ("Is there a square in the image?", "no")],
    ),
    Scene(
        "word_stop",
        "png",
        lambda rng: word_scene((512, 768), "STOP", RED, WHITE),
        vqa=("What does the sign say?", _answers(("stop", 9), ("stop sign", 1))),
        mcq=[("What color is the background?", ["green", "red", "blue", "white"], "B")],
    ),
    Scene(
        "mixed_row",
        "png",
        lambda rng: shapes_scene(
            rng, (1200, 300), WHITE, [("square", RED), ("square", RED), ("circle", BLUE), ("triangle", GREEN)]
        ),
        vqa=("How many red squares are there?", _answers(("2", 9), ("two", 1))),
        mcq=[("Which shape is blue?", ["square", "triangle", "circle", "star"], "C")],
        pope=[("Is there a star in the image?", "no"), ("Is there a triangle in the image?", "yes")],
    ),
    Scene(
        "purple_star",
        "jpg",
        lambda rng: shapes_scene(rng, (400, 400), GREEN, [("star", PURPLE)]),
        vqa=("What color is the star?", _answers(("purple", 7), ("violet", 3))),
        mcq=[("What shape is shown?", ["star", "circle", "square", "heart"], "A")],
        pope=[("Is there a star in the image?", "yes"), ("Is there a circle in the image?", "no")],
    ),
    Scene(
        "hbar_chart",
        "png",
        lambda rng: bar_chart(
            (720, 1280), ["north", "south", "east"], [18, 42, 27], [RED, BLUE, GREEN], horizontal=True
        ),
        vqa=("What is the value of the longest bar?", _answers(("42", 10))),
    ),
    Scene(
        "four_triangles",
        "png",
        lambda rng: shapes_scene(rng, (600, 600), WHITE, [("triangle", ORANGE)] * 4),
        vqa=("How many triangles are there?", _answers(("4", 8), ("four", 2))),
        pope=[("Is there a triangle in the image?", "yes"), ("Is there a dog in the image?", "no")],
    ),
    Scene(
        "word_cat",
        "jpg",
        lambda rng: word_scene((1024, 512), "CAT", GREEN, WHITE),
        vqa=("What word is written in the image?", _answers(("cat", 9), ("car", 1))),
        mcq=[("Which word appears in the image?", ["DOG", "COW", "CAT", "CAR"], "C")],
        pope=[("Is there a person in the image?", "no")],
    ),
]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate(out_dir: Path, seed: int = SEED) -> dict[str, int]:
    """Write images/ and vqa.jsonl, mcq.jsonl, pope.jsonl under ``out_dir``; return row counts."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    vqa_rows: list[dict] = []
    mcq_rows: list[dict] = []
    pope_rows: list[dict] = []
    for scene in SCENES:
        # One generator per scene, keyed by name, so editing one scene leaves the others as they were.
        rng = random.Random(f"{seed}:{scene.name}")
        image = scene.draw(rng)
        target = out_dir / scene.image_path
        if scene.ext == "jpg":
            image.save(target, "JPEG", quality=85)
        else:
            image.save(target, "PNG", optimize=True)
        if scene.vqa:
            question, answers = scene.vqa
            vqa_rows.append(
                {"id": f"vqa-{len(vqa_rows) + 1:03d}", "image": scene.image_path, "question": question,
                 "answers": answers, "task": "vqa"}
            )
        for question, choices, answer in scene.mcq:
            mcq_rows.append(
                {"id": f"mcq-{len(mcq_rows) + 1:03d}", "image": scene.image_path, "question": question,
                 "choices": choices, "answer": answer, "task": "multiple_choice"}
            )
        for question, answer in scene.pope:
            pope_rows.append(
                {"id": f"pope-{len(pope_rows) + 1:03d}", "image": scene.image_path, "question": question,
                 "answers": [answer], "task": "pope"}
            )
    _write_jsonl(out_dir / "vqa.jsonl", vqa_rows)
    _write_jsonl(out_dir / "mcq.jsonl", mcq_rows)
    _write_jsonl(out_dir / "pope.jsonl", pope_rows)
    return {"images": len(SCENES), "vqa": len(vqa_rows), "mcq": len(mcq_rows), "pope": len(pope_rows)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    counts = generate(args.out, args.seed)
    print(", ".join(f"{n} {what}" for what, n in counts.items()), "->", args.out)


if __name__ == "__main__":
    main()
