"""The job's input as a streaming Ray Dataset: read units in, rows (id, path, prompt, image) out,
read by Ray tasks on the cluster.

Ray Data's own readers (``read_parquet``, ``read_json``, ``read_webdataset``, ...) stream just as
well, but none tells a row's position in its file, which today's ids are made of
(``rows.parquet:row 17``), and a bad record fails a whole read task; so the driver plans units
(:mod:`pipeline.data.units`) and a generator map stage reads each, yielding small blocks. Rows
already written are dropped here, in the read task, so their bytes never travel.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.units import InputPlan, read_unit, repeated_ids

UNIT_COLUMN, ROW_COLUMN = "_unit", "_row"
# the processor's input columns (``image`` as a {bytes, path} struct: bytes when the manifest
# holds them inline, else null and the decode task reads ``path``), plus where each row was read,
# so that the driver can read a row again for a figure
READ_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
        pa.field(UNIT_COLUMN, pa.int32()),
        pa.field(ROW_COLUMN, pa.int32()),
    ]
)
# rows per block a read task yields: a block of inline images stays a few MB
ROWS_PER_BLOCK = 32
# read tasks mostly wait on storage; a CPU share distinct from the decode tasks' keeps the two
# stages apart (Ray fuses stages of equal resources), so decoding is spread over many tasks
READ_CPUS = 0.25


def _resolve(value: Any) -> Any:
    """A value passed through ``fn_kwargs`` as an ObjectRef, fetched once per worker."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def read_units(
    batch: dict[str, np.ndarray],
    uri: str,
    storage_options: dict | None,
    prompt: str,
    done: Any,
    renames: Any,
) -> Iterator[pa.Table]:
    """Read the units of ``batch`` (pickled ``(index, ReadUnit)``) into blocks of :data:`READ_SCHEMA`
    rows, without the ids in ``done`` (a string array, or a ref to one)."""
    done, renames = _resolve(done), _resolve(renames)
    for blob in batch["unit"]:
        index, unit = pickle.loads(blob)
        rows: list[dict[str, Any]] = []
        for position, row in enumerate(read_unit(uri, unit, storage_options)):
            rows.append(
                {
                    "id": renames.get((index, position), row.id),
                    "path": row.path,
                    "prompt": row.prompt or row.question or prompt,
                    "image": {"bytes": row.image_bytes, "path": row.path},
                    UNIT_COLUMN: index,
                    ROW_COLUMN: position,
                }
            )
            if len(rows) == ROWS_PER_BLOCK:
                yield _unwritten(rows, done)
                rows = []
        if rows:
            yield _unwritten(rows, done)


def _unwritten(rows: list[dict[str, Any]], done: pa.Array) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=READ_SCHEMA)
    return table.filter(pc.invert(pc.is_in(table["id"], value_set=done))) if len(done) else table


def read_dataset(plan: InputPlan, storage_options: dict | None, prompt: str, done: Any):
    """The lazy Ray Dataset of ``plan``'s rows not in ``done`` (an ObjectRef of a string array).

    Repeated ids (possible only where a manifest names ids or paths) are renamed as
    :func:`pipeline.data.sources.list_inputs` renames them, after one pass over the ids in a Ray
    task, so the driver holds only the renames.
    """
    import ray

    renames = ray.remote(num_cpus=READ_CPUS)(repeated_ids).remote(plan, storage_options) if plan.may_repeat else {}
    items = [{"unit": pickle.dumps((i, unit))} for i, unit in enumerate(plan.units)]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read_units,
        batch_size=1,
        batch_format="numpy",
        num_cpus=READ_CPUS,
        fn_kwargs={"uri": plan.uri, "storage_options": storage_options, "prompt": prompt, "done": done, "renames": renames},
    )
