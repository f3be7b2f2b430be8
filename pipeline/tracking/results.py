"""Every job is one MLflow run: params, metrics, system metrics and artifacts.

A job does::

    config = TrackingConfig(experiment="captions", tracking_uri=args.tracking_uri)
    with start_job_run(config, {"model": ..., "method": ..., "budget": "0.2", ...}) as run:
        table, actor_stats = ...  # run the pipeline; each actor returns peak_memory_stats(name)
        log_job_results(run, table, wall_s, actor_stats, resolved_config, figure_images, geometry=geometry)

or, from the ``hired`` CLI's parsed arguments, :func:`track_job` does the same in two lines.

Where runs go: ``--tracking-uri`` if given, else ``MLFLOW_TRACKING_URI``, else a SQLite database
``mlflow.db`` in the working directory (MLflow 3's embedded default). Artifacts of SQLite-backed
experiments go to ``mlartifacts/<experiment>`` next to the database; a tracking server stores
them where its ``--artifacts-destination`` says.

The client API (:class:`mlflow.MlflowClient`) is used throughout rather than MLflow's fluent,
process-global active run: a driver can then track to two places, or run sweeps with nested
runs, without one run's state leaking into another's.

MLflow (~120 MiB, ~1 s) and matplotlib are imported only when a run is opened or drawn: every
actor imports this module for :func:`peak_memory_stats`, and must not pay, or report, that memory.

Params that ``hired compare`` reads by name: ``model``, ``method``, ``budget`` (as given: "0.2" is
a fraction, "576" a token count) and ``task`` (evaluation jobs). Metric names are listed in
:func:`job_metrics`. Artifacts of :func:`log_job_results`:

* ``config.json``: the job's resolved configuration;
* ``samples/outputs_sample.json``: the first rows of the output, without bulky columns;
* ``plots/visual_tokens_hist.png``: visual tokens kept per image;
* ``memory/actors.json``: each actor's peak memory (a table; the metrics sum it per pool);
* ``kept_patches/<NN>_<image id>.png``: kept patches drawn over each partition, for a few images.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from hired_ops.vision import VisionGeometry

from .datasets import InputDataset, log_input
from .job_metrics import actor_table, column_values, job_metrics
from .live import LiveMetrics
from .naming import run_name
from .runs import KIND_TAG, JobRun, TrackingConfig, start_job_run

if TYPE_CHECKING:

    from .figures import KeptPatches

logger = logging.getLogger(__name__)


CONFIG_ARTIFACT = "config.json"
SAMPLE_ARTIFACT = "samples/outputs_sample.json"
HISTOGRAM_ARTIFACT = "plots/visual_tokens_hist.png"
ACTORS_ARTIFACT = "memory/actors.json"
KEPT_PATCHES_DIR = "kept_patches"
SAMPLE_ROWS = 20
SAMPLE_TEXT_CHARS = 2000  # long generations are cut in the sample; the Parquet has them whole
SAMPLE_LIST_ITEMS = 64  # list columns longer than this (tensors, embeddings) stay out of the sample

_FILE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|webp|gif|bmp|tiff?)$", re.IGNORECASE)


def output_sample(table: pa.Table, rows: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """The first ``rows`` output rows as JSON-ready dicts, without bulky columns.

    Binary columns and list columns longer than :data:`SAMPLE_LIST_ITEMS` (features, tensors) are
    left out; strings are cut to :data:`SAMPLE_TEXT_CHARS` characters.
    """
    head = table.slice(0, rows)
    keep = []
    for name, column in zip(head.column_names, head.columns):
        kind = column.type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
            continue
        if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            lengths = pc.list_value_length(column).drop_null()
            if len(lengths) and pc.max(lengths).as_py() > SAMPLE_LIST_ITEMS:
                continue
        keep.append(name)
    sample = head.select(keep).to_pylist()
    for row in sample:
        for key, value in row.items():
            if isinstance(value, str) and len(value) > SAMPLE_TEXT_CHARS:
                row[key] = value[:SAMPLE_TEXT_CHARS] + "..."
    return sample


def _figure_name(index: int, image_id: str) -> str:
    # ids are often paths or URLs: keep them readable but flat, with an index for uniqueness
    safe = _FILE_NAME_UNSAFE.sub("_", _IMAGE_SUFFIX.sub("", image_id)).strip("._")[:80] or "image"
    return f"{KEPT_PATCHES_DIR}/{index:02d}_{safe}.png"


def log_job_results(
    run: JobRun,
    table: pa.Table,
    wall_s: float,
    actor_stats: Sequence[Mapping[str, Any]],
    config_dict: Mapping[str, Any],
    images_for_figures: Sequence[tuple[Image.Image, KeptPatches, str]] = (),
    extra_metrics: Mapping[str, float] | None = None,
    *,
    geometry: VisionGeometry | None = None,
) -> dict[str, float]:
    """Log a finished job's metrics and artifacts to its run.

    Args:
        run: from :func:`start_job_run`.
        table: the job's output rows (:data:`pipeline.batch.schema.OUTPUT_SCHEMA` columns).
        wall_s: the job's wall-clock time.
        actor_stats: each actor's :func:`peak_memory_stats`.
        config_dict: the job's resolved configuration (logged as ``config.json``).
        images_for_figures: ``(original image, its EncodedImage, image id)`` for the few images to
            draw kept patches for.
        extra_metrics: e.g. accuracy, logged as given.
        geometry: the model's vision geometry; ``None`` infers each image's layout (exact for
            14-pixel patches, see :func:`pipeline.tracking.figures.resolve_layout`).

    Returns:
        the metrics (computed even when tracking is disabled, so a job can print them).
    """
    metrics = job_metrics(table, wall_s, actor_stats, extra_metrics)
    if not run.enabled:
        return metrics
    from .figures import draw_kept_patches, tokens_histogram

    run.log_metrics(metrics)
    run.log_json(dict(config_dict), CONFIG_ARTIFACT)
    run.log_json(output_sample(table), SAMPLE_ARTIFACT)
    if actor_stats:
        run.log_table(actor_table(actor_stats), ACTORS_ARTIFACT)
    ok = table.filter(pc.is_null(table["error"]))
    run.log_figure(tokens_histogram(column_values(ok, "visual_tokens")), HISTOGRAM_ARTIFACT)
    for index, (image, encoded, image_id) in enumerate(images_for_figures):
        figure = draw_kept_patches(image, encoded, geometry, title=str(image_id))
        run.log_figure(figure, _figure_name(index, str(image_id)))
    return metrics


class JobSummaryLike(Protocol):
    """What :meth:`JobTracker.log_summary` reads from a finished job's summary."""

    table: pa.Table
    wall_s: float
    actor_stats: list[dict[str, Any]]


class JobConfigLike(Protocol):
    """A job configuration that renders itself as a plain dict, secrets already masked."""

    def to_dict(self) -> dict[str, Any]: ...

    def to_params(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class JobTracker:
    """What :func:`track_job` yields: the run, the job's resolved config to log with results, and
    how often its live metrics are logged."""

    run: JobRun
    config: dict[str, Any]
    live_interval_s: float = 0.0

    def live(self) -> LiveMetrics:
        """Live metrics for the job's run: ``with tracker.live() as watch: run_job(...,
        on_progress=watch)`` (see :mod:`pipeline.tracking.live`)."""
        return LiveMetrics(self.run, self.live_interval_s)

    def log_summary(
        self,
        summary: JobSummaryLike,
        images_for_figures: Sequence[tuple[Image.Image, KeptPatches, str]] = (),
        extra_metrics: Mapping[str, float] | None = None,
        *,
        geometry: VisionGeometry | None = None,
    ) -> dict[str, float]:
        """:func:`log_job_results` for a finished job's summary, plus the ``images`` param (known
        only now: resume and ``limit`` decide it); returns the metrics."""
        self.run.log_params({"images": summary.table.num_rows})
        return log_job_results(
            self.run,
            summary.table,
            summary.wall_s,
            summary.actor_stats,
            self.config,
            images_for_figures,
            extra_metrics,
            geometry=geometry,
        )


@contextmanager
def track_job(
    tracking: TrackingConfig,
    config: JobConfigLike,
    dataset: InputDataset | str,
    kind: str = "job",
    parent_run_id: str | None = None,
    title: str | None = None,
) -> Iterator[JobTracker]:
    """One run for a job: params are ``config.to_params()`` plus ``dataset`` (the input's URI),
    the run is tagged ``hired.kind = kind``, and :meth:`JobTracker.log_summary` logs
    ``config.to_dict()`` as its ``config.json``.

    An :class:`InputDataset` is also attached as the run's dataset input (context ``kind``).
    Unless ``tracking.run_name`` is set, the run is named after what runs (``title``, by
    default ``kind``; method and budget; model): see :func:`pipeline.tracking.naming.run_name`.
    """
    params = config.to_params()
    name = tracking.run_name or run_name(title or kind, params.get("method"), params.get("budget"), params.get("model"))
    tagged = replace(tracking, run_name=name, tags={**tracking.tags, KIND_TAG: kind})
    uri = dataset.uri if isinstance(dataset, InputDataset) else dataset
    with start_job_run(tagged, {**params, "dataset": uri}, parent_run_id) as run:
        if isinstance(dataset, InputDataset):
            log_input(run, dataset, kind)
        yield JobTracker(run, config.to_dict(), tracking.live_interval_s)
