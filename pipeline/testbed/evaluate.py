"""Score a model on the testbed's held-out manifests, in process, with the project's own metrics.

``python -m pipeline.testbed.evaluate [--model pipeline/testbed/weights] [--eval-dir samples/eval]``
prints a markdown table: each task's headline metric (:func:`pipeline.scoring.aggregate`) at full
tokens, HiRED 20% and spatial 20%, with the chance level beside it.

Each image is encoded once per dropping method and reused by all the rows that ask about it; the
answers are decoded greedily by :class:`pipeline.engine.HiredVLM`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from hired_ops import DropConfig
from pipeline.experiments.tasks import aggregate, get_task
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM

from . import questions as q
from .make_eval_set import DEFAULT_OUT
from .train import WEIGHTS_DIR

MANIFESTS = {"vqa": "vqa.jsonl", "multiple_choice": "mcq.jsonl", "pope": "pope.jsonl"}
METHODS: dict[str, DropConfig] = {
    "full": DropConfig(method="full", budget=None),
    "hired 20%": DropConfig(method="hired", budget=0.2),
    "spatial 20%": DropConfig(method="spatial", budget=0.2),
}
# answers are one word or letter; a few spare tokens let a wrong, longer reply show as wrong
OPTIONS = GenerateOptions(max_new_tokens=6)


@dataclass(frozen=True)
class TaskResult:
    """One task under one dropping method."""

    task: str
    method: str
    metrics: dict[str, float]
    predictions: list[str]

    @property
    def headline(self) -> float:
        return self.metrics[get_task(self.task).metric]


def load_rows(eval_dir: Path, task: str, limit: int | None = None) -> list[dict]:
    """The first ``limit`` rows (all if ``None``) of a task's manifest in ``eval_dir``."""
    lines = (Path(eval_dir) / MANIFESTS[task]).read_text().splitlines()
    return [json.loads(line) for line in lines[:limit]]


def chance(task: str, rows: list[dict]) -> float:
    """The task's headline metric for a uniform guess: ``1/options`` averaged over rows for vqa
    and multiple choice (the kind's answer space, read from the row id); for POPE, whose headline
    is F1, the F1 of always answering "yes" (a coin flip's expected accuracy is 0.5)."""
    if task == "pope":
        positives = sum(row["answers"][0] == "yes" for row in rows) / len(rows)
        return 2 * positives / (1 + positives)
    if task == "multiple_choice":
        return sum(1 / len(row["choices"]) for row in rows) / len(rows)
    return sum(1 / q.ANSWER_SPACE[row["id"].split("-")[1]] for row in rows) / len(rows)


def evaluate_task(vlm: HiredVLM, task: str, rows: list[dict], eval_dir: Path, drop: DropConfig, method: str, batch_size: int = 16) -> TaskResult:
    """Answer every row with ``drop`` and score the replies with the task's metric."""
    spec = get_task(task)
    encoded = {}
    for path in dict.fromkeys(row["image"] for row in rows):
        with Image.open(Path(eval_dir) / path) as image:
            encoded[path] = vlm.encode([image.convert("RGB")], drop)[0]
    predictions: list[str] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        generations = vlm.generate([encoded[row["image"]] for row in batch], [spec.build_prompt(row) for row in batch], OPTIONS)
        predictions += [g.text for g in generations]
    scores = [spec.score(p, row) for p, row in zip(predictions, rows)]
    return TaskResult(task, method, aggregate(spec, scores, predictions, rows), predictions)


def evaluate(model_dir: Path, eval_dir: Path, limit: int | None = None, methods: dict[str, DropConfig] = METHODS) -> list[TaskResult]:
    """Every task of ``eval_dir`` under every method, on the checkpoint in ``model_dir`` (CPU)."""
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    model = LlavaNextForConditionalGeneration.from_pretrained(model_dir).eval()
    vlm = HiredVLM(model, AutoProcessor.from_pretrained(model_dir))
    results = []
    with torch.inference_mode():
        for method, drop in methods.items():
            for task in MANIFESTS:
                results.append(evaluate_task(vlm, task, load_rows(eval_dir, task, limit), eval_dir, drop, method))
    return results


def markdown_table(results: list[TaskResult], eval_dir: Path, limit: int | None = None) -> str:
    """Tasks as rows, methods as columns, chance last."""
    methods = list(dict.fromkeys(r.method for r in results))
    lines = [
        "| task (metric, questions) | " + " | ".join(methods) + " | chance |",
        "|---|" + "---|" * (len(methods) + 1),
    ]
    for task in MANIFESTS:
        rows = load_rows(eval_dir, task, limit)
        values = [next(r.headline for r in results if r.task == task and r.method == m) for m in methods]
        label = f"{task} ({get_task(task).metric}, {len(rows)})"
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {chance(task, rows):.3f} |")
    for method in methods:
        pope = next(r for r in results if r.task == "pope" and r.method == method)
        lines.append(
            f"\nPOPE at {method}: accuracy {pope.metrics['accuracy']:.3f} (chance 0.500), "
            f"yes ratio {pope.metrics['yes_ratio']:.3f}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each manifest")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = evaluate(args.model, args.eval_dir, args.limit)
    print(markdown_table(results, args.eval_dir, args.limit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
