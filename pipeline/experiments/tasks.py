"""The evaluation tasks: each names its prompt, its headline metric and how a row is scored."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .choices import choice_accuracy, format_choices
from .scoring import (
    Row,
    anls,
    exact_match,
    label_is_yes,
    parse_yes_no,
    pope_metrics,
    ratio_or_zero,
    relaxed_accuracy,
    vqa_accuracy,
)


def _row_answers(row: Row) -> list[str]:
    # Manifests carry "answers" (a list, VQA-style); a single "answer" string is accepted too.
    if "answers" in row and row["answers"] is not None:
        value = row["answers"]
    elif "answer" in row and row["answer"] is not None:
        value = row["answer"]
    else:
        raise ValueError(f"row {row.get('id', '?')!r} has neither 'answers' nor 'answer'")
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _score_vqa(prediction: str, row: Row) -> float:
    return vqa_accuracy(prediction, _row_answers(row))


def _score_docvqa(prediction: str, row: Row) -> float:
    return anls(prediction, _row_answers(row))


def _score_chartqa(prediction: str, row: Row) -> float:
    return relaxed_accuracy(prediction, _row_answers(row))


def _score_multiple_choice(prediction: str, row: Row) -> float:
    return choice_accuracy(prediction, row["choices"], row["answer"])


def _score_pope(prediction: str, row: Row) -> float:
    return 1.0 if parse_yes_no(prediction) == label_is_yes(_row_answers(row)[0]) else 0.0


def _score_exact(prediction: str, row: Row) -> float:
    return exact_match(prediction, _row_answers(row))


_SHORT_ANSWER = "{question}\nAnswer the question using a single word or phrase."


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task: how to prompt for a row and how to score the reply.

    ``prompt_template`` holds ``{question}`` and, for multiple choice, ``{choices}`` (filled by
    :func:`format_choices`). ``metric`` names the headline number :func:`aggregate` reports.
    ``scorer`` maps ``(prediction, row)`` to a per-row score in [0, 1]. ``chance`` is the headline
    metric of guessing, where it does not depend on the rows (see :func:`chance_level`).
    """

    name: str
    prompt_template: str
    metric: str
    scorer: Callable[[str, Row], float]
    chance: float | None = 0.0

    def score(self, prediction: str, row: Row) -> float:
        """Score one model reply against its manifest row."""
        return float(self.scorer(prediction, row))

    def build_prompt(self, row: Row) -> str:
        """The text prompt for a manifest row (the image goes in separately)."""
        choices = row.get("choices")
        if "{choices}" in self.prompt_template and not choices:
            raise ValueError(f"task {self.name!r} needs 'choices' in row {row.get('id', '?')!r}")
        return self.prompt_template.format(
            question=str(row["question"]).strip(),
            choices=format_choices(choices) if choices else "",
        )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("vqa", _SHORT_ANSWER, "vqa_accuracy", _score_vqa),
        TaskSpec("docvqa", _SHORT_ANSWER, "anls", _score_docvqa),
        TaskSpec("chartqa", _SHORT_ANSWER, "relaxed_accuracy", _score_chartqa),
        TaskSpec(
            "multiple_choice",
            "{question}\n{choices}\nAnswer with the option's letter from the given choices directly.",
            "choice_accuracy",
            _score_multiple_choice,
            chance=None,  # one over each row's number of choices
        ),
        # a coin flip's F1 on a balanced yes/no set (POPE's are balanced by construction)
        TaskSpec("pope", _SHORT_ANSWER, "f1", _score_pope, chance=0.5),
        TaskSpec("exact", _SHORT_ANSWER, "exact_match", _score_exact),
    )
}


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Look a task up by name; a TaskSpec passes through. Unknown names list the valid ones."""
    if isinstance(task, TaskSpec):
        return task
    try:
        return TASKS[task]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(sorted(TASKS))}") from None


def chance_level(task: str | TaskSpec, rows: Sequence[Row] = ()) -> float | None:
    """The headline metric a guesser gets: the task's fixed ``chance`` (0 for open answers, 0.5
    for pope), or for multiple choice the mean of ``1 / len(choices)`` over ``rows`` (``None``
    without rows)."""
    spec = get_task(task)
    if spec.chance is not None:
        return spec.chance
    counts = [len(row["choices"]) for row in rows if row.get("choices")]
    return sum(1.0 / count for count in counts) / len(counts) if counts else None


def aggregate(
    task: str | TaskSpec,
    per_row_scores: Sequence[float],
    predictions: Sequence[str],
    rows: Sequence[Row],
) -> dict[str, float]:
    """The headline numbers of a task over a whole set.

    For most tasks ``{metric: mean per-row score}`` (0.0 for an empty set). For ``pope`` the
    per-row score is plain accuracy, so the result is :func:`pope_metrics` over the replies.
    """
    spec = get_task(task)
    if not (len(per_row_scores) == len(predictions) == len(rows)):
        raise ValueError(
            f"aggregate needs one score, prediction and row each: got {len(per_row_scores)} scores, "
            f"{len(predictions)} predictions, {len(rows)} rows"
        )
    if spec.name == "pope":
        return pope_metrics(predictions, [_row_answers(row)[0] for row in rows])
    return {spec.metric: ratio_or_zero(sum(float(s) for s in per_row_scores), len(per_row_scores))}
