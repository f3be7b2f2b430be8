"""Write an evaluation set: scenes as PNG files and vqa, mcq and pope jsonl manifests.

``python -m pipeline.testbed.make_eval_set [--out samples/eval] [--scenes 48] [--questions 3]
[--density standard] [--split heldout]``

Scenes come from the "heldout" split (never used for training or tuning), or with ``--split
check`` from the check set: training-split scenes from ``UNSEEN_TRAIN_INDEX`` on, which no
training run reaches, to judge a training run against without reading the held-out split
(``--split check --density dense --scenes 40 --questions 5 --out outputs/eval/check``, 200
questions per task, is the one ``docs/testbed.md`` judges parts of the shipped model on). Each
scene is asked ``--questions`` questions per task. The bundled set (``samples/eval``) is 48
standard scenes x 3, 144 questions per task, small enough to ship; the set that ranks methods is
generated: ``--density dense --scenes 100 --questions 5 --out outputs/eval/dense`` gives 500
questions per task about dense scenes (``docs/testbed.md``). Question kinds rotate over the
scenes so each kind is about equally frequent; POPE questions alternate yes/no and the "no" ones
rotate over the random, popular and adversarial negatives. The kind is part of each row's id
(``vqa-glyph-007``, ``pope-popular-012``). The columns are described in
``samples/eval/README.md``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from . import questions as q
from .scenes import DENSITIES, UNSEEN_TRAIN_INDEX, Scene, make_scene, render

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "samples" / "eval"
EVAL_SEED = 0
QUESTIONS_PER_SCENE = 3
VQA_ANSWERS = 10  # VQA-style rows carry ten human answers; here all agree
SPLITS = ("heldout", "check")


def _asked(make, scene, rng: random.Random, first: int, seen: set[str]):
    """A question not in ``seen`` (and added to it), of kind ``VQA_KINDS[first]`` if the scene
    supports a new one, else of the next kinds in turn."""
    kinds = q.VQA_KINDS
    for attempt in range(10 * len(kinds)):
        try:
            made = make(scene, rng, kinds[(first + attempt) % len(kinds)])
        except ValueError:
            continue
        if made.question not in seen:
            seen.add(made.question)
            return made
    raise ValueError(f"scene {scene.key} supports too few distinct questions")


def eval_scene(index: int, seed: int = EVAL_SEED, density: str = "standard", split: str = "heldout") -> Scene:
    """Scene ``index`` of an evaluation set of ``split`` (:data:`SPLITS`): the held-out split's, or
    the check set's, the training split's from ``UNSEEN_TRAIN_INDEX`` on."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {SPLITS}")
    if split == "check":
        return make_scene("train", seed, UNSEEN_TRAIN_INDEX + index, density)
    return make_scene("heldout", seed, index, density)


def image_name(index: int, density: str = "standard", split: str = "heldout") -> str:
    """The manifest's path of scene ``index``: ``images/heldout-007.png``,
    ``images/dense-heldout-007.png`` or ``images/dense-check-007.png``."""
    return f"images/{'' if density == 'standard' else density + '-'}{split}-{index:03d}.png"


def build_rows(scenes: int, seed: int = EVAL_SEED, density: str = "standard",
               per_scene: int = QUESTIONS_PER_SCENE, split: str = "heldout") -> dict[str, list[dict]]:
    """``{"vqa": rows, "mcq": rows, "pope": rows}`` over ``scenes`` scenes of ``split`` at
    ``density``, ``per_scene`` questions each per task; each row's ``image`` is :func:`image_name`."""
    rows: dict[str, list[dict]] = {"vqa": [], "mcq": [], "pope": []}
    kinds = len(q.VQA_KINDS)
    # the held-out sets keep the question streams they always had
    prefix = ("" if density == "standard" else f"{density}:") + ("" if split == "heldout" else f"{split}:")
    for index in range(scenes):
        scene = eval_scene(index, seed, density, split)
        rng = random.Random(f"{prefix}eval:{seed}:{index}")
        image = image_name(index, density, split)
        seen_open: set[str] = set()
        seen_choice: set[str] = set()
        seen_pope: set[str] = set()
        for j in range(per_scene):
            turn = index * per_scene + j
            open_qa = _asked(q.vqa, scene, rng, turn % kinds, seen_open)
            rows["vqa"].append(
                {
                    "id": f"vqa-{open_qa.kind}-{len(rows['vqa']) + 1:03d}",
                    "image": image,
                    "question": open_qa.question,
                    "answers": [open_qa.answer] * VQA_ANSWERS,
                    "task": "vqa",
                }
            )
            # offset so a scene's open and multiple-choice questions differ in kind
            choice = _asked(q.multiple_choice, scene, rng, (turn + 2) % kinds, seen_choice)
            rows["mcq"].append(
                {
                    "id": f"mcq-{choice.kind}-{len(rows['mcq']) + 1:03d}",
                    "image": image,
                    "question": choice.question,
                    "choices": list(choice.choices),
                    "answer": choice.answer,
                    "task": "multiple_choice",
                }
            )
            pope_type = q.POPE_TYPES[(turn // 2) % len(q.POPE_TYPES)]
            # a scene with few objects may have no new "yes" question left: a repeat is kept then
            for _ in range(20):
                presence = q.pope(scene, rng, yes=turn % 2 == 0, pope_type=pope_type)
                if presence.question not in seen_pope:
                    break
            seen_pope.add(presence.question)
            rows["pope"].append(
                {
                    "id": f"pope-{presence.pope_type or 'yes'}-{len(rows['pope']) + 1:03d}",
                    "image": image,
                    "question": presence.question,
                    "answers": [presence.answer],
                    "task": "pope",
                }
            )
    return rows


def write_eval_set(out: Path, scenes: int, seed: int = EVAL_SEED, density: str = "standard",
                   per_scene: int = QUESTIONS_PER_SCENE, split: str = "heldout") -> dict[str, Path]:
    """Write images and manifests under ``out``; returns the manifest paths by file stem."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for index in range(scenes):
        render(eval_scene(index, seed, density, split)).save(out / image_name(index, density, split), optimize=True)
    paths = {}
    for name, rows in build_rows(scenes, seed, density, per_scene, split).items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--questions", type=int, default=QUESTIONS_PER_SCENE, help="questions per scene and task")
    parser.add_argument("--density", choices=tuple(DENSITIES), default="standard")
    parser.add_argument("--split", choices=SPLITS, default="heldout",
                        help="heldout, or check: unseen training-split scenes to judge training against")
    args = parser.parse_args(argv)
    for name, path in write_eval_set(args.out, args.scenes, args.seed, args.density, args.questions, args.split).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
