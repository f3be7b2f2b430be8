"""Score a checkpoint on the testbed's held-out manifests, in process, with the project's own metrics.

``python -m pipeline.testbed.evaluate [--methods full,hired,...] [--budgets 0.1,0.2,0.4]
[--figures DIR]`` prints one markdown table: each setting's headline metric per task
(:func:`pipeline.experiments.tasks.aggregate`), their average, and the visual tokens it kept, with
chance as the last row; ``--figures`` also draws each setting's kept patches on a few scenes.

The same engine as the jobs (:class:`pipeline.model.vlm.HiredVLM`, greedy decoding) without Ray,
in fp32: a sweep of dozens of settings runs in minutes, and each image is encoded once per setting
and reused by every question about it. ``hired evaluate`` runs the same settings through the
dataset job instead, one Ray job per setting, and gives the same scores (its dtype ``auto`` keeps
an fp32 checkpoint in fp32).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from hired_ops import DropConfig
from pipeline.experiments.settings import Setting, sweep
from pipeline.experiments.tasks import aggregate, get_task
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM

from . import questions as q
from .make_eval_set import DEFAULT_OUT
from .train import WEIGHTS_DIR

MANIFESTS = {"vqa": "vqa.jsonl", "multiple_choice": "mcq.jsonl", "pope": "pope.jsonl"}
# the paper's Table 3 methods, at the budgets the issue tables use
METHODS, BUDGETS = "full,hired,spatial,random,prumerge,prumerge+", "0.1,0.2,0.4"
# answers are one word or letter; a few spare tokens let a wrong, longer reply show as wrong
OPTIONS = GenerateOptions(max_new_tokens=6)


@dataclass(frozen=True)
class TaskResult:
    """One task under one setting; ``tokens`` is the mean visual tokens kept per image."""

    task: str
    setting: Setting
    metrics: dict[str, float]
    predictions: list[str]
    tokens: float

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


def evaluate_task(
    vlm: HiredVLM,
    task: str,
    rows: list[dict],
    eval_dir: Path,
    setting: Setting,
    batch_size: int = 16,
    encoded: dict | None = None,
) -> TaskResult:
    """Answer every row under ``setting`` and score the replies with the task's metric.

    ``encoded`` (image path -> its encoding under ``setting``) is filled as images are encoded
    and reused when given: the three manifests ask about the same scenes.
    """
    spec = get_task(task)
    drop = setting.apply(DropConfig())
    encoded = {} if encoded is None else encoded
    for path in dict.fromkeys(row["image"] for row in rows):
        if path not in encoded:
            with Image.open(Path(eval_dir) / path) as image:
                encoded[path] = vlm.encode([image.convert("RGB")], drop)[0]
    predictions: list[str] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        generations = vlm.generate([encoded[row["image"]] for row in batch], [spec.build_prompt(row) for row in batch], OPTIONS)
        predictions += [g.text for g in generations]
    scores = [spec.score(p, row) for p, row in zip(predictions, rows)]
    images = dict.fromkeys(row["image"] for row in rows)
    tokens = sum(encoded[path].num_tokens for path in images) / len(images)
    return TaskResult(task, setting, aggregate(spec, scores, predictions, rows), predictions, tokens)


def load_vlm(model_dir: Path) -> HiredVLM:
    """The checkpoint in ``model_dir`` as a :class:`HiredVLM` on the CPU in fp32 (what ``auto``
    gives an fp32 checkpoint; pinned so that one saved in half precision is scored in fp32 too)."""
    return HiredVLM.from_pretrained(str(model_dir), device="cpu", dtype="float32")


def evaluate(vlm: HiredVLM, eval_dir: Path, settings: Sequence[Setting], limit: int | None = None, on_result=None) -> list[TaskResult]:
    """Every task of ``eval_dir`` under every setting; ``on_result`` sees each as it finishes."""
    results = []
    questions = {task: load_rows(eval_dir, task, limit) for task in MANIFESTS}
    with torch.inference_mode():
        for setting in settings:
            encoded: dict = {}
            for task, rows in questions.items():
                results.append(evaluate_task(vlm, task, rows, eval_dir, setting, encoded=encoded))
                if on_result:
                    on_result(results[-1])
    return results


def markdown_table(results: list[TaskResult], eval_dir: Path, limit: int | None = None) -> str:
    """Settings as rows; each task's headline metric, their average and the tokens kept as
    columns; chance as the last row."""
    settings = list(dict.fromkeys(r.setting for r in results))
    questions = {task: load_rows(eval_dir, task, limit) for task in MANIFESTS}
    header = [f"{task} ({get_task(task).metric}, {len(rows)} q)" for task, rows in questions.items()]
    lines = ["| setting | " + " | ".join(header) + " | average | visual tokens |", "|---|" + "---|" * (len(header) + 2)]
    for setting in settings:
        values = [next(r for r in results if r.task == task and r.setting == setting) for task in MANIFESTS]
        cells = [f"{r.headline:.3f}" for r in values]
        average = sum(r.headline for r in values) / len(values)
        lines.append(f"| {setting.label} | " + " | ".join(cells) + f" | {average:.3f} | {values[0].tokens:.1f} |")
    chances = [chance(task, rows) for task, rows in questions.items()]
    lines.append("| chance | " + " | ".join(f"{c:.3f}" for c in chances) + f" | {sum(chances) / len(chances):.3f} | |")
    return "\n".join(lines)


def draw_settings(vlm: HiredVLM, image: Image.Image, settings: Sequence[Setting], out: Path) -> None:
    """One PNG of ``image``'s kept patches under each setting, stacked top to bottom."""
    import io

    from pipeline.tracking.figures import draw_kept_patches

    panels = []
    for setting in settings:
        encoded = vlm.encode([image], setting.apply(DropConfig()))[0]
        figure = draw_kept_patches(image, encoded, vlm.geometry, title=setting.label)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=80)
        panels.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    sheet = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    top = 0
    for panel in panels:
        sheet.paste(panel, (0, top))
        top += panel.height
    sheet.save(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--methods", default=METHODS, help="comma list: presets or allocation+selection (default: %(default)s)")
    parser.add_argument("--budgets", default=BUDGETS, help="comma list of budgets (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each manifest")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv", type=Path, help="also write every task's metrics per setting here")
    parser.add_argument("--figures", type=Path, help="folder for kept-patch sheets of the first --scenes images")
    parser.add_argument("--scenes", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = sweep(args.methods.split(","), args.budgets.split(","))
    vlm = load_vlm(args.model)
    results = evaluate(vlm, args.eval_dir, settings, args.limit, on_result=lambda r: print(
        f"{r.setting.name} {r.task}: {r.headline:.3f}", flush=True))
    print(markdown_table(results, args.eval_dir, args.limit))
    if args.csv:
        from pipeline.experiments.settings import csv_text

        rows = [{"setting": r.setting.name, "task": r.task, "tokens": r.tokens, **r.metrics} for r in results]
        columns = list(dict.fromkeys(key for row in rows for key in row))  # tasks report different metrics
        args.csv.write_text(csv_text([{key: row.get(key, "") for key in columns} for row in rows]))
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        for path in list(dict.fromkeys(row["image"] for row in load_rows(args.eval_dir, "vqa")))[: args.scenes]:
            with Image.open(args.eval_dir / path) as image:
                draw_settings(vlm, image.convert("RGB"), settings, args.figures / f"kept-{Path(path).stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
