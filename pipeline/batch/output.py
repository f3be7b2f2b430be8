"""The job's output folder: Parquet files written whole by the workers, the ids already written
(resume), rows that ended in an error taken out again (``--retry-errors``), and the ``_SUCCESS``
marker of a finished job.

Ray Data's ``write_parquet`` bundles rows into files of ``min_rows_per_file`` too, but gives the
driver nothing per file: the write tasks here are a ``map_batches`` with that batch size (the
same bundling), and each written file sends back one small row of counts (progress, metrics)
while the output rows stay on the workers. Ray Data's job checkpointing
(``CheckpointConfig``, beta) needs its own write sink at the end of the pipeline, so resume filters
the read rows by the ids already written, inside the read tasks.
"""

from __future__ import annotations

import hashlib
import json
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

from .columns import GENERATED_TEXT, finish_table
from .config import JobConfig
from .lease import check_holder
from .schema import OUTPUT_COLUMNS, OUTPUT_SCHEMA

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


def to_table(finished: pa.Table) -> pa.Table:
    """The job's output columns (:data:`OUTPUT_SCHEMA`) of rows :func:`finish_table` finished."""
    columns = {"text": GENERATED_TEXT}
    return pa.Table.from_arrays(
        [finished.column(columns.get(name, name)).cast(OUTPUT_SCHEMA.field(name).type) for name in OUTPUT_COLUMNS],
        schema=OUTPUT_SCHEMA,
    )


def write_rows(table: pa.Table, config: JobConfig, run_id: str, lease_owner: str) -> dict[str, np.ndarray]:
    """Finished rows in (``config.min_rows_per_file`` of them, as Ray Data bundles a map's input;
    a run's last file may hold fewer), one Parquet file out, one row of counts back.

    The file's name is this run's id and a hash of its row ids, so a task Ray retries (its node
    lost after the write) rewrites the same file instead of adding a second copy of its rows.
    """
    reports = [pickle.loads(blob) for blob in table.column("report").to_pylist() if blob is not None]
    finished = to_table(finish_table(table))
    ids = "\n".join(sorted(finished.column("id").to_pylist()))
    fs, root = output_fs(config.output, config.storage_options)
    # a task outliving a killed driver must not write rows a re-run is redoing
    check_holder(fs, root, lease_owner)
    put_file(fs, f"{root}/part-{run_id}-{hashlib.sha1(ids.encode()).hexdigest()[:16]}.parquet", finished)
    ok = finished.filter(pc.is_null(finished["error"]))
    report: dict[str, Any] = {"spans": {"vision": [], "llm": []}, "peaks": {}, "figures": []}
    for part in reports:
        for role, spans in part["spans"].items():
            report["spans"][role] += spans
        for name, (accel, host) in part["peaks"].items():
            old = report["peaks"].get(name, [0, 0])
            report["peaks"][name] = [max(old[0], accel), max(old[1], host)]
        report["figures"] += part["figures"]
    return {
        "rows": np.array([finished.num_rows]),
        "errors": np.array([finished.num_rows - ok.num_rows]),
        "generated_tokens": np.array([int(pc.sum(ok["generated_tokens"]).as_py() or 0)]),
        "visual_tokens": np.array([int(pc.sum(ok["visual_tokens"]).as_py() or 0)]),
        "report": np.array([pickle.dumps(report)], dtype=object),
    }


SUCCESS_MARKER = "_SUCCESS"


def mark_success(fs: fsspec.AbstractFileSystem, root: str, record: dict[str, Any]) -> None:
    """The marker a finished job leaves, as Spark and Hadoop jobs leave theirs, for pipelines
    that wait on the folder; it holds the run id and row counts (JSON)."""
    with fs.open(f"{root}/{SUCCESS_MARKER}", "w") as handle:
        json.dump(record, handle, indent=1)


def clear_success(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """A job that starts writing makes the folder unfinished until it ends."""
    if fs.exists(f"{root}/{SUCCESS_MARKER}"):
        fs.rm(f"{root}/{SUCCESS_MARKER}")


def read_run(output: str, storage_options: dict | None, run_id: str, columns: list[str] | None = None) -> pa.Table:
    """The rows one run wrote, read back from its files (``columns``: only those)."""
    fs, root = output_fs(output, storage_options)
    tables = []
    for path in parquet_files(fs, root, f"part-{run_id}-*.parquet"):
        with fs.open(path, "rb") as handle:
            tables.append(pq.read_table(handle, columns=columns))
    schema = OUTPUT_SCHEMA if columns is None else pa.schema([OUTPUT_SCHEMA.field(c) for c in columns])
    return pa.concat_tables(tables) if tables else schema.empty_table()
