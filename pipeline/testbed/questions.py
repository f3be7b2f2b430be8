"""Questions, answers and captions about a :class:`~pipeline.testbed.scenes.Scene`.

Every answer is read off the scene's own object list, so it is right by construction. Question
kinds (``QA.kind``):

* ``color``: "What color is the triangle?" (a shape that occurs once)
* ``shape``: "What shape is the red object?" (a colour that occurs once)
* ``count``: "How many circles are there?" (0-5)
* ``glyph``: "What character is written in the image?" (one of 10 letters and digits)
* ``position``: "Is the red circle left or right of the blue square?" (the clearer axis)
* ``presence``: POPE-style "Is there a red circle in the image?" with ``random``, ``popular``
  and ``adversarial`` negatives (absent objects that are frequent overall, or that share a
  colour or shape with an object in the scene)
* ``caption``: the caption job's default prompt -> every object, left to right.

The three evaluation tasks of :mod:`pipeline.experiments.tasks` are fed as: ``vqa`` (color, shape, count,
glyph, position), ``multiple_choice`` (the same kinds with lettered choices) and ``pope``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from pipeline.model.generation import DEFAULT_PROMPT

from .scenes import COLOR_WEIGHTS, COLORS, GLYPHS, SHAPE_WEIGHTS, SHAPES, Scene

VQA_KINDS = ("color", "shape", "count", "glyph", "position")
POPE_TYPES = ("random", "popular", "adversarial")
# the caption job's own default prompt, so `hired caption` with no --prompt asks what was trained
CAPTION_PROMPT = DEFAULT_PROMPT
MAX_COUNT = 5
LETTERS = "ABCD"
# how many answers each open question kind chooses among (its chance level is the inverse)
ANSWER_SPACE = {"color": len(COLORS), "shape": len(SHAPES), "count": MAX_COUNT + 1, "glyph": len(GLYPHS), "position": 2}


@dataclass(frozen=True)
class QA:
    """One question about a scene.

    Attributes:
        task: ``vqa``, ``multiple_choice``, ``pope`` or ``caption``.
        kind: the question kind (see the module docstring).
        question: the question text (no choices: the task's prompt template adds them).
        answer: what the model is trained to reply (a word, a choice letter, yes/no, a caption).
        choices: the options of a multiple-choice question, else ``()``.
        options: how many answers a uniform guess picks from (the chance level is ``1/options``).
        pope_type: ``random``, ``popular`` or ``adversarial`` for a "no" POPE question, else "".
    """

    task: str
    kind: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    options: int = 1
    pope_type: str = ""


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _with_article(label: str) -> str:
    return ("an " if label[0] in "aeiou" else "a ") + label


def caption(scene: Scene) -> str:
    """``"A red circle, a blue square and the character 7."``: every object, left to right."""
    parts = [_with_article(t.label) if t.kind != "glyph" else f"the {t.label}" for t in sorted(scene.things, key=lambda t: t.x)]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def named_objects(text: str, scene: Scene) -> int:
    """How many of ``scene``'s objects ``text`` names by label ("red circle", "character 7"),
    each label counted at most as often as the scene holds it: the numerator of a caption's
    object recall (the denominator is ``len(scene.things)``). Case is ignored on both sides, so
    "the character K" names the glyph labelled "character K"."""
    lowered = text.lower()
    held = Counter(thing.label.lower() for thing in scene.things)
    return sum(min(count, lowered.count(label)) for label, count in held.items())


def _unique(scene: Scene, attribute: str) -> list:
    values = [getattr(t, attribute) for t in scene.shapes]
    return [t for t in scene.shapes if values.count(getattr(t, attribute)) == 1]


def _position(scene: Scene, rng: random.Random) -> tuple[str, str, tuple[str, str]] | None:
    """``(question, answer, (option, option))`` about two distinct objects, or ``None``."""
    labels = [t.label for t in scene.shapes]
    distinct = [t for t in scene.shapes if labels.count(t.label) == 1]
    if len(distinct) < 2:
        return None
    a, b = rng.sample(distinct, 2)
    dx, dy = a.x - b.x, a.y - b.y
    gap = (a.size + b.size) / 2
    if abs(dx) >= abs(dy) and abs(dx) > gap:
        return f"Is the {a.label} left or right of the {b.label}?", "left" if dx < 0 else "right", ("left", "right")
    if abs(dy) > abs(dx) and abs(dy) > gap:
        return f"Is the {a.label} above or below the {b.label}?", "above" if dy < 0 else "below", ("above", "below")
    return None


def _open_question(scene: Scene, kind: str, rng: random.Random) -> tuple[str, str, tuple[str, ...]] | None:
    """``(question, answer, answer space)`` of one kind, or ``None`` when the scene has none."""
    if kind == "color":
        unique = _unique(scene, "kind")
        if not unique:
            return None
        thing = rng.choice(unique)
        return f"What color is the {thing.kind}?", thing.color, tuple(COLORS)
    if kind == "shape":
        unique = _unique(scene, "color")
        if not unique:
            return None
        thing = rng.choice(unique)
        return f"What shape is the {thing.color} object?", thing.kind, SHAPES
    if kind == "count":
        shape = rng.choice(SHAPES)
        counts = tuple(str(n) for n in range(MAX_COUNT + 1))
        return f"How many {plural(shape)} are there?", str(scene.count(shape)), counts
    if kind == "glyph":
        return "What character is written in the image?", scene.glyph.char, GLYPHS
    if kind == "position":
        return _position(scene, rng)
    raise ValueError(f"unknown question kind {kind!r}")


def _ask(scene: Scene, rng: random.Random, kind: str | None) -> tuple[str, str, str, tuple[str, ...]]:
    """``(kind, question, answer, answer space)``; ``kind`` picked at random among those the
    scene supports if not given."""
    kinds = [kind] if kind else rng.sample(VQA_KINDS, len(VQA_KINDS))
    for k in kinds:
        made = _open_question(scene, k, rng)
        if made is not None:
            return (k, *made)
    raise ValueError(f"scene {scene.key} supports no {kind} question")


def vqa(scene: Scene, rng: random.Random, kind: str | None = None) -> QA:
    """An open question of ``kind`` (random if not given)."""
    kind, question, answer, space = _ask(scene, rng, kind)
    return QA("vqa", kind, question, answer, options=len(space))


def multiple_choice(scene: Scene, rng: random.Random, kind: str | None = None) -> QA:
    """The same kinds as :func:`vqa` with up to four lettered choices, one of them right."""
    kind, question, answer, space = _ask(scene, rng, kind)
    options = [answer] + rng.sample([s for s in space if s != answer], min(len(LETTERS), len(space)) - 1)
    rng.shuffle(options)
    return QA("multiple_choice", kind, question, LETTERS[options.index(answer)], tuple(options), len(options))


def _prior(color: str, shape: str) -> float:
    return COLOR_WEIGHTS[tuple(COLORS).index(color)] * SHAPE_WEIGHTS[SHAPES.index(shape)]


def pope(scene: Scene, rng: random.Random, yes: bool | None = None, pope_type: str | None = None) -> QA:
    """A POPE presence question; a "no" one has a ``pope_type`` negative."""
    yes = rng.random() < 0.5 if yes is None else yes
    if yes:
        thing = rng.choice(scene.shapes)
        return QA("pope", "presence", f"Is there a {thing.color} {thing.kind} in the image?", "yes", options=2)
    absent = [(c, s) for c in COLORS for s in SHAPES if not scene.has(c, s)]
    pope_type = pope_type or rng.choice(POPE_TYPES)
    if pope_type == "popular":
        # among the six most frequent absent objects
        pool = sorted(absent, key=lambda cs: -_prior(*cs))[:6]
    elif pope_type == "adversarial":
        colors = {t.color for t in scene.shapes}
        shapes = {t.kind for t in scene.shapes}
        pool = [(c, s) for c, s in absent if c in colors or s in shapes]
    elif pope_type == "random":
        pool = absent
    else:
        raise ValueError(f"unknown POPE negative type {pope_type!r}")
    color, shape = rng.choice(pool)
    return QA("pope", "presence", f"Is there a {color} {shape} in the image?", "no", options=2, pope_type=pope_type)


def describe(scene: Scene) -> QA:
    return QA("caption", "caption", CAPTION_PROMPT, caption(scene))


def training_questions(scene: Scene, rng: random.Random, per_task: int = 2, with_caption: bool = True) -> list[QA]:
    """A shuffled mix for one training conversation: ``per_task`` of each task, and the caption."""
    questions = [make(scene, rng) for make in (vqa, multiple_choice, pope) for _ in range(per_task)]
    if with_caption:
        questions.append(describe(scene))
    rng.shuffle(questions)
    return questions
