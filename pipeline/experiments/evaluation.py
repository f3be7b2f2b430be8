"""The accuracy sweep behind ``hired evaluate``: methods x budgets on a labelled set, scored the
way the paper's Table 3 is.

**The labelled set** is one manifest, Parquet or JSON lines, local or any fsspec URL. Per row:
an image (any column :func:`pipeline.data.sources.list_inputs` reads: ``image``, ``path``, inline
bytes, ...), a ``question``, and the labels the task scores against:

* ``vqa``, ``docvqa``, ``chartqa``, ``pope``, ``exact``: ``answers`` (a list of reference
  answers, or one string; ``answer`` is accepted instead);
* ``multiple_choice``: ``choices`` (a list) and ``answer`` (a letter, a 0-based index or the
  choice's text).

The task (:data:`pipeline.experiments.tasks.TASKS`) sets the prompt and the metric. It is named by the
caller, or by the manifest's ``task`` column when every row names the same one. The task's
prompt replaces any ``prompt`` column: the prompt is part of the benchmark's definition.

**A setting** is a method, with a budget for the budgeted methods (``hired``, ``spatial``,
``random``); ``full`` and the PruMerge family choose their own token count, so a sweep runs them
once whatever the budgets. Each setting runs :func:`pipeline.batch.driver.run_job` over every row into
``<output>/<setting>/`` (e.g. ``outputs/eval/hired-0.2/``), then its written answers are scored.

**Scoring.** Every row that produced an answer is scored with the task's scorer; the headline
numbers are :func:`pipeline.experiments.tasks.aggregate` of those scores (for ``pope``: accuracy,
precision, recall, F1 and yes-ratio). Rows whose image failed to decode have no answer: they are
left out of the scores and counted as ``failed_rows``, with a warning.

**Resuming.** As with captioning, re-running into the same output skips rows already written, and
the scores cover all rows of the set found in the setting's folder. Each setting's folder keeps
an ``_setting.json`` of everything that changes answers (model, method, budget, decoding, task, ...);
resuming into a folder written with different values is an error, as mixing answers of two
configurations would give a wrong score. ``resume=False`` redoes every row and scores only those.

**MLflow.** One parent run (tag ``hired.kind=evaluate-sweep``; params ``task``, ``dataset``,
``model``, ``methods``, ``budgets``; the table as ``table.csv`` and ``table.md``; the headline
metric per setting as ``<metric>.<setting>``), and one child run per setting (tag
``hired.kind=evaluate``, named ``evaluate vqa · hired 20% · <model>``) with the job's params plus
``task`` and ``setting``, the job's metrics (:func:`pipeline.tracking.job_metrics`, live ones while
it runs) plus the task's metrics, ``chance`` (:func:`pipeline.experiments.tasks.chance_level`) and
``scored_rows`` / ``failed_rows``, and ``eval/predictions.json`` (each row's answer and score).
The manifest is every run's dataset input (a digest of its bytes and its row count). ``hired compare``
reads the child runs as it reads any job run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.batch.config import JobConfig
from pipeline.batch.output import output_fs
from pipeline.batch.progress import ProgressCallback
from pipeline.data.storage import filesystem, is_image_path
from pipeline.tracking.datasets import InputDataset, describe_input, log_input
from pipeline.tracking.live import both, sweep_label
from pipeline.tracking.naming import run_name
from pipeline.tracking.results import track_job
from pipeline.tracking.runs import KIND_TAG, JobRun, TrackingConfig, start_job_run

from .labelled import LabelledSet, load_labelled_set
from .settings import TABLE_CSV, TABLE_MARKDOWN, Setting, csv_text
from .tasks import TaskSpec, aggregate, chance_level, get_task

logger = logging.getLogger(__name__)

SWEEP_KIND = "evaluate-sweep"
SETTING_KIND = "evaluate"
# The leading underscore keeps it out of Parquet dataset readers (pyarrow, pandas, Spark skip "_*").
SETTING_FILE = "_setting.json"
PREDICTIONS_ARTIFACT = "eval/predictions.json"

# Given a label ("setting 2 of 5: hired-0.2, ..."), a callback for that setting's job progress.
SettingWatcher = Callable[[str], ProgressCallback]

# Fields of a setting's JobConfig that change its answers; resuming across a change is refused.
_ANSWER_FIELDS = (
    "model", "method", "budget", "alpha", "l_init", "l_final", "newlines",
    "max_new_tokens", "temperature", "dtype", "seed",
)


@dataclass(frozen=True)
class EvalConfig:
    """An evaluation sweep. Validated at construction.

    Attributes:
        job: the job every setting runs: ``input`` is the labelled manifest, ``output`` the root
            folder (each setting writes to ``<output>/<setting name>``), ``limit`` the number of
            manifest rows to evaluate, ``resume`` whether to keep answers already written; its
            own method and budget are replaced by each setting's.
        settings: the grid, e.g. from :func:`sweep`.
        task: a task name; ``None`` takes the manifest's ``task`` column.
    """

    job: JobConfig
    settings: tuple[Setting, ...]
    task: str | None = None

    def __post_init__(self) -> None:
        if not self.settings:
            raise ValueError("an evaluation needs at least one setting")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"settings repeat: {names}")
        if self.task is not None:
            get_task(self.task)

    def setting_job(self, setting: Setting) -> JobConfig:
        """The job of one setting: its method, budget and folder; the manifest limit is applied
        when the rows are listed, not again by the job."""
        return dataclasses.replace(
            self.job,
            drop=setting.apply(self.job.drop),
            output=f"{self.job.output.rstrip('/')}/{setting.name}",
            limit=None,
        )


@dataclass
class SettingResult:
    """One setting's scores.

    Attributes:
        setting: the method and budget.
        output: its folder of Parquet answers.
        metrics: the task's headline numbers (:func:`pipeline.experiments.tasks.aggregate`), in [0, 1].
        scored_rows, failed_rows: rows scored; rows without an answer (image failed).
        visual_tokens_mean: visual tokens kept per image, over the scored rows.
        generated_tokens_per_s: of this run's job (rows resumed from earlier runs not counted).
        new_rows: rows answered by this run (the rest were resumed).
        run_id: the child MLflow run, ``None`` when not tracked.
        predictions: per row ``{"id", "prediction", "score"}``, or ``"error"`` for failed rows.
    """

    setting: Setting
    output: str
    metrics: dict[str, float]
    scored_rows: int
    failed_rows: int
    visual_tokens_mean: float | None
    generated_tokens_per_s: float
    new_rows: int
    run_id: str | None
    predictions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EvalReport:
    """A finished sweep: one :class:`SettingResult` per setting, in the sweep's order."""

    manifest: str
    task: TaskSpec
    results: list[SettingResult]
    parent_run_id: str | None = None

    @property
    def metric_names(self) -> list[str]:
        """Metric columns, the task's headline metric first."""
        names = list(dict.fromkeys(name for result in self.results for name in result.metrics))
        return sorted(names, key=lambda name: name != self.task.metric)

    def rows(self) -> list[dict[str, Any]]:
        """The table as dicts: setting, method, budget, visual tokens, metrics (fractions), counts."""
        return [
            {
                "setting": r.setting.name,
                "label": r.setting.label,
                "method": r.setting.method,
                "budget": r.setting.budget or "",
                "visual_tokens_mean": r.visual_tokens_mean,
                **{name: r.metrics.get(name) for name in self.metric_names},
                "scored_rows": r.scored_rows,
                "failed_rows": r.failed_rows,
                "generated_tokens_per_s": r.generated_tokens_per_s,
                "run_id": r.run_id or "",
            }
            for r in self.results
        ]

    def to_csv(self) -> str:
        """All columns, metrics as fractions in [0, 1]."""
        return csv_text(self.rows())

    def to_markdown(self) -> str:
        """The paper's Table 3 layout: one row per setting, metrics in percent."""
        header = ["Method", "visual tokens", *self.metric_names, "scored", "failed"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self.results:
            tokens = "-" if r.visual_tokens_mean is None else f"{r.visual_tokens_mean:.0f}"
            metrics = ["-" if r.metrics.get(n) is None else f"{100 * r.metrics[n]:.1f}" for n in self.metric_names]
            cells = [r.setting.label, tokens, *metrics, str(r.scored_rows), str(r.failed_rows)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _fingerprint(job: JobConfig, labelled: LabelledSet) -> dict[str, Any]:
    values = job.to_params()
    return {
        **{name: values[name] for name in _ANSWER_FIELDS},
        "task": labelled.task.name,
        "prompt_template": labelled.task.prompt_template,
    }


def _check_setting_folder(fs: fsspec.AbstractFileSystem, root: str, expected: dict[str, Any], resume: bool) -> None:
    """Refuse to resume into answers of another configuration; record this one."""
    path = f"{root}/{SETTING_FILE}"
    if resume and fs.exists(path):
        with fs.open(path, "r") as handle:
            found = json.load(handle)
        changed = sorted(key for key in set(found) | set(expected) if found.get(key) != expected.get(key))
        if changed:
            detail = ", ".join(f"{key}: {found.get(key)!r} there, {expected.get(key)!r} now" for key in changed)
            raise ValueError(
                f"{root} holds answers of another configuration ({detail}): choose another --output, "
                "or pass --no-resume to answer every row again"
            )
    fs.makedirs(root, exist_ok=True)
    with fs.open(path, "w") as handle:
        json.dump(expected, handle, indent=2)


def _earlier_answers(fs: fsspec.AbstractFileSystem, root: str, skip: set[str]) -> list[pa.Table]:
    """Rows written to ``root`` by earlier runs, ids in ``skip`` left out.

    Part files are named ``part-<start time>-...``, so in name order a later run's answer to
    an id replaces an earlier one's.
    """
    tables: list[pa.Table] = []
    for path in sorted(fs.glob(f"{root}/part-*.parquet")):
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
        tables.append(table.filter(pc.invert(pc.is_in(table["id"], value_set=pa.array(sorted(skip), pa.string())))))
    if not tables:
        return []
    merged = pa.concat_tables(tables, promote_options="permissive")
    latest = {row["id"]: row for row in merged.to_pylist()}
    return [pa.Table.from_pylist(list(latest.values()), schema=merged.schema)] if latest else []


def score_answers(labelled: LabelledSet, answers: pa.Table) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score a table of answers (``id``, ``text``, ``error`` columns) against the labels.

    Returns:
        ``(metrics, predictions)``: the task's headline numbers over the rows with an answer,
        plus ``scored_rows`` and ``failed_rows``; and per row of the set ``{"id", "prediction",
        "score"}`` (or ``{"id", "error"}``), in the set's order.

    Raises:
        RuntimeError: a row of the set has no answer row at all (a job must write one per input).
    """
    by_id = {row["id"]: row for row in answers.select(["id", "text", "error"]).to_pylist()}
    missing = [row.id for row in labelled.inputs if row.id not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} rows have no answer in the output (first: {missing[:3]})")
    predictions: list[dict[str, Any]] = []
    texts: list[str] = []
    scores: list[float] = []
    labels: list[Mapping[str, Any]] = []
    for row in labelled.inputs:
        answer = by_id[row.id]
        if answer["error"] is not None:
            predictions.append({"id": row.id, "error": answer["error"]})
            continue
        text = answer["text"] or ""
        score = labelled.task.score(text, labelled.labels[row.id])
        predictions.append({"id": row.id, "prediction": text, "score": score})
        texts.append(text)
        scores.append(score)
        labels.append(labelled.labels[row.id])
    metrics = aggregate(labelled.task, scores, texts, labels)
    metrics.update(scored_rows=float(len(scores)), failed_rows=float(len(predictions) - len(scores)))
    return metrics, predictions


def _run_setting(
    config: EvalConfig,
    labelled: LabelledSet,
    setting: Setting,
    tracking: TrackingConfig,
    parent: JobRun,
    dataset: InputDataset | str,
    on_progress: ProgressCallback | None = None,
) -> SettingResult:
    from pipeline.batch.driver import run_job

    job = config.setting_job(setting)
    fs, root = output_fs(job.output, job.storage_options)
    _check_setting_folder(fs, root, _fingerprint(job, labelled), job.resume)
    # the user's --run-name names the sweep's parent run; each child is named after its setting
    child_tracking = dataclasses.replace(tracking, run_name=None)
    title = f"evaluate {labelled.task.name}"
    with (
        track_job(child_tracking, job, dataset, SETTING_KIND, parent_run_id=parent.run_id, title=title) as tracker,
        tracker.live() as live,
    ):
        tracker.run.log_params(
            {
                "task": labelled.task.name,
                "setting": setting.name,
                "prompt_template": labelled.task.prompt_template,
                "rows": len(labelled.inputs),
            }
        )
        summary = run_job(job, rows=list(labelled.inputs), on_progress=both(live, on_progress))
        new_ids = set(summary.table.column("id").to_pylist())
        earlier = _earlier_answers(fs, root, new_ids) if job.resume else []
        answers = pa.concat_tables([*earlier, summary.table], promote_options="permissive")
        answers = answers.filter(pc.is_in(answers["id"], value_set=pa.array(list(labelled.labels), pa.string())))
        metrics, predictions = score_answers(labelled, answers)
        if metrics["failed_rows"]:
            logger.warning(
                "%s: %d rows had no answer (image failed) and are not scored", setting.name, metrics["failed_rows"]
            )
        chance = chance_level(labelled.task, list(labelled.labels.values()))
        extra = {**metrics, **({} if chance is None else {"chance": chance})}
        job_metrics = tracker.log_summary(summary, summary.figures, extra)
        tracker.run.log_json(predictions, PREDICTIONS_ARTIFACT)
    ok = answers.filter(pc.is_null(answers["error"]))
    tokens = pc.mean(ok["visual_tokens"]).as_py() if ok.num_rows else None
    return SettingResult(
        setting=setting,
        output=job.output,
        metrics={k: v for k, v in metrics.items() if k not in ("scored_rows", "failed_rows")},
        scored_rows=int(metrics["scored_rows"]),
        failed_rows=int(metrics["failed_rows"]),
        visual_tokens_mean=None if tokens is None else float(tokens),
        generated_tokens_per_s=job_metrics["generated_tokens_per_s"],
        new_rows=summary.table.num_rows,
        run_id=tracker.run.run_id,
        predictions=predictions,
    )


def describe_manifest(job: JobConfig) -> InputDataset:
    """The labelled manifest as an MLflow dataset input (a digest of its bytes, its row count)."""
    fs, path, _ = filesystem(job.input, job.storage_options)
    return describe_input(job.input, fs, path, is_image_path)


def run_evaluation(
    config: EvalConfig,
    tracking: TrackingConfig,
    on_result: Callable[[SettingResult], None] | None = None,
    watch: SettingWatcher | None = None,
) -> EvalReport:
    """Run every setting of the sweep on the labelled set and score it.

    Args:
        config: the sweep.
        tracking: where the parent and child runs go (its ``run_name`` names the parent).
        on_result: called after each setting, e.g. to print its scores.
        watch: called before each setting with a label saying which of how many it is (and the
            sweep's time left); returns the ``on_progress`` callback for that setting's job,
            e.g. a :class:`pipeline.tracking.live.ProgressPrinter`.

    Returns:
        the report, whose :meth:`EvalReport.to_markdown` is the Table-3-style table.
    """
    job = config.job
    labelled = load_labelled_set(job.input, config.task, job.storage_options, job.limit)
    dataset = describe_manifest(job) if tracking.enabled else labelled.manifest
    parent_tracking = dataclasses.replace(
        tracking,
        run_name=tracking.run_name or run_name(f"evaluate {labelled.task.name} sweep", None, None, job.model.name),
        tags={**tracking.tags, KIND_TAG: SWEEP_KIND},
        log_system_metrics=False,  # the child runs record the machine while the work happens
    )
    parent_params = {
        "task": labelled.task.name,
        "dataset": labelled.manifest,
        "model": job.model.name,
        "methods": ",".join(dict.fromkeys(s.method for s in config.settings)),
        "budgets": ",".join(dict.fromkeys(s.budget for s in config.settings if s.budget is not None)),
        "settings": ",".join(s.name for s in config.settings),
        "rows": len(labelled.inputs),
        "max_new_tokens": job.generate.max_new_tokens,
        "output": job.output,
    }
    results: list[SettingResult] = []
    started = time.monotonic()
    with start_job_run(parent_tracking, parent_params) as parent:
        if isinstance(dataset, InputDataset):
            log_input(parent, dataset, SWEEP_KIND)
        for index, setting in enumerate(config.settings):
            label = sweep_label(index, len(config.settings), setting.name, started, time.monotonic())
            watcher = watch(label) if watch is not None else None
            result = _run_setting(config, labelled, setting, tracking, parent, dataset, watcher)
            results.append(result)
            parent.log_metrics({f"{name}.{setting.name}": value for name, value in result.metrics.items()})
            if on_result is not None:
                on_result(result)
        report = EvalReport(labelled.manifest, labelled.task, results, parent.run_id)
        parent.log_text(report.to_csv(), TABLE_CSV)
        parent.log_text(report.to_markdown() + "\n", TABLE_MARKDOWN)
    return report
