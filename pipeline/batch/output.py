"""The job's output folder: Parquet files written whole by the workers, the ids already written
(resume), and rows that ended in an error taken out again (``--retry-errors``).

Ray Data's ``write_parquet`` writes each block whole too, but gives the driver nothing per file:
the LLM actors write here instead, so each written file sends back one small row of counts
(progress, metrics) while the output rows stay on the workers. Ray Data's job checkpointing
(``CheckpointConfig``, beta) needs its own write sink at the end of the pipeline, so resume filters
the read rows by the ids already written, inside the read tasks.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.data.storage import resolve_storage_options

from .config import JobConfig
from .lease import check_holder
from .schema import OUTPUT_COLUMNS, OUTPUT_SCHEMA
from .stages import LLMStage

logger = logging.getLogger(__name__)

# columns of the small row each written file sends back to the driver
STATS_COLUMNS = ("rows", "errors", "generated_tokens", "visual_tokens", "report")


def output_fs(output: str, storage_options: dict | None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(output, **resolve_storage_options(output, storage_options))
    return fs, path.rstrip("/")


def parquet_files(fs: fsspec.AbstractFileSystem, root: str, pattern: str = "*.parquet") -> list[str]:
    fs.invalidate_cache()
    return sorted(fs.glob(f"{root}/{pattern}")) if fs.exists(root) else []


def written_ids(output: str, storage_options: dict | None) -> tuple[pa.Array, int]:
    """Ids in the Parquet files already under ``output`` and how many (unreadable files are
    reported and ignored: their rows will be redone). Run as a Ray task with two returns, so the
    driver holds only the count."""
    fs, root = output_fs(output, storage_options)
    chunks = []
    for path in parquet_files(fs, root):
        try:
            with fs.open(path, "rb") as handle:
                chunks.append(pq.read_table(handle, columns=["id"]).column("id").combine_chunks())
        except Exception as error:  # a foreign or damaged file
            logger.warning("ignoring unreadable output file %s: %s", path, error)
    ids = pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())
    return ids, len(ids)


def drop_error_rows(fs: fsspec.AbstractFileSystem, root: str) -> int:
    """Take the rows that ended in an error out of their files (each file replaced whole), so a
    resumed run redoes them; returns how many. Interrupted half-way, the rows not yet taken out
    are still errors and the ones taken out are simply to do: no row is lost or doubled."""
    dropped = 0
    for path in parquet_files(fs, root):
        with fs.open(path, "rb") as handle:
            if pq.read_table(handle, columns=["error"]).column("error").null_count == pq.read_metadata(handle).num_rows:
                continue
            handle.seek(0)
            table = pq.read_table(handle)
        kept = table.filter(pc.is_null(table["error"]))
        dropped += table.num_rows - kept.num_rows
        if kept.num_rows:
            put_file(fs, path, kept)
        else:
            fs.rm(path)
    return dropped


def put_file(fs: fsspec.AbstractFileSystem, final: str, table: pa.Table) -> None:
    """Write one Parquet file so that readers never see it half-written: a temporary name
    renamed on local disk, a single PUT on object stores."""
    if isinstance(fs, LocalFileSystem):
        folder, name = final.rsplit("/", 1)
        temporary = f"{folder}/.{name}.tmp"
        with fs.open(temporary, "wb") as handle:
            pq.write_table(table, handle)
        fs.mv(temporary, final)
    else:
        with fs.open(final, "wb") as handle:
            pq.write_table(table, handle)


def to_table(batch: dict[str, np.ndarray], config: JobConfig) -> pa.Table:
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


class LLMWriterStage(LLMStage):
    """The LLM actor stage, writing each finished batch itself: a separate writer stage of small
    CPU tasks was held back by Ray Data's per-operator resource budget until the end of the job
    on small clusters, which left nothing written when a job was interrupted."""

    def __init__(self, config: JobConfig, threads: int, run_id: str, figures: int, lease_owner: str) -> None:
        super().__init__(config, threads)
        self.run_id, self.figures, self.lease_owner = run_id, figures, lease_owner

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = super().__call__(batch)
        # an actor outliving a killed driver must not write rows a re-run is redoing
        check_holder(*output_fs(self.config.output, self.config.storage_options), self.lease_owner)
        return write_batch(done, self.config, self.run_id, self.figures)


def write_batch(batch: dict[str, np.ndarray], config: JobConfig, run_id: str, figures: int) -> dict[str, np.ndarray]:
    """One finished batch in, one Parquet file out, one row of counts back.

    The file's name is this run's id and a hash of its row ids, so a call Ray retries (its node
    lost after the write) rewrites the same file instead of adding a second copy of its rows.
    """
    table = to_table(batch, config)
    ids = "\n".join(sorted(table.column("id").to_pylist()))
    fs, root = output_fs(config.output, config.storage_options)
    put_file(fs, f"{root}/part-{run_id}-{hashlib.sha1(ids.encode()).hexdigest()[:16]}.parquet", table)
    ok = table.filter(pc.is_null(table["error"]))
    report = {"spans": {}, "peaks": {}, "figures": _figure_rows(batch, figures)}
    for role in ("vision", "llm"):
        report["spans"][role] = sorted({tuple(span) for span in np.asarray(batch[f"{role}_span"]).tolist()})
        for name, accel, host in zip(batch[f"{role}_actor"], batch[f"{role}_peak_accel"], batch[f"{role}_peak_host"]):
            peak = report["peaks"].setdefault(str(name), [0, 0])
            report["peaks"][str(name)] = [max(peak[0], int(accel)), max(peak[1], int(host))]
    return {
        "rows": np.array([table.num_rows]),
        "errors": np.array([table.num_rows - ok.num_rows]),
        "generated_tokens": np.array([int(pc.sum(ok["generated_tokens"]).as_py() or 0)]),
        "visual_tokens": np.array([int(pc.sum(ok["visual_tokens"]).as_py() or 0)]),
        "report": np.array([pickle.dumps(report)], dtype=object),
    }


def _figure_rows(batch: dict[str, np.ndarray], wanted: int) -> list[tuple[str, str, dict[str, Any]]]:
    """Up to ``wanted`` successful rows as (id, path, their ``enc_*`` index columns): enough for
    the driver to draw kept patches without the features."""
    out = []
    for i, row_id in enumerate(batch["id"]):
        if len(out) >= wanted:
            break
        if isinstance(batch["error"][i], str) and batch["error"][i]:
            continue
        columns = {k: np.asarray(batch[k][i]) for k in batch if k.startswith("enc_") and k != "enc_features"}
        out.append((str(row_id), str(batch["path"][i]), columns))
    return out


def read_run(output: str, storage_options: dict | None, run_id: str, columns: list[str] | None = None) -> pa.Table:
    """The rows one run wrote, read back from its files (``columns``: only those)."""
    fs, root = output_fs(output, storage_options)
    tables = []
    for path in parquet_files(fs, root, f"part-{run_id}-*.parquet"):
        with fs.open(path, "rb") as handle:
            tables.append(pq.read_table(handle, columns=columns))
    schema = OUTPUT_SCHEMA if columns is None else pa.schema([OUTPUT_SCHEMA.field(c) for c in columns])
    return pa.concat_tables(tables) if tables else schema.empty_table()
