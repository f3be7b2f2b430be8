"""Score a checkpoint on the testbed's held-out manifests, in process, with the project's own metrics.

``python -m pipeline.testbed.evaluate [--eval-dir DIR] [--methods full,hired,...]
[--budgets 0.1,0.2,0.4] [--figures DIR]`` prints one markdown table: each setting's headline
metric per task (:func:`pipeline.experiments.tasks.aggregate`) with its 95% interval, their
average, the average's difference from full tokens with a paired interval, its share of full, and
the visual tokens kept, with chance as the last row; ``--figures`` also draws each setting's kept
patches on a few scenes, and ``--versus SETTING`` prints each other setting's paired difference
from that one on every task; ``--baseline-answers DIR`` (another checkpoint's ``--answers`` on
the same set) prints each setting's paired difference from that checkpoint's, to judge a training
run against the model before it.

The same engine as the jobs (:class:`pipeline.model.vlm.HiredVLM`, greedy decoding) without Ray,
in fp32. Per setting, each image is encoded once, and every question about it (all three tasks)
is answered from one computation of the image's prefix (:mod:`pipeline.model.shared_prefix`).
Intervals are a cluster bootstrap over images (:mod:`pipeline.experiments.intervals`). ``hired
evaluate`` runs the same settings through the dataset job instead, one Ray job per setting.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from hired_ops import DropConfig
from pipeline.experiments.intervals import RESAMPLES, draw_groups, percentile_interval, rows_of
from pipeline.experiments.settings import Setting, sweep
from pipeline.experiments.tasks import aggregate, get_task
from pipeline.model.generation import GenerateOptions
from pipeline.model.shared_prefix import answer_questions
from pipeline.model.vlm import HiredVLM

from . import questions as q
from .make_eval_set import DEFAULT_OUT
from .train import WEIGHTS_DIR

MANIFESTS = {"vqa": "vqa.jsonl", "multiple_choice": "mcq.jsonl", "pope": "pope.jsonl"}
# the paper's Table 3 methods and the image-only selections since, at the budgets the tables use
METHODS, BUDGETS = "full,hired,spatial,random,prumerge,prumerge+,visionzip,divprune", "0.1,0.2,0.4"
# answers are one word or letter; a few spare tokens let a wrong, longer reply show as wrong
OPTIONS = GenerateOptions(max_new_tokens=6)


@dataclass(frozen=True)
class TaskResult:
    """One task under one setting.

    ``tokens`` is the mean visual tokens kept per image; ``resampled`` the headline metric on each
    bootstrap draw of images (the same draws for every setting, so differences pair).
    """

    task: str
    setting: Setting
    metrics: dict[str, float]
    predictions: list[str]
    tokens: float
    resampled: tuple[float, ...] = ()

    @property
    def headline(self) -> float:
        return self.metrics[get_task(self.task).metric]

    @property
    def interval(self) -> tuple[float, float]:
        """The headline's 95% interval (NaNs when no draws were made)."""
        return percentile_interval(self.resampled) if self.resampled else (float("nan"), float("nan"))


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


def answer_setting(
    vlm: HiredVLM, questions: dict[str, list[dict]], eval_dir: Path, setting: Setting
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Every question under ``setting``: each image through the tower once, all questions about
    it answered from its shared prefix; under a selection that reads the instruction, each
    question keeps its own tokens (one drop per question from the one tower run) and is answered
    with them. Returns the replies by task, in row order, and the mean visual tokens kept per
    image of each task."""
    drop = setting.apply(DropConfig())
    asked: dict[str, list[tuple[str, int]]] = {}
    for task, rows in questions.items():
        for index, row in enumerate(rows):
            asked.setdefault(row["image"], []).append((task, index))
    replies = {task: [""] * len(rows) for task, rows in questions.items()}
    kept: dict[str, int] = {}
    for path, pairs in asked.items():
        prompts = [get_task(task).build_prompt(questions[task][index]) for task, index in pairs]
        with Image.open(Path(eval_dir) / path) as image:
            encoded = vlm.encode_questions(image.convert("RGB"), prompts, drop)
        kept[path] = encoded[0].num_tokens  # budgets are exact, so every question keeps as many
        if drop.needs_instruction:
            generations = vlm.generate(encoded, prompts, OPTIONS)
        else:
            generations = answer_questions(vlm, encoded[0], prompts, OPTIONS)
        for (task, index), generation in zip(pairs, generations):
            replies[task][index] = generation.text
    tokens = {}
    for task, rows in questions.items():
        images = dict.fromkeys(row["image"] for row in rows)
        tokens[task] = sum(kept[path] for path in images) / max(1, len(images))
    return replies, tokens


def score_task(task: str, setting: Setting, rows: list[dict], predictions: list[str], tokens: float,
               draws: Sequence[Sequence[str]] = ()) -> TaskResult:
    """Score ``predictions`` with the task's metric, on the whole set and on each draw of images."""
    spec = get_task(task)
    scores = [spec.score(p, row) for p, row in zip(predictions, rows)]
    images = [row["image"] for row in rows]

    def headline(indices: list[int]) -> float:
        picked = aggregate(spec, [scores[i] for i in indices], [predictions[i] for i in indices], [rows[i] for i in indices])
        return picked[spec.metric]

    resampled = tuple(headline(rows_of(draw, images)) for draw in draws)
    return TaskResult(task, setting, aggregate(spec, scores, predictions, rows), predictions, tokens, resampled)


def load_vlm(model: str | Path) -> HiredVLM:
    """The checkpoint ``model`` (a name or folder) as a :class:`HiredVLM` on the CPU in fp32 (what
    ``auto`` gives an fp32 checkpoint; pinned so that one saved in half precision is scored in fp32 too)."""
    return HiredVLM.from_pretrained(str(model), device="cpu", dtype="float32")


def missing_answers(folder: Path, settings: Sequence[Setting]) -> list[str]:
    """The names of the ``settings`` whose replies are not kept in ``folder`` (an ``--answers``)."""
    return [s.name for s in settings if not (Path(folder) / f"{s.name}.json").is_file()]


def evaluate(vlm: HiredVLM | None, eval_dir: Path, settings: Sequence[Setting], limit: int | None = None,
             on_result=None, resamples: int = RESAMPLES, answers: Path | None = None) -> list[TaskResult]:
    """Every task of ``eval_dir`` under every setting; ``on_result`` sees each as it finishes.

    With ``answers``, each setting's replies are kept there (``<setting>.json``) and read back
    instead of asked again: a long sweep resumes, and settings answered by several processes
    side by side are scored together (``vlm`` may be None when every setting is there).
    """
    questions = {task: load_rows(eval_dir, task, limit) for task in MANIFESTS}
    draws = draw_groups([row["image"] for rows in questions.values() for row in rows], resamples)
    results = []
    with torch.inference_mode():
        for setting in settings:
            kept = Path(answers) / f"{setting.name}.json" if answers else None
            if kept is not None and kept.is_file():
                saved = json.loads(kept.read_text())
                replies, tokens = saved["replies"], saved["tokens"]
                if any(len(replies[task]) != len(rows) for task, rows in questions.items()):
                    raise ValueError(f"{kept} answers another set of questions: use another --answers folder")
            else:
                if vlm is None:
                    raise ValueError(f"no kept answers for {setting.name} in {answers}, and no model to ask")
                replies, tokens = answer_setting(vlm, questions, eval_dir, setting)
                if kept is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    kept.write_text(json.dumps({"replies": replies, "tokens": tokens}))
            for task, rows in questions.items():
                results.append(score_task(task, setting, rows, replies[task], tokens[task], draws))
                if on_result:
                    on_result(results[-1])
    return results


def _cell(value: float, interval: tuple[float, float], signed: bool = False) -> str:
    form = "{:+.3f}" if signed else "{:.3f}"
    return f"{form.format(value)} [{form.format(interval[0])}, {form.format(interval[1])}]"


def _scores(results: list[TaskResult], setting: Setting, task: str | None) -> tuple[float, list[float]]:
    """``setting``'s headline on ``task`` (the tasks' average when None) and its value on each draw."""
    values = [r for r in results if r.setting == setting and (task is None or r.task == task)]
    return sum(r.headline for r in values) / len(values), [sum(d) / len(d) for d in zip(*(r.resampled for r in values))]


def paired_difference(results: list[TaskResult], setting: Setting, reference: Setting,
                      task: str | None = None, reference_results: list[TaskResult] | None = None
                      ) -> tuple[float, tuple[float, float]]:
    """``setting`` minus ``reference`` on ``task`` (the average when None), with the 95% interval
    of the difference over the same draws of images (paired). ``reference`` is looked up in
    ``reference_results`` when given: another checkpoint's results on the same questions."""
    mine, mine_drawn = _scores(results, setting, task)
    theirs, theirs_drawn = _scores(results if reference_results is None else reference_results, reference, task)
    return mine - theirs, percentile_interval([a - b for a, b in zip(mine_drawn, theirs_drawn)])


def differences_table(results: list[TaskResult], reference: Setting | None = None,
                      baseline: list[TaskResult] | None = None) -> str:
    """On each task and the average, every other setting's paired difference from ``reference``,
    or, given ``baseline`` (another checkpoint's results), every setting's from itself there."""
    settings = list(dict.fromkeys(r.setting for r in results))
    if baseline is None:
        settings = [s for s in settings if s != reference]
    header = [*MANIFESTS, "average"]
    title = "minus the baseline's same setting" if baseline is not None else f"minus {reference.label}"
    lines = [f"| {title} (paired) | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for setting in settings:
        against = setting if baseline is not None else reference
        cells = [_cell(*paired_difference(results, setting, against, task, baseline), signed=True)
                 for task in (*MANIFESTS, None)]
        lines.append(f"| {setting.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(results: list[TaskResult], eval_dir: Path, limit: int | None = None) -> str:
    """Settings as rows; each task's headline metric with its 95% interval, their average, the
    average's paired difference from full tokens and its share of full (when full was run), and
    the tokens kept; chance as the last row."""
    settings = list(dict.fromkeys(r.setting for r in results))
    questions = {task: load_rows(eval_dir, task, limit) for task in MANIFESTS}
    by = {(r.setting, r.task): r for r in results}
    full = next((s for s in settings if s.method == "full"), None)
    header = [f"{task} ({get_task(task).metric}, {len(rows)} q)" for task, rows in questions.items()]
    header += ["average", "vs full (paired)", "share of full", "visual tokens"]
    lines = ["| setting | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for setting in settings:
        mean, resampled = _scores(results, setting, None)
        cells = [_cell(by[setting, task].headline, by[setting, task].interval) for task in MANIFESTS]
        cells.append(_cell(mean, percentile_interval(resampled)))
        if full is not None and setting != full:
            cells += [_cell(*paired_difference(results, setting, full), signed=True),
                      f"{mean / _scores(results, full, None)[0]:.1%}"]
        else:
            cells += ["", ""]
        cells.append(f"{by[setting, 'vqa'].tokens:.1f}")
        lines.append(f"| {setting.label} | " + " | ".join(cells) + " |")
    chances = [chance(task, rows) for task, rows in questions.items()]
    lines.append("| chance | " + " | ".join(f"{c:.3f}" for c in chances) + f" | {sum(chances) / len(chances):.3f} | | | |")
    return "\n".join(lines)


def draw_settings(vlm: HiredVLM, image: Image.Image, settings: Sequence[Setting], out: Path,
                  questions: Sequence[str] = ()) -> None:
    """One PNG of ``image``'s kept patches under each setting, stacked top to bottom; a setting
    whose selection reads the question gets one panel per prompt of ``questions``."""
    import io

    from pipeline.tracking.figures import draw_kept_patches

    panels = []
    for setting in settings:
        drop = setting.apply(DropConfig())
        asked = list(questions) if drop.needs_instruction and questions else [None]
        for prompt, encoded in zip(asked, vlm.encode([image] * len(asked), drop, asked)):
            title = setting.label if prompt is None else f"{setting.label}: {prompt.splitlines()[0]}"
            figure = draw_kept_patches(image, encoded, vlm.geometry, title=title)
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
    parser.add_argument("--model", default=str(WEIGHTS_DIR), help="model name or folder (default: the shipped testbed)")
    parser.add_argument("--eval-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--methods", default=METHODS, help="comma list: presets or allocation+selection (default: %(default)s)")
    parser.add_argument("--budgets", default=BUDGETS, help="comma list of budgets (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each manifest")
    parser.add_argument("--answers", type=Path, help="folder that keeps each setting's replies (resume; combine runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv", type=Path, help="also write every task's metrics per setting here")
    parser.add_argument("--figures", type=Path, help="folder for kept-patch sheets of the first --scenes images")
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--versus", metavar="SETTING",
                        help="also print every setting's paired difference from this one, by task (e.g. hired-0.2)")
    parser.add_argument("--baseline-answers", type=Path, metavar="DIR",
                        help="another checkpoint's --answers folder on the same set: also print every setting's "
                             "paired difference from its own replies there, by task")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = sweep(args.methods.split(","), args.budgets.split(","))
    names = {s.name: s for s in settings}
    if args.versus is not None and args.versus not in names:
        parser.error(f"--versus {args.versus} is not a setting of this sweep: pick one of {', '.join(names)}")
    if args.baseline_answers is not None and (missing := missing_answers(args.baseline_answers, settings)):
        parser.error(f"--baseline-answers {args.baseline_answers} keeps no replies for {', '.join(missing)}: "
                     "run this command with --answers there on the baseline checkpoint first")
    answered = args.answers is not None and not missing_answers(args.answers, settings)
    vlm = None if answered and not args.figures else load_vlm(args.model)
    start = time.perf_counter()
    results = evaluate(vlm, args.eval_dir, settings, args.limit, answers=args.answers, on_result=lambda r: print(
        f"{r.setting.name} {r.task}: {r.headline:.3f} ({time.perf_counter() - start:.0f} s)", flush=True))
    print(markdown_table(results, args.eval_dir, args.limit))
    if args.versus is not None:
        print(differences_table(results, names[args.versus]))
    if args.baseline_answers is not None:
        print(differences_table(results, baseline=evaluate(None, args.eval_dir, settings, args.limit,
                                                           answers=args.baseline_answers)))
    print(f"{len(settings)} settings in {time.perf_counter() - start:.0f} s")
    if args.csv:
        from pipeline.experiments.settings import csv_text

        rows = [{"setting": r.setting.name, "task": r.task, "tokens": r.tokens, **r.metrics,
                 "low": r.interval[0], "high": r.interval[1]} for r in results]
        columns = list(dict.fromkeys(key for row in rows for key in row))  # tasks report different metrics
        args.csv.write_text(csv_text([{key: row.get(key, "") for key in columns} for row in rows]))
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        rows = load_rows(args.eval_dir, "vqa")
        for path in list(dict.fromkeys(row["image"] for row in rows))[: args.scenes]:
            asked = [get_task("vqa").build_prompt(row) for row in rows if row["image"] == path]
            with Image.open(args.eval_dir / path) as image:
                draw_settings(vlm, image.convert("RGB"), settings, args.figures / f"kept-{Path(path).stem}.png", asked)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
