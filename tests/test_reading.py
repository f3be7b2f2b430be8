"""Inputs planned on the driver and read in units (pipeline.data.units), WebDataset shards, the
output lease and --retry-errors' clean-up; no Ray here (the job runs are in test_caption_job)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.batch.lease import LEASE_NAME, OutputLease, OutputLocked
from pipeline.batch.output import drop_error_rows, put_file
from pipeline.batch.schema import OUTPUT_SCHEMA
from pipeline.data.rows import InputError
from pipeline.data.shards import expand_braces
from pipeline.data.sources import list_inputs
from pipeline.data.units import ROWS_PER_UNIT, plan_inputs, read_unit, repeated_ids

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "images"
JPEG = (SAMPLES / "jpeg_321x345.jpg").read_bytes()
PNG = (SAMPLES / "grayscale_372x186.png").read_bytes()


def planned_rows(uri: str, **storage_options):
    """Every row the read tasks would yield, repeated ids renamed as the job renames them."""
    plan = plan_inputs(uri, storage_options or None)
    renames = repeated_ids(plan, storage_options or None)
    rows = []
    for index, unit in enumerate(plan.units):
        for position, row in enumerate(read_unit(plan.uri, unit, storage_options or None)):
            rows.append((renames.get((index, position), row.id), row))
    return plan, rows


def as_listed(rows) -> list[tuple]:
    return [(rid, r.path, r.prompt, r.question, r.answers, r.image_bytes) for rid, r in rows]


def write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    """A WebDataset tar: ``{key: {suffix: bytes}}`` in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, parts in samples.items():
            for suffix, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_shards(folder: Path, shards: int, per_shard: int) -> list[str]:
    """``shards-0000.tar`` ...: each sample an image with a .txt prompt or a .json question;
    returns the ids the job must write."""
    ids = []
    for s in range(shards):
        samples = {}
        for k in range(per_shard):
            key = f"{s:04d}{k:03d}"
            extra = {"txt": f"prompt {key}".encode()} if k % 2 else {"json": json.dumps({"question": f"q {key}"}).encode()}
            samples[key] = {"jpg" if k % 3 else "png": JPEG if k % 3 else PNG, **extra}
            ids.append(f"shards-{s:04d}.tar/{key}")
        write_shard(folder / f"shards-{s:04d}.tar", samples)
    return ids


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A folder of images and every kind of manifest over it."""
    images = tmp_path / "imgs"
    for name in ("a.jpg", "sub/b.png", "sub/deep/c.jpg", ".hidden.jpg"):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        (images / name).write_bytes(JPEG if name.endswith("jpg") else PNG)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    pq.write_table(pa.table({"image": ["../imgs/a.jpg", str(images / "sub/b.png")], "prompt": ["p1", None]}),
                   manifests / "paths.parquet")
    pq.write_table(pa.table({"image_bytes": pa.array([JPEG, PNG, JPEG], pa.binary()), "question": ["q", "r", None]}),
                   manifests / "inline.parquet")
    struct = pa.array([{"bytes": PNG, "path": "x.png"}, {"bytes": JPEG, "path": "x.png"}],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": struct}), manifests / "hf.parquet")
    (manifests / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "r1", "image": "../imgs/a.jpg", "question": "how many?", "answers": ["4"]},
        {"id": "r1", "image": "../imgs/sub/b.png", "prompt": "Describe."},
    ]) + "\n")
    return tmp_path


@pytest.mark.parametrize(
    "relative",
    ["imgs", "imgs/**/*.jpg", "imgs/sub/b.png", "manifests/paths.parquet", "manifests/inline.parquet",
     "manifests/hf.parquet", "manifests/rows.jsonl", "manifests/*.parquet"],
)
def test_units_yield_exactly_the_listed_rows(inputs: Path, relative: str):
    uri = str(inputs / relative)
    plan, rows = planned_rows(uri)
    assert as_listed(rows) == as_listed((r.id, r) for r in list_inputs(uri))
    assert len({rid for rid, _ in rows}) == len(rows), "ids unique"
    assert plan.total in (None, len(rows))


def test_repeated_ids_take_a_pass_only_where_ids_can_repeat(inputs: Path):
    assert not plan_inputs(str(inputs / "manifests/inline.parquet")).may_repeat  # positions number its rows
    assert plan_inputs(str(inputs / "manifests/hf.parquet")).may_repeat
    _, rows = planned_rows(str(inputs / "manifests/hf.parquet"))
    assert [rid for rid, _ in rows] == ["x.png", "x.png#2"]


def test_large_parquet_is_split_by_row_groups_and_numbered_across_them(tmp_path: Path):
    count = 3 * ROWS_PER_UNIT + 10
    table = pa.table({"image_bytes": pa.array([JPEG[:20]] * count, pa.binary()), "prompt": [str(i) for i in range(count)]})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=100)
    plan, rows = planned_rows(str(tmp_path / "big.parquet"))
    assert len(plan.units) >= 3 and plan.total == count
    assert [rid for rid, _ in rows] == [f"big.parquet:{i}" for i in range(count)]
    assert [r.prompt for _, r in rows] == [str(i) for i in range(count)]


def test_webdataset_brace_pattern_folder_and_glob(tmp_path: Path):
    ids = write_shards(tmp_path / "wds", shards=3, per_shard=4)
    for uri in (str(tmp_path / "wds/shards-{0000..0002}.tar"), str(tmp_path / "wds"), str(tmp_path / "wds/*.tar")):
        plan, rows = planned_rows(uri)
        assert [rid for rid, _ in rows] == ids, uri
        assert plan.total is None and len(plan.units) == 3
    first = dict(planned_rows(str(tmp_path / "wds/shards-0000.tar"))[1])
    assert first["shards-0000.tar/0000001"].prompt == "prompt 0000001"
    assert first["shards-0000.tar/0000000"].question == "q 0000000"
    assert first["shards-0000.tar/0000000"].image_bytes == PNG and first["shards-0000.tar/0000001"].image_bytes == JPEG


def test_webdataset_sample_without_image_is_one_row_that_will_fail(tmp_path: Path):
    write_shard(tmp_path / "s.tar", {"a": {"jpg": JPEG}, "b": {"txt": b"no image"}, "c": {"png": PNG}})
    _, rows = planned_rows(str(tmp_path / "s.tar"))
    assert [rid for rid, _ in rows] == ["s.tar/a", "s.tar/b", "s.tar/c"]
    assert rows[1][1].image_bytes == b"" and rows[1][1].prompt == "no image"


def test_brace_expansion_keeps_padding_and_lists():
    assert expand_braces("s-{0008..0011}.tar") == ["s-0008.tar", "s-0009.tar", "s-0010.tar", "s-0011.tar"]
    assert expand_braces("{a,b}/x{1..2}.tar") == ["a/x1.tar", "a/x2.tar", "b/x1.tar", "b/x2.tar"]


def test_errors_found_before_any_row_is_read(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    pq.write_table(pa.table({"caption": ["x"]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"image": pa.array([], pa.string())}), tmp_path / "norows.parquet")
    write_shards(tmp_path / "wds", shards=2, per_shard=1)
    cases = {
        str(tmp_path / "empty"): "the directory is empty",
        str(tmp_path / "nocol.parquet"): "no image column",
        str(tmp_path / "norows.parquet"): "no rows",
        str(tmp_path / "wds/shards-{0000..0003}.tar"): "2 of 4 files the pattern names do not exist",
    }
    for uri, message in cases.items():
        with pytest.raises(InputError, match=message) as caught:
            plan_inputs(uri)
        assert uri in str(caught.value)


def test_webdataset_and_manifest_on_s3(tmp_path: Path, s3_server):  # noqa: F811
    s3_server.create_bucket("wds")
    ids = write_shards(tmp_path / "wds", shards=2, per_shard=3)
    for shard in sorted((tmp_path / "wds").iterdir()):
        s3_server.upload("wds", f"train/{shard.name}", shard.read_bytes())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"bytes": pa.array([JPEG, PNG], pa.binary())}), sink)
    s3_server.upload("wds", "m/inline.parquet", sink.getvalue().to_pybytes())
    _, rows = planned_rows("s3://wds/train/shards-{0000..0001}.tar")
    assert [rid for rid, _ in rows] == ids
    assert rows[0][1].path == "s3://wds/train/shards-0000.tar#0000000"
    _, rows = planned_rows("s3://wds/m/inline.parquet")
    assert [(rid, r.image_bytes) for rid, r in rows] == [("inline.parquet:0", JPEG), ("inline.parquet:1", PNG)]


# --------------------------------------------------------------------------- #
# the output lease and --retry-errors
# --------------------------------------------------------------------------- #


def test_second_lease_is_refused_until_released(tmp_path: Path):
    fs = fsspec.filesystem("file")
    with OutputLease(fs, str(tmp_path)) as first:
        assert json.loads((tmp_path / LEASE_NAME).read_text())["owner"] == first.owner
        with pytest.raises(OutputLocked, match=f"another job is writing it .*pid {os.getpid()}.*delete"):
            OutputLease(fs, str(tmp_path)).acquire()
    assert not (tmp_path / LEASE_NAME).exists()
    with OutputLease(fs, str(tmp_path)):
        pass


def test_lease_is_renewed_and_stale_ones_are_taken(tmp_path: Path):
    fs = fsspec.filesystem("file")
    lease = OutputLease(fs, str(tmp_path), ttl_s=0.4)
    lease.acquire()
    first = json.loads((tmp_path / LEASE_NAME).read_text())["renewed"]
    time.sleep(0.6)
    assert json.loads((tmp_path / LEASE_NAME).read_text())["renewed"] > first, "renewed while held"
    lease.release()
    # a driver that died on this host: stale at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = {"owner": "x", "host": socket.gethostname(), "pid": int(dead.stdout), "renewed": time.time(), "ttl_s": 120}
    (tmp_path / LEASE_NAME).write_text(json.dumps(held))
    with OutputLease(fs, str(tmp_path)):
        pass
    # a driver elsewhere: refused while renewed, taken once not renewed for its ttl
    held.update(host="elsewhere", renewed=time.time())
    (tmp_path / LEASE_NAME).write_text(json.dumps(held))
    with pytest.raises(OutputLocked, match="host elsewhere"):
        OutputLease(fs, str(tmp_path)).acquire()
    held.update(renewed=time.time() - 121)
    (tmp_path / LEASE_NAME).write_text(json.dumps(held))
    with OutputLease(fs, str(tmp_path)):
        pass


def test_drop_error_rows_rewrites_files_whole(tmp_path: Path):
    fs = fsspec.filesystem("file")

    def table(ids, errors):
        values = {name: [None] * len(ids) for name in OUTPUT_SCHEMA.names}
        values.update(id=ids, error=errors)
        return pa.Table.from_pydict(values, schema=OUTPUT_SCHEMA)

    put_file(fs, f"{tmp_path}/part-a.parquet", table(["a", "b"], [None, "OSError: timed out"]))
    put_file(fs, f"{tmp_path}/part-b.parquet", table(["c"], ["OSError: timed out"]))
    put_file(fs, f"{tmp_path}/part-c.parquet", table(["d"], [None]))
    assert drop_error_rows(fs, str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-a.parquet", "part-c.parquet"]
    assert pq.read_table(tmp_path / "part-a.parquet").column("id").to_pylist() == ["a"]


def test_workers_write_only_while_their_driver_holds_the_lease(tmp_path: Path):
    from pipeline.batch.lease import check_holder

    fs = fsspec.filesystem("file")
    with OutputLease(fs, str(tmp_path)) as lease:
        check_holder(fs, str(tmp_path), lease.owner)  # the live holder may write
        with pytest.raises(OutputLocked, match="no longer holds"):
            check_holder(fs, str(tmp_path), "an earlier driver")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = {"owner": "killed", "host": socket.gethostname(), "pid": int(dead.stdout), "renewed": time.time(), "ttl_s": 120}
    (tmp_path / LEASE_NAME).write_text(json.dumps(held))
    with pytest.raises(OutputLocked):  # its driver was killed: its actors must stop writing
        check_holder(fs, str(tmp_path), "killed")
