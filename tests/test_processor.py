"""HiRED as a stage of a user's own Ray Dataset (``build_processor``) on a real local Ray: images
as bytes, paths, structs and arrays; the user's columns back unchanged; a bad row beside good
ones; row functions before and after; the same answers as the caption job."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.batch.config import HiredProcessorConfig, JobConfig, PoolConfig
from pipeline.batch.driver import run_job
from pipeline.batch.processor import build_processor
from pipeline.model.config import ModelConfig
from pipeline.model.generation import GenerateOptions
from tests.conftest import REPO, TINY_MODEL

pytestmark = pytest.mark.slow

SAMPLES = REPO / "samples" / "images"
# plain 8-bit RGB files: ray.data.read_images hands back the very pixels the job decodes
PLAIN_RGB = ("jpeg_321x345.jpg", "jpeg_384x192.jpg", "png_180x360.png")
ACCOUNTING = ("generated_text", "error", "visual_tokens", "prompt_tokens", "generated_tokens", "ttft_s", "vision_s")


def tiny_config(**overrides) -> HiredProcessorConfig:
    values = dict(
        model=ModelConfig(name=TINY_MODEL, dtype="float32"),
        generate=GenerateOptions(max_new_tokens=5),
        vision=PoolConfig(batch_size=3),
        llm=PoolConfig(batch_size=3),
        decode_batch_size=3,
    )
    return HiredProcessorConfig(**{**values, **overrides})


def to_arrow(dataset) -> pa.Table:
    import ray

    return pa.concat_tables(ray.get(dataset.to_arrow_refs()))


def test_config_builds_with_no_arguments_on_the_jobs_defaults():
    config = build_processor().config
    job = JobConfig(input="in", output="out")
    for name in ("model", "drop", "generate", "decode", "prompt", "vision", "llm", "max_padding"):
        assert getattr(config, name) == getattr(job, name), name
    assert config.drop.method == "hired" and str(config.drop.budget) == "0.2"


def test_bytes_paths_structs_arrays_and_a_bad_row(ray_local):
    png = (SAMPLES / "png_180x360.png").read_bytes()
    pixels = np.asarray(Image.open(SAMPLES / "jpeg_321x345.jpg").convert("RGB"))
    rows = [
        {"key": 0, "image": png},
        {"key": 1, "image": str(SAMPLES / "webp_540x192.webp")},
        {"key": 2, "image": {"bytes": None, "path": str(SAMPLES / "jpeg_384x192.jpg")}},
        {"key": 3, "image": pixels},
        {"key": 4, "image": b"not an image at all"},
        {"key": 5, "image": str(SAMPLES / "missing.png")},
    ]
    seen_before, seen_after = [], []

    def before(row):
        seen_before.append(row["key"])  # runs in a worker: the list here stays empty
        return {**row, "prompt": f"Describe image {row['key']}.", "tag": f"t{row['key']}"}

    def after(row):
        return {**row, "answered": row["error"] is None}

    # one block and one decode batch per row: Arrow cannot hold one column in four types, and a
    # user's column has one type; the forms are mixed here only to test them in one run
    dataset = ray_local.data.from_items(rows, override_num_blocks=len(rows))
    out = build_processor(tiny_config(decode_batch_size=1), preprocess=before, postprocess=after)(dataset)
    assert not seen_before and not seen_after
    result = {r["key"]: r for r in out.take_all()}
    assert sorted(result) == [0, 1, 2, 3, 4, 5], "every row comes back, the bad ones too"
    for key in (0, 1, 2, 3):
        row = result[key]
        assert row["error"] is None and row["answered"] and isinstance(row["generated_text"], str)
        assert row["prompt"] == f"Describe image {key}." and row["tag"] == f"t{key}"
        assert row["visual_tokens"] > 0 and row["generated_tokens"] > 0 and "image" not in row
    assert "not an image" in result[4]["error"] or "ImageDecodeError" in result[4]["error"]
    assert "missing.png" in result[5]["error"]
    for key in (4, 5):
        assert result[key]["generated_text"] is None and result[key]["answered"] is False


def test_extra_parquet_columns_come_back_unchanged(ray_local, tmp_path):
    names = sorted(p.name for p in SAMPLES.iterdir())[:4]
    table = pa.table(
        {
            "image": pa.array([{"bytes": (SAMPLES / n).read_bytes(), "path": n} for n in names],
                              pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "labels": pa.array([[1, 2], [], None, [7]], pa.list_(pa.int64())),
            "score": pa.array([0.5, None, 1.5, None], pa.float64()),
            "meta": pa.array([{"a": i, "b": str(i)} for i in range(4)]),
            "taken": pa.array([1, 2, 3, None], pa.timestamp("ms")),
            "question": ["q0", None, "q2", "q3"],
            "n": [0, 1, 2, 3],
        }
    )
    pq.write_table(table, tmp_path / "lake.parquet")
    dataset = ray_local.data.read_parquet(str(tmp_path / "lake.parquet"))
    out = to_arrow(build_processor(tiny_config())(dataset))
    assert out.num_rows == 4 and out.column("error").null_count == 4
    back = out.sort_by("n")
    for name in ("labels", "score", "meta", "taken", "question"):
        assert back.column(name).type == table.column(name).type, name
        assert back.column(name).to_pylist() == table.column(name).to_pylist(), name
    assert "image" not in out.column_names
    kept = to_arrow(build_processor(tiny_config(keep_image=True))(dataset))
    assert kept.column("image").type == table.column("image").type


def test_read_images_and_binary_files_match_the_caption_job(ray_local, tmp_path):
    config = tiny_config()
    job = run_job(JobConfig(input=str(SAMPLES), output=str(tmp_path / "job"), **vars(config)))
    rows = {r["id"]: r for r in job.table.to_pylist()}
    assert len(rows) == 8
    files = ray_local.data.read_binary_files(str(SAMPLES), include_paths=True)
    processed = build_processor(config, preprocess=lambda r: {"image": r["bytes"], "id": Path(r["path"]).name})(files)
    for row in processed.take_all():
        assert row["generated_text"] == rows[row["id"]]["text"], row["id"]
        for column in ("visual_tokens", "prompt_tokens", "generated_tokens", "partition_budgets"):
            assert row[column] == rows[row["id"]][column], (row["id"], column)
    arrays = ray_local.data.read_images(str(SAMPLES), include_paths=True, mode="RGB")
    answered = build_processor(config)(arrays).take_all()
    # read_images lists only the extensions it knows, which leave WebP out
    assert sorted(Path(r["path"]).name for r in answered) == sorted(n for n in rows if not n.endswith(".webp"))
    assert all(r["error"] is None for r in answered)
    for row in answered:
        name = Path(row["path"]).name
        if name in PLAIN_RGB:
            assert row["generated_text"] == rows[name]["text"], name
    assert len({r["generated_text"] for r in answered}) > 1, "all answers equal: the comparison could not fail"


def test_processor_output_goes_on_to_filter_and_write_parquet(ray_local, tmp_path):
    images = [io.BytesIO() for _ in range(3)]
    for i, buffer in enumerate(images):
        Image.new("RGB", (64 + 32 * i, 96), (40 * i, 90, 200)).save(buffer, format="PNG")
    dataset = ray_local.data.from_items([{"n": i, "image": b.getvalue()} for i, b in enumerate(images)])
    out = build_processor(tiny_config())(dataset).filter(lambda r: r["n"] != 1)
    out.write_parquet(str(tmp_path / "sink"))
    written = pq.read_table(tmp_path / "sink")
    assert sorted(written.column("n").to_pylist()) == [0, 2]
    assert set(ACCOUNTING) <= set(written.column_names)
