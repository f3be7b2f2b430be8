"""MLflow runs: where they go (``TrackingConfig``), opening one per job, logging through the
client API (not the fluent, process-global active run, so sweeps nest and nothing leaks)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:

    from matplotlib.figure import Figure
    from mlflow import MlflowClient


logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "hired"
PACKAGE = "hired-ray"
REPO_DIR = Path(__file__).resolve().parents[2]
# Tag that marks what kind of run this is, so `hired compare` can leave its own runs out.
KIND_TAG = "hired.kind"
# MLflow 3's UI opens an experiment in its GenAI view unless this tag names the model-training
# kind, whose view charts and compares runs; MLflow's Python API has no constant for it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


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
        run_name: the run's name; ``None`` names it after what ran (see
            :func:`pipeline.tracking.naming.run_name`).
        tags: extra run tags.
        enabled: ``False`` records nothing (the run object's methods do nothing).
        log_system_metrics: sample CPU, memory, disk, network (and NVIDIA GPU with ``pynvml``) of
            the driver into ``system/*`` metrics, every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
            seconds (10 by default). Needs ``psutil``; without it a warning is logged and the job
            goes on. Actors' memory is not seen here: see :func:`peak_memory_stats`.
        live_interval_s: while a job runs, seconds between steps of its live metrics (rows done,
            images/s, ...; see :mod:`pipeline.tracking.live`); 0 logs none.
    """

    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    enabled: bool = True
    log_system_metrics: bool = True
    live_interval_s: float = 5.0

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
        if not self.live_interval_s >= 0:
            raise ValueError(f"live_interval_s must be >= 0 (0 turns live metrics off), got {self.live_interval_s}")

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


# MLflow rejects metric names with characters other than these; setting names such as "prumerge+"
# end up in metric names (the sweep's parent logs ``accuracy.prumerge+``)
_METRIC_UNSAFE = re.compile(r"[^\w\-. :/]")


def metric_key(name: str) -> str:
    """``name`` as a metric name MLflow accepts: ``+`` spelled ``_plus``, other characters it
    rejects as ``_`` (``accuracy.prumerge+`` -> ``accuracy.prumerge_plus``)."""
    return _METRIC_UNSAFE.sub("_", name.replace("+", "_plus"))


@dataclass(frozen=True)
class JobRun:
    """The active run a job logs to. With tracking disabled every method does nothing.

    Attributes:
        client: the MLflow client bound to the tracking URI (``None`` when disabled).
        run_id, experiment_id: the run's ids (``None`` when disabled).
        tracking_uri: where the run lives.
        name: the run's name.
    """

    client: MlflowClient | None
    run_id: str | None
    experiment_id: str | None
    tracking_uri: str | None
    name: str | None = None

    @property
    def enabled(self) -> bool:
        return self.client is not None

    @property
    def ui_url(self) -> str | None:
        """The run's page in the MLflow UI of an ``http(s)`` tracking server, in the UI's
        model-training view (the UI's own switch defaults to its GenAI view); ``None`` for other
        stores (``mlflow ui --backend-store-uri <uri>`` serves those)."""
        if self.run_id is None or urlparse(self.tracking_uri or "").scheme not in ("http", "https"):
            return None
        route = f"experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{self.tracking_uri.rstrip('/')}/#/{route}?workflowType=machine_learning"

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
        self.log_steps([(metrics, step)])

    def log_steps(self, steps: Sequence[tuple[Mapping[str, float], int]]) -> None:
        """Log several steps' metrics in as few requests as MLflow's batch limit allows."""
        if self.client is None:
            return
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        entries = [Metric(metric_key(key), float(value), now, step) for metrics, step in steps for key, value in metrics.items()]
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

    def log_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        """A table (columns of equal length) as a JSON artifact the MLflow UI shows as a table."""
        if self.client is None:
            return
        self.client.log_table(self.run_id, dict(data), artifact_file)

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
    """Id of the config's experiment, created (with its artifact location) if missing.

    The experiment is marked as MLflow's model-training kind (:data:`TRAINING_KIND`), so the UI
    opens it where runs are charted and compared; a kind the user already gave it is kept.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        try:
            return client.create_experiment(
                config.experiment,
                artifact_location=config.artifact_location,
                tags={EXPERIMENT_KIND_TAG: TRAINING_KIND},
            )
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
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
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
    run = JobRun(client, info.run_id, experiment_id, config.tracking_uri, info.run_name)
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
