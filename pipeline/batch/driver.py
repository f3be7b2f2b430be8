"""The dataset job on Ray Data: list inputs -> decode -> vision pool -> LLM pool -> Parquet.

The driver streams finished rows and writes each batch as its own Parquet file (written to a
temporary name and renamed on local disk; a single PUT on object stores), so an interrupted job
leaves only whole files, and a re-run skips every id already written.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.data.images import decode_image
from pipeline.data.rows import InputRow, row_bytes
from pipeline.data.sources import list_inputs
from pipeline.data.storage import resolve_storage_options
from pipeline.model.encoded import EncodedImage
from pipeline.model.loading import load_image_processor

from .config import JobConfig
from .progress import Progress, ProgressCallback
from .resources import ClusterShape, plan_resources
from .schema import OUTPUT_COLUMNS, OUTPUT_SCHEMA
from .stages import LLMStage, VisionStage, decode_batch

logger = logging.getLogger(__name__)


@dataclass
class JobSummary:
    """What a finished job reports. ``table`` holds this run's rows (not earlier runs')."""

    output: str
    images: int
    skipped: int
    errors: int
    wall_s: float
    generated_tokens: int
    table: pa.Table
    actor_stats: list[dict[str, Any]] = field(default_factory=list)
    # wall-clock (start, end) of every actor call, per role: how much the two pools overlapped
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # a few (decoded image, kept-patch indices, id) for the kept-patch figures
    figures: list[tuple[Any, EncodedImage, str]] = field(default_factory=list)

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


def _output_fs(config: JobConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(config.output, **resolve_storage_options(config.output, config.storage_options))
    return fs, path.rstrip("/")


def written_ids(fs: fsspec.AbstractFileSystem, root: str) -> set[str]:
    """Ids in the Parquet files already under ``root``; unreadable files are reported and ignored."""
    if not fs.exists(root):
        return set()
    ids: set[str] = set()
    for path in sorted(fs.glob(f"{root}/*.parquet")):
        try:
            with fs.open(path, "rb") as handle:
                ids.update(pq.read_table(handle, columns=["id"]).column("id").to_pylist())
        except Exception as error:  # a foreign or damaged file: its rows will be redone
            logger.warning("ignoring unreadable output file %s: %s", path, error)
    return ids


def write_part(fs: fsspec.AbstractFileSystem, root: str, name: str, table: pa.Table) -> str:
    """Write one Parquet file so that readers never see it half-written."""
    final = f"{root}/{name}"
    if isinstance(fs, LocalFileSystem):
        temporary = f"{root}/.{name}.tmp"
        with fs.open(temporary, "wb") as handle:
            pq.write_table(table, handle)
        fs.mv(temporary, final)
    else:
        with fs.open(final, "wb") as handle:
            pq.write_table(table, handle)
    return final


def _to_table(batch: dict[str, np.ndarray], config: JobConfig) -> pa.Table:
    """The output columns of a finished batch, typed by :data:`OUTPUT_SCHEMA`."""
    count = len(batch["id"])
    height_width = np.asarray([np.asarray(s) for s in batch["image_size"]]).reshape(count, 2)
    columns: dict[str, Any] = {
        "method": [config.drop.method] * count,
        "budget": [None if config.drop.budget is None else str(config.drop.budget)] * count,
        "image_height": height_width[:, 0],
        "image_width": height_width[:, 1],
        "partition_budgets": [np.asarray(b, dtype=np.int32).tolist() for b in batch["partition_budgets"]],
    }
    arrays = []
    for name in OUTPUT_COLUMNS:
        values = columns[name] if name in columns else batch[name]
        if isinstance(values, np.ndarray) and values.dtype == object:
            values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]
        arrays.append(pa.array(values, type=OUTPUT_SCHEMA.field(name).type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=OUTPUT_SCHEMA)


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


def _rows_for_ray(rows: list[InputRow], default_prompt: str) -> list[dict[str, Any]]:
    items = []
    for row in rows:
        item = {"id": row.id, "path": row.path, "prompt": row.prompt or row.question or default_prompt}
        if row.image_bytes is not None:
            item["image_bytes"] = row.image_bytes
        items.append(item)
    if any("image_bytes" in item for item in items):
        for item in items:
            item.setdefault("image_bytes", None)
    return items


def build_dataset(config: JobConfig, rows: list[InputRow], image_processor: Any):
    """The lazy Ray Dataset of the job's stages over ``rows``; ``image_processor`` is the model's
    (see :func:`load_image_processor`), shipped to the decode tasks."""
    import ray

    plan = plan_resources(config, ClusterShape.from_ray())
    blocks = max(1, min(len(rows) // config.decode_batch_size, 2000))
    dataset = ray.data.from_items(_rows_for_ray(rows, config.prompt), override_num_blocks=blocks)
    dataset = dataset.map_batches(
        decode_batch,
        batch_size=config.decode_batch_size,
        batch_format="numpy",
        num_cpus=plan.decode_cpus,
        fn_kwargs={"image_processor": image_processor, "limits": config.decode, "storage_options": config.storage_options},
    )
    for stage, pool in ((VisionStage, config.vision), (LLMStage, config.llm)):
        resources = getattr(plan, stage.role)
        dataset = dataset.map_batches(
            stage,
            batch_size=pool.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool.size),
            num_gpus=resources.num_gpus or None,
            num_cpus=resources.num_cpus,
            fn_constructor_kwargs={"config": config, "threads": resources.threads},
        )
    return dataset


def _figure_inputs(
    batch: dict[str, np.ndarray], rows: dict[str, InputRow], config: JobConfig, wanted: int
) -> list[tuple[Any, EncodedImage, str]]:
    """Up to ``wanted`` successful rows of ``batch`` as (image, kept indices, id); the image is
    read again here because pixels never travel to the driver."""
    out = []
    for i, row_id in enumerate(batch["id"]):
        if len(out) >= wanted:
            break
        if isinstance(batch["error"][i], str) and batch["error"][i]:
            continue
        row = rows[str(row_id)]
        encoded = EncodedImage.from_row(
            {**{k: batch[k][i] for k in batch if k.startswith("enc_")}, "enc_features": np.zeros((0, 0))}
        )
        try:
            data = row_bytes(row.path, row.image_bytes, config.storage_options)
            out.append((decode_image(data, row.path, config.decode), encoded, str(row_id)))
        except Exception as error:  # figures are a nicety; the job's rows are already written
            logger.warning("no kept-patch figure for %s: %s", row_id, error)
    return out


def run_job(
    config: JobConfig,
    rows: list[InputRow] | None = None,
    figures: int = 4,
    on_progress: ProgressCallback | None = None,
) -> JobSummary:
    """Run a job to completion and return its summary; every input yields one output row.

    Args:
        rows: the inputs, when the caller has listed them (evaluation builds its prompts); by
            default ``config.input`` is listed.
        figures: how many images to keep for kept-patch figures.
        on_progress: called with the job's cumulative :class:`Progress` after each written batch.
    """
    start = time.perf_counter()
    rows = list_inputs(config.input, config.storage_options) if rows is None else rows
    fs, root = _output_fs(config)
    done = written_ids(fs, root) if config.resume else set()
    todo = [row for row in rows if row.id not in done]
    skipped = len(rows) - len(todo)  # already written; rows that --limit leaves for later are not
    if config.limit is not None:
        todo = todo[: config.limit]
    logger.info("%d inputs, %d already in %s, %d to do", len(rows), skipped, config.output, len(todo))
    fs.makedirs(root, exist_ok=True)
    tables: list[pa.Table] = []
    figure_inputs: list[tuple[Any, EncodedImage, str]] = []
    by_id = {row.id: row for row in todo}
    peaks: dict[str, dict[str, Any]] = defaultdict(dict)
    spans: dict[str, set[tuple[float, float]]] = {"vision": set(), "llm": set()}
    if todo:
        # a missing model fails here, in seconds, before Ray starts or any actor loads weights
        image_processor = load_image_processor(config.model.name)
        _init_ray()
        dataset = build_dataset(config, todo, image_processor)
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        progress = Progress(rows_total=len(todo))
        for number, batch in enumerate(dataset.iter_batches(batch_size=None, batch_format="numpy")):
            table = _to_table(batch, config)
            write_part(fs, root, f"part-{run_id}-{number:05d}.parquet", table)
            tables.append(table)
            progress = progress.after(table, time.perf_counter() - start)
            if on_progress is not None:
                on_progress(progress)
            if len(figure_inputs) < figures:
                figure_inputs += _figure_inputs(batch, by_id, config, figures - len(figure_inputs))
            for role in ("vision", "llm"):
                spans[role].update(tuple(span) for span in np.asarray(batch[f"{role}_span"]).tolist())
                for name, accel, host in zip(
                    batch[f"{role}_actor"], batch[f"{role}_peak_accel"], batch[f"{role}_peak_host"]
                ):
                    stats = peaks[str(name)]
                    stats["actor"] = str(name)
                    stats["peak_accelerator_bytes"] = max(int(accel), stats.get("peak_accelerator_bytes", 0))
                    stats["peak_host_bytes"] = max(int(host), stats.get("peak_host_bytes", 0))
            logger.info("%d/%d rows written", progress.rows_done, len(todo))
    table = pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()
    failed = table.num_rows - table.column("error").null_count
    return JobSummary(
        output=config.output,
        images=table.num_rows,
        skipped=skipped,
        errors=failed,
        wall_s=time.perf_counter() - start,
        generated_tokens=int(pc.sum(table.column("generated_tokens")).as_py() or 0),
        table=table,
        actor_stats=list(peaks.values()),
        spans={role: sorted(values) for role, values in spans.items()},
        figures=figure_inputs,
    )
