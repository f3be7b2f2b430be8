"""The dataset job on Ray Data: read -> decode -> vision pool -> LLM pool -> write, all on the
cluster.

The driver plans the input (file listings and Parquet footers, never rows:
:mod:`pipeline.data.units`), holds the output folder's lease, and iterates one small row of counts
per Parquet file the workers wrote (:mod:`.output`), so its memory stays flat however large the
dataset. Each file is written whole, so an interrupted job leaves only whole files, and a re-run
skips every id already written.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import pickle
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.data.image_values import load_image
from pipeline.data.rows import InputRow
from pipeline.data.units import InputPlan, plan_inputs, plan_rows, read_unit
from pipeline.model.encoded import EncodedImage
from pipeline.model.loading import load_image_processor

from .columns import unpack_columns
from .config import JobConfig
from .lease import OutputLease
from .output import (
    clear_success,
    drop_error_rows,
    mark_success,
    output_fs,
    parquet_files,
    read_run,
    write_rows,
    written_ids,
)
from .processor import apply_stages
from .progress import Progress, ProgressCallback
from .reading import READ_CPUS, ROW_COLUMN, UNIT_COLUMN, read_dataset

logger = logging.getLogger(__name__)


@dataclass
class JobSummary:
    """What a finished job reports. ``table`` holds this run's rows (not earlier runs'), read
    back from the files this run wrote when first asked for."""

    output: str
    images: int
    skipped: int
    errors: int
    wall_s: float
    generated_tokens: int
    run_id: str = ""
    storage_options: dict[str, Any] | None = None
    actor_stats: list[dict[str, Any]] = field(default_factory=list)
    # wall-clock (start, end) of every actor call, per role: how much the two pools overlapped
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # a few (decoded image, kept-patch indices, id) for the kept-patch figures
    figures: list[tuple[Any, EncodedImage, str]] = field(default_factory=list)

    @cached_property
    def table(self) -> pa.Table:
        return read_run(self.output, self.storage_options, self.run_id)

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s else 0.0

    def busy_s(self, role: str) -> float:
        """Seconds the ``role`` pool ("vision" or "llm") had at least one call running."""
        return _length(_union(self.spans.get(role, [])))

    def overlap_s(self) -> float:
        """Seconds during which both pools were busy at once."""
        vision, llm = _union(self.spans.get("vision", [])), _union(self.spans.get("llm", []))
        return sum(max(0.0, min(b1, d1) - max(a0, c0)) for a0, b1 in vision for c0, d1 in llm)

    def record(self) -> dict[str, Any]:
        """What the ``_SUCCESS`` marker says of this run."""
        return {
            "run_id": self.run_id,
            "rows_written": self.images,
            "errors": self.errors,
            "rows_already_there": self.skipped,
            "rows_in_output": self.skipped + self.images,
            "generated_tokens": self.generated_tokens,
            "wall_s": round(self.wall_s, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def describe(self) -> str:
        return (
            f"{self.images} images ({self.skipped} already done, skipped) in {self.wall_s:.1f} s: "
            f"{self.images_per_s:.2f} images/s, {self.tokens_per_s:.1f} generated tokens/s, "
            f"{self.errors} errors. Output: {self.output}"
        )


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Merge overlapping ``(start, end)`` intervals."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(spans: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in spans)


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    # RAY_ADDRESS (a cluster, or "auto") is honoured by ray.init itself
    ray.init(
        include_dashboard=False,
        log_to_driver=os.environ.get("HIRED_RAY_LOGS", "0") == "1",
        # a job's own short temp dir: two local jobs never share sessions or sockets, and the
        # path stays under the OS limit for unix sockets
        _temp_dir=None if os.environ.get("RAY_ADDRESS") else tempfile.mkdtemp(prefix="hired-ray-", dir="/tmp"),
    )


def build_dataset(config: JobConfig, dataset: Any, image_processor: Any, writing: dict[str, Any]):
    """The lazy Ray Dataset of the job over ``dataset`` (rows of ``READ_SCHEMA``): the
    processor's stages, then write tasks over bundles of ``config.min_rows_per_file`` rows, one
    row of counts per file written (``writing``: run_id, figures and lease_owner).
    ``image_processor`` is the model's (see :func:`load_image_processor`)."""
    # The job's read and write tasks are left room beside the pools: Ray Data reserves each
    # operator's minimum from upstream down, and a write op left with no reservation is
    # "backpressured (ResourceBudget)" until the stages above it finish, so every file of a job
    # landed at its end (docs/benchmarks.md, issue 24).
    dataset = apply_stages(config, dataset, image_processor, figures=writing["figures"], spare_cpus=2 * READ_CPUS)
    return dataset.map_batches(
        write_rows,
        batch_size=config.min_rows_per_file,
        batch_format="pyarrow",
        # a quarter CPU, as the read tasks: a task reserving none may land on a head node that
        # offers no CPUs
        num_cpus=READ_CPUS,
        fn_kwargs={"config": config, "run_id": writing["run_id"], "lease_owner": writing["lease_owner"]},
    )


def _written(config: JobConfig) -> tuple[Any, int]:
    """A ref to the ids already in the output and their count, read by a Ray task."""
    import ray

    fs, root = output_fs(config.output, config.storage_options)
    if not config.resume or not parquet_files(fs, root):
        return pa.array([], pa.string()), 0
    ids, count = ray.remote(num_cpus=READ_CPUS, num_returns=2)(written_ids).remote(config.output, config.storage_options)
    return ids, ray.get(count)


def _to_do(plan: InputPlan, skipped: int, limit: int | None) -> int | None:
    """Rows this run sets out to write, when the plan knows its size."""
    left = None if plan.total is None else max(0, plan.total - skipped)
    if left is None:
        return 0 if limit == 0 else None
    return left if limit is None else min(left, limit)


def _figure(candidate: tuple[bytes | None, dict[str, Any]], config: JobConfig, plan: InputPlan) -> tuple[Any, EncodedImage, str] | None:
    """(image, kept indices, id) for a kept-patch figure. Pixels never travel to the driver, so
    the row is read again where the read tasks read it (its unit of the plan), and its image
    decoded as the decode tasks decode it: from the manifest's inline bytes, or from its path."""
    carried, columns = candidate
    if carried is None:
        return None
    row = unpack_columns([carried]).to_pylist()[0]
    encoded = EncodedImage.from_row({**columns, "enc_features": np.zeros((0, 0))})
    try:
        read = next(itertools.islice(read_unit(plan.uri, plan.units[row[UNIT_COLUMN]], config.storage_options), row[ROW_COLUMN], None))
        return load_image({"bytes": read.image_bytes, "path": read.path}, row["id"], config.storage_options, config.decode), encoded, row["id"]
    except Exception as error:  # figures are a nicety; the job's rows are already written
        logger.info("no kept-patch figure for %s: %s", row["id"], error)
        return None


def run_job(
    config: JobConfig,
    rows: list[InputRow] | None = None,
    figures: int = 4,
    on_progress: ProgressCallback | None = None,
) -> JobSummary:
    """Run a job to completion and return its summary; every input yields one output row.

    Args:
        rows: the inputs, when the caller has listed them (evaluation builds its prompts); by
            default ``config.input`` is read on the cluster.
        figures: how many images to keep for kept-patch figures.
        on_progress: called with the job's cumulative :class:`Progress` after each written file.

    Raises:
        InputError: the input is unusable (found before any model loads).
        OutputLocked: another job is writing ``config.output``.
    """
    start = time.perf_counter()
    plan = plan_rows(config.input, rows) if rows is not None else plan_inputs(config.input, config.storage_options)
    fs, root = output_fs(config.output, config.storage_options)
    fs.makedirs(root, exist_ok=True)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    summary = JobSummary(config.output, 0, 0, 0, 0.0, 0, run_id, config.storage_options)
    with OutputLease(fs, root) as lease:
        clear_success(fs, root)
        if config.retry_errors:
            logger.info("%d rows that ended in an error will be redone", drop_error_rows(fs, root))
        # a missing model fails here, in seconds, before Ray starts or any actor loads weights
        image_processor = load_image_processor(config.model.name)
        _init_ray()
        done, summary.skipped = _written(config)
        total = _to_do(plan, summary.skipped, config.limit)
        logger.info("%s inputs, %d already in %s", plan.total or "?", summary.skipped, config.output)
        if total != 0:
            writing = {"run_id": run_id, "figures": figures, "lease_owner": lease.owner}
            _run(config, plan, done, image_processor, writing, summary, total, on_progress, start)
        summary.wall_s = time.perf_counter() - start
        mark_success(fs, root, summary.record())
    return summary


def _run(
    config: JobConfig, plan: InputPlan, done: Any, image_processor: Any, writing: dict[str, Any],
    summary: JobSummary, total: int | None, on_progress: ProgressCallback | None, start: float,
) -> None:
    """Stream the job, filling ``summary`` from each written file's counts."""
    dataset = read_dataset(plan, config.storage_options, config.prompt, done)
    if config.limit is not None:
        dataset = dataset.limit(config.limit)
    dataset = build_dataset(config, dataset, image_processor, writing)
    progress = Progress(rows_total=total)
    peaks: dict[str, list[int]] = {}
    spans: dict[str, set[tuple[float, float]]] = {"vision": set(), "llm": set()}
    for stats in dataset.iter_rows():
        report = pickle.loads(stats["report"])
        progress = dataclasses.replace(
            progress,
            rows_done=progress.rows_done + int(stats["rows"]),
            errors=progress.errors + int(stats["errors"]),
            generated_tokens=progress.generated_tokens + int(stats["generated_tokens"]),
            visual_tokens=progress.visual_tokens + int(stats["visual_tokens"]),
            elapsed_s=time.perf_counter() - start,
        )
        if on_progress is not None:
            on_progress(progress)
        for role, role_spans in report["spans"].items():
            spans[role].update(tuple(span) for span in role_spans)
        for name, (accel, host) in report["peaks"].items():
            old = peaks.get(name, [0, 0])
            peaks[name] = [max(old[0], accel), max(old[1], host)]
        for candidate in report["figures"][: max(0, writing["figures"] - len(summary.figures))]:
            summary.figures += [f for f in [_figure(candidate, config, plan)] if f is not None]
        logger.info("%d/%s rows written", progress.rows_done, total if total is not None else "?")
    summary.images, summary.errors = progress.rows_done, progress.errors
    summary.generated_tokens = progress.generated_tokens
    summary.actor_stats = [
        {"actor": name, "peak_accelerator_bytes": accel, "peak_host_bytes": host} for name, (accel, host) in peaks.items()
    ]
    summary.spans = {role: sorted(values) for role, values in spans.items()}
