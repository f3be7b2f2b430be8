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
* ``kept_patches/<NN>_<image id>.png``: kept patches drawn over each partition, for a few images.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from hired_ops.vision import VisionGeometry

if TYPE_CHECKING:
    import argparse

    from matplotlib.figure import Figure
    from mlflow import MlflowClient

    from .visualize import KeptPatches

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "hired"
PACKAGE = "hired-ray"
REPO_DIR = Path(__file__).resolve().parents[1]
# Tag that marks what kind of run this is, so `hired compare` can leave its own runs out.
KIND_TAG = "hired.kind"

CONFIG_ARTIFACT = "config.json"
SAMPLE_ARTIFACT = "samples/outputs_sample.json"
HISTOGRAM_ARTIFACT = "plots/visual_tokens_hist.png"
KEPT_PATCHES_DIR = "kept_patches"
SAMPLE_ROWS = 20
SAMPLE_TEXT_CHARS = 2000  # long generations are cut in the sample; the Parquet has them whole
SAMPLE_LIST_ITEMS = 64  # list columns longer than this (tensors, embeddings) stay out of the sample

MIB = 2**20
# Characters MLflow accepts in metric names; actor names are free-form, so the rest become "_".
_METRIC_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /:]")
_FILE_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|webp|gif|bmp|tiff?)$", re.IGNORECASE)

# Columns job_metrics reads; a table without them is not a job's output.
_METRIC_COLUMNS = (
    "error",
    "visual_tokens",
    "generated_tokens",
    "ttft_s",
    "decode_s",
    "vision_s",
    "generate_s",
    "padding_fraction",
    "feature_bytes",
)


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how a job's run is recorded. Validated at construction.

    Attributes:
        tracking_uri: an MLflow tracking URI (``sqlite:///path/mlflow.db``, ``http://host:5000``,
            ...). ``None`` resolves to :func:`default_tracking_uri` when the config is built.
        experiment: experiment name; created on first use.
        run_name: the run's name; ``None`` lets MLflow pick one.
        tags: extra run tags.
        enabled: ``False`` records nothing (the run object's methods do nothing).
        log_system_metrics: sample CPU, memory, disk, network (and NVIDIA GPU with ``pynvml``) of
            the driver into ``system/*`` metrics, every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
            seconds (10 by default). Needs ``psutil``; without it a warning is logged and the job
            goes on. Actors' memory is not seen here: see :func:`peak_memory_stats`.
    """

    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    enabled: bool = True
    log_system_metrics: bool = True

    def __post_init__(self) -> None:
        uri = (self.tracking_uri or default_tracking_uri()).strip()
        if uri != "databricks" and not urlparse(uri).scheme:
            raise ValueError(
                f"tracking URI {uri!r} is not a URI: use e.g. sqlite:///path/to/mlflow.db or http://host:5000"
            )
        object.__setattr__(self, "tracking_uri", uri)
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise ValueError(f"experiment must be a non-empty name, got {self.experiment!r}")
        if self.run_name is not None and not str(self.run_name).strip():
            raise ValueError("run_name must be None or a non-empty name")
        bad = [key for key, value in self.tags.items() if not isinstance(key, str) or not isinstance(value, str)]
        if bad:
            raise ValueError(f"tags must map strings to strings; offending keys: {bad}")
        object.__setattr__(self, "tags", dict(self.tags))

    @property
    def sqlite_path(self) -> Path | None:
        """The database file of a ``sqlite:`` URI (absolute), ``None`` for other stores."""
        parsed = urlparse(self.tracking_uri)
        if parsed.scheme != "sqlite":
            return None
        # sqlite:///rel.db -> path "/rel.db" (relative); sqlite:////abs.db -> "//abs.db" (absolute)
        path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
        if not path or path == ":memory:":
            return None
        return Path(path).resolve()

    @property
    def artifact_location(self) -> str | None:
        """Where a new experiment keeps its artifacts: beside a SQLite database; ``None`` lets the
        server (or MLflow's default) decide."""
        db = self.sqlite_path
        return (db.parent / "mlartifacts" / self.experiment).as_uri() if db else None


def open_client(config: TrackingConfig, must_exist: bool = False) -> MlflowClient:
    """An MLflow client for the config's tracking URI.

    With ``must_exist``, a SQLite store that is not there is an error rather than a new, empty
    database (which MLflow would silently create): for readers such as ``hired compare``.
    """
    db = config.sqlite_path
    if must_exist and db is not None and not db.exists():
        raise ValueError(
            f"no MLflow database at {db}: run a job first, or pass --tracking-uri (or set MLFLOW_TRACKING_URI)"
        )
    # MLflow starts its telemetry client when first imported, and jobs also start from Python, not
    # only from the CLI (which sets this too): the switch must be in place before that import.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(config.tracking_uri)


@dataclass(frozen=True)
class JobRun:
    """The active run a job logs to. With tracking disabled every method does nothing.

    Attributes:
        client: the MLflow client bound to the tracking URI (``None`` when disabled).
        run_id, experiment_id: the run's ids (``None`` when disabled).
        tracking_uri: where the run lives.
    """

    client: MlflowClient | None
    run_id: str | None
    experiment_id: str | None
    tracking_uri: str | None

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values as strings; over-long ones cut to MLflow's limit, with a warning)."""
        if self.client is None:
            return
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        entries = [Param(str(key), _param_value(str(key), value)) for key, value in params.items()]
        for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log metrics at one timestamp and step."""
        if self.client is None:
            return
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        entries = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start : start + MAX_METRICS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.client is None:
            return
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.client is None:
            return
        self.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, obj: Any, artifact_file: str) -> None:
        """Log ``obj`` as indented JSON; values JSON cannot hold (paths, dates) become strings."""
        self.log_text(json.dumps(obj, indent=2, default=str), artifact_file)

    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        if self.client is None:
            return
        self.client.log_figure(self.run_id, figure, artifact_file, save_kwargs={"dpi": 100})

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        if self.client is None:
            return
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)


def _param_value(key: str, value: Any) -> str:
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    text = str(value)
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        return text
    logger.warning("param %r is %d characters; logging the first %d", key, len(text), MAX_PARAM_VAL_LENGTH)
    return text[: MAX_PARAM_VAL_LENGTH - 3] + "..."


def package_version() -> str:
    """Installed version of this package, ``"unknown"`` when running from an uninstalled tree."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """``HEAD`` of the repository this code runs from, ``"unknown"`` outside one.

    Only a checkout's own ``.git`` counts: an installed copy inside some other repository (a venv
    in a project folder) must not report that project's commit.
    """
    if not (REPO_DIR / ".git").exists():
        return "unknown"
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def _ensure_experiment(client: MlflowClient, config: TrackingConfig) -> str:
    """Id of the config's experiment, created (with its artifact location) if missing."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        try:
            return client.create_experiment(config.experiment, artifact_location=config.artifact_location)
        except MlflowException as error:
            # another job created it between our lookup and create: use theirs
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment = client.get_experiment_by_name(config.experiment)
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"experiment {config.experiment!r} at {config.tracking_uri} is deleted: restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another name"
        )
    return experiment.experiment_id


def _start_system_metrics(run_id: str, tracking_uri: str):
    """A started MLflow system-metrics monitor for the run, or ``None`` if it cannot run here."""
    if importlib.util.find_spec("psutil") is None:
        logger.warning("system metrics are off: install psutil to record CPU, memory, disk and GPU use")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


@contextmanager
def start_job_run(
    config: TrackingConfig, params: Mapping[str, Any], parent_run_id: str | None = None
) -> Iterator[JobRun]:
    """Open one MLflow run for a job; it ends FINISHED, FAILED (exception) or KILLED (Ctrl-C).

    Args:
        config: where to track.
        params: the job's parameters. Jobs pass ``model``, ``method``, ``budget``, ``alpha``,
            ``l_init``, ``l_final``, pool sizes, batch sizes, ``dataset`` and ``images``;
            ``package_version`` and ``git_commit`` are added unless given.
        parent_run_id: make this a nested child run (for sweeps); the parent must be in the same
            experiment.

    Yields:
        the :class:`JobRun` to log to.
    """
    if not config.enabled:
        yield JobRun(None, None, None, None)
        return
    client = open_client(config)
    from mlflow.entities import RunStatus
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    experiment_id = _ensure_experiment(client, config)
    tags = resolve_tags(dict(config.tags))  # adds user, source and git tags as mlflow.start_run does
    if parent_run_id is not None:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException as error:
            raise ValueError(f"parent run {parent_run_id!r} not found at {config.tracking_uri}") from error
        if parent.info.experiment_id != experiment_id:
            raise ValueError(
                f"parent run {parent_run_id!r} is in experiment {parent.info.experiment_id}, "
                f"not in {config.experiment!r} ({experiment_id}): nested runs share their parent's experiment"
            )
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    info = client.create_run(experiment_id, tags=tags, run_name=config.run_name).info
    run = JobRun(client, info.run_id, experiment_id, config.tracking_uri)
    monitor = _start_system_metrics(info.run_id, config.tracking_uri) if config.log_system_metrics else None
    status = RunStatus.FAILED
    try:
        run.log_params({"package_version": package_version(), "git_commit": git_commit(), **params})
        yield run
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    finally:
        if monitor is not None:
            monitor.finish()  # flush its last samples while the run still accepts them
        client.set_terminated(info.run_id, RunStatus.to_string(status))


def peak_memory_stats(actor_name: str) -> dict[str, Any]:
    """This process's peak memory, for an actor to report (MLflow only watches the driver).

    Returns:
        ``{"actor": actor_name, "peak_accelerator_bytes": int, "peak_host_bytes": int}``: the most
        memory torch allocated on the process's CUDA devices (summed over devices; 0 without CUDA)
        and the process's peak resident set size.
    """
    accelerator = 0
    torch = sys.modules.get("torch")  # an actor that never imported torch used no accelerator
    if torch is not None and torch.cuda.is_available():
        accelerator = sum(torch.cuda.max_memory_allocated(device) for device in range(torch.cuda.device_count()))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    host = peak_rss if sys.platform == "darwin" else peak_rss * 1024  # Linux reports KiB, macOS bytes
    return {"actor": actor_name, "peak_accelerator_bytes": int(accelerator), "peak_host_bytes": int(host)}


def _float_values(table: pa.Table, column: str) -> np.ndarray:
    """Non-null values of a column as float64."""
    return np.asarray(table[column].drop_null().to_numpy(), dtype=np.float64)


def job_metrics(
    table: pa.Table,
    wall_s: float,
    actor_stats: Sequence[Mapping[str, Any]],
    extra_metrics: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """A job's metrics from its output rows (one per input image, failed rows included).

    Rows count as failed when ``error`` is not null; the quality and latency numbers are over the
    successful rows only, and a metric with no value to stand on (every row failed) is left out.
    Percentiles interpolate linearly (numpy's default). Memory is in MiB.

    Metrics:
        ``images``, ``errors``, ``wall_s``;
        ``images_per_s`` (successful images / wall_s), ``generated_tokens_per_s``;
        ``ttft_p50_s``, ``ttft_p95_s``; ``latency_p50_s``, ``latency_p95_s`` (per image
        ``decode_s + vision_s + generate_s``);
        ``visual_tokens_mean``, ``visual_tokens_min``, ``visual_tokens_max``;
        ``padding_fraction_mean``, ``feature_bytes_mean``;
        ``peak_accel_mem_mb.<actor>``, ``peak_host_mem_mb.<actor>``, ``peak_accel_mem_mb_max``,
        ``peak_host_mem_mb_max`` (from ``actor_stats``, items as :func:`peak_memory_stats` returns);
        and ``extra_metrics`` (e.g. accuracy) passed through.
    """
    if wall_s <= 0:
        raise ValueError(f"wall_s must be positive, got {wall_s}")
    missing = [name for name in _METRIC_COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(f"the output table lacks columns {missing}; see pipeline.schema.OUTPUT_SCHEMA")
    ok = table.filter(pc.is_null(table["error"]))
    metrics: dict[str, float] = {
        "images": float(table.num_rows),
        "errors": float(table.num_rows - ok.num_rows),
        "wall_s": float(wall_s),
        "images_per_s": ok.num_rows / wall_s,
        "generated_tokens_per_s": float(_float_values(ok, "generated_tokens").sum()) / wall_s,
    }
    ttft = _float_values(ok, "ttft_s")
    if ttft.size:
        metrics["ttft_p50_s"], metrics["ttft_p95_s"] = (float(v) for v in np.percentile(ttft, [50, 95]))
    timed = ok.filter(
        pc.and_(pc.and_(pc.is_valid(ok["decode_s"]), pc.is_valid(ok["vision_s"])), pc.is_valid(ok["generate_s"]))
    )
    if timed.num_rows:
        latency = sum(_float_values(timed, name) for name in ("decode_s", "vision_s", "generate_s"))
        metrics["latency_p50_s"], metrics["latency_p95_s"] = (float(v) for v in np.percentile(latency, [50, 95]))
    tokens = _float_values(ok, "visual_tokens")
    if tokens.size:
        metrics.update(
            visual_tokens_mean=float(tokens.mean()),
            visual_tokens_min=float(tokens.min()),
            visual_tokens_max=float(tokens.max()),
        )
    for column in ("padding_fraction", "feature_bytes"):
        values = _float_values(ok, column)
        if values.size:
            metrics[f"{column}_mean"] = float(values.mean())
    metrics.update(_memory_metrics(actor_stats))
    clash = sorted(set(extra_metrics or {}) & set(metrics))
    if clash:
        raise ValueError(f"extra metrics {clash} would overwrite metrics computed from the output table")
    metrics.update({key: float(value) for key, value in (extra_metrics or {}).items()})
    return metrics


def _memory_metrics(actor_stats: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for stats in actor_stats:
        try:
            name = _METRIC_NAME_UNSAFE.sub("_", str(stats["actor"]))
            accel, host = stats["peak_accelerator_bytes"] / MIB, stats["peak_host_bytes"] / MIB
        except KeyError as error:
            raise ValueError(
                f"actor stats need 'actor', 'peak_accelerator_bytes' and 'peak_host_bytes' "
                f"(see peak_memory_stats); got keys {sorted(stats)}"
            ) from error
        # several reports from one actor (one per batch, say): its peak is the largest
        metrics[f"peak_accel_mem_mb.{name}"] = max(accel, metrics.get(f"peak_accel_mem_mb.{name}", 0.0))
        metrics[f"peak_host_mem_mb.{name}"] = max(host, metrics.get(f"peak_host_mem_mb.{name}", 0.0))
    if actor_stats:
        metrics["peak_accel_mem_mb_max"] = max(v for k, v in metrics.items() if k.startswith("peak_accel_mem_mb."))
        metrics["peak_host_mem_mb_max"] = max(v for k, v in metrics.items() if k.startswith("peak_host_mem_mb."))
    return metrics


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
        table: the job's output rows (:data:`pipeline.schema.OUTPUT_SCHEMA` columns).
        wall_s: the job's wall-clock time.
        actor_stats: each actor's :func:`peak_memory_stats`.
        config_dict: the job's resolved configuration (logged as ``config.json``).
        images_for_figures: ``(original image, its EncodedImage, image id)`` for the few images to
            draw kept patches for.
        extra_metrics: e.g. accuracy, logged as given.
        geometry: the model's vision geometry; ``None`` infers each image's layout (exact for
            14-pixel patches, see :func:`pipeline.visualize.resolve_layout`).

    Returns:
        the metrics (computed even when tracking is disabled, so a job can print them).
    """
    metrics = job_metrics(table, wall_s, actor_stats, extra_metrics)
    if not run.enabled:
        return metrics
    from .visualize import draw_kept_patches, tokens_histogram

    run.log_metrics(metrics)
    run.log_json(dict(config_dict), CONFIG_ARTIFACT)
    run.log_json(output_sample(table), SAMPLE_ARTIFACT)
    ok = table.filter(pc.is_null(table["error"]))
    run.log_figure(tokens_histogram(_float_values(ok, "visual_tokens")), HISTOGRAM_ARTIFACT)
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


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as flat MLflow params: ``{"vision": {"size": 2}}`` -> ``{"vision.size": 2}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class JobTracker:
    """What :func:`track_job` yields: the run, and the job's resolved config to log with results."""

    run: JobRun
    config: dict[str, Any]

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
    args: argparse.Namespace, config: JobConfigLike, dataset: str, parent_run_id: str | None = None
) -> Iterator[JobTracker]:
    """One run for a CLI job, from its parsed arguments.

    Reads ``args.tracking_uri``, ``args.experiment``, ``args.run_name``, ``args.tracking`` (False:
    record nothing) and ``args.command`` (tagged as ``hired.kind``). Params are the flattened
    ``config.to_dict()`` plus ``dataset``.
    """
    tracking = TrackingConfig(
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        run_name=args.run_name,
        tags={KIND_TAG: str(getattr(args, "command", None) or "job")},
        enabled=args.tracking,
    )
    resolved = config.to_dict()
    with start_job_run(tracking, {**flatten_params(resolved), "dataset": dataset}, parent_run_id) as run:
        yield JobTracker(run, resolved)
