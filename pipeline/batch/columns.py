"""The columns around the stages: the user's own, carried through untouched, and the typed
columns the stages add.

The stages work on numpy batches, and Ray's numpy round trip changes types: a ``list<int>``
column comes back as a tensor column, a null float as NaN. So at the first stage the user's
columns are packed, row by row, into one binary column of Arrow IPC (:func:`pack_columns`), and
unpacked after the last (:func:`finish_table`), exactly as they came in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .schema import OUTPUT_SCHEMA

CARRY_COLUMN = "_carried"
# the text column of a processor's rows, as Ray's LLM processors name it
GENERATED_TEXT = "generated_text"
# what the stages add to the user's columns: the job's output columns but its own id, path and
# text; the prompt (filled in where a row had none) replaces the user's
ADDED_SCHEMA = pa.schema(
    [pa.field("prompt", pa.string()), pa.field(GENERATED_TEXT, pa.string())]
    + [f for f in OUTPUT_SCHEMA if f.name not in ("id", "path", "prompt", "text")]
)


def pack_columns(table: pa.Table) -> np.ndarray:
    """One Arrow IPC stream per row of ``table`` (an object column of bytes)."""
    packed = np.empty(table.num_rows, dtype=object)
    for i in range(table.num_rows):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.slice(i, 1))
        packed[i] = sink.getvalue().to_pybytes()
    return packed


def unpack_columns(packed: list[bytes]) -> pa.Table:
    """The rows :func:`pack_columns` packed, as one table (blocks whose types differ, a null
    column in one and strings in another, are promoted as Arrow promotes them)."""
    tables = [pa.ipc.open_stream(blob).read_all() for blob in packed]
    return pa.concat_tables(tables, promote_options="permissive")


def _as_arrow(values: Any, kind: pa.DataType) -> pa.Array:
    """A stage's numpy column as ``kind`` (nulls from None or NaN, per-row arrays as lists)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array) and values.type == kind:
        return values
    if isinstance(values, pa.Array):
        values = values.to_numpy(zero_copy_only=False) if not isinstance(values.type, pa.ExtensionType) else _tensor_rows(values)
    rows = [
        None if v is None or (isinstance(v, float) and np.isnan(v))
        else (np.asarray(v).tolist() if isinstance(v, np.ndarray) and pa.types.is_list(kind) else v)
        for v in values
    ]
    return pa.array(rows, type=kind, from_pandas=True)


def _tensor_rows(values: pa.Array) -> list[np.ndarray]:
    """Per-row arrays of a Ray tensor column (how Ray stores a numpy column of arrays)."""
    return list(values.to_numpy())


def finish_table(table: pa.Table) -> pa.Table:
    """The rows a processor returns: the user's columns as they came, then :data:`ADDED_SCHEMA`
    typed; everything else the stages used on the way is left out."""
    user = unpack_columns(table.column(CARRY_COLUMN).to_pylist()) if CARRY_COLUMN in table.column_names else pa.table({})
    user = user.drop_columns([n for n in ADDED_SCHEMA.names if n in user.column_names])
    columns = {name: user.column(name) for name in user.column_names}
    for field in ADDED_SCHEMA:
        columns[field.name] = _as_arrow(table.column(field.name), field.type)
    return pa.table(columns)
