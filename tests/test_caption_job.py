"""The captioning job end to end on local Ray: nothing lost, same answers as the direct API,
object stores through fsspec, and resume."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hired_ops import DropConfig
from pipeline.batch.config import JobConfig, PoolConfig
from pipeline.batch.driver import run_job
from pipeline.data.images import decode_image
from pipeline.data.synthetic import random_image
from pipeline.model.config import ModelConfig
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM
from tests.conftest import REPO, TINY_MODEL

pytestmark = pytest.mark.slow

BROKEN = {"zero.jpg", "text.png", "truncated.jpg", "bomb.png", "truncated.png"}


def _png_with_claimed_size(width: int, height: int) -> bytes:
    """A real PNG whose header claims a huge size (a decompression bomb), CRC fixed up."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 4] = width.to_bytes(4, "big")
    data[ihdr + 4 : ihdr + 8] = height.to_bytes(4, "big")
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = crc.to_bytes(4, "big")
    return bytes(data)


def make_mixed_images(folder: Path) -> list[str]:
    """About 20 images of mixed formats and sizes, five of them broken; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    for sample in (REPO / "samples" / "images").iterdir():
        shutil.copy(sample, folder / sample.name)
    formats = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp")]
    sizes = [(500, 700), (800, 400), (336, 336), (1200, 300), (640, 640), (300, 900), (720, 480)]
    for i, (height, width) in enumerate(sizes):
        fmt, ext = formats[i % len(formats)]
        random_image(height, width, seed=100 + i).save(folder / f"random_{i}.{ext}", format=fmt)
    good_jpeg = (folder / "jpeg_384x192.jpg").read_bytes()
    good_png = (folder / "png_180x360.png").read_bytes()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_bytes(b"this is not an image at all\n" * 10)
    (folder / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (folder / "truncated.png").write_bytes(good_png[: len(good_png) // 3])
    (folder / "bomb.png").write_bytes(_png_with_claimed_size(100_000, 100_000))
    return sorted(p.name for p in folder.iterdir())


def small_job(input: str, output: str, **overrides) -> JobConfig:
    values = dict(
        input=input,
        output=output,
        model=ModelConfig(name=TINY_MODEL, dtype="float32"),  # answers are compared with the fp32 direct API
        generate=GenerateOptions(max_new_tokens=6),
        vision=PoolConfig(batch_size=4),
        llm=PoolConfig(batch_size=4),
        decode_batch_size=4,
    )
    values.update(overrides)
    return JobConfig(**values)


def read_output(path: str, **storage_options):
    fs, root = fsspec.core.url_to_fs(path, **storage_options)
    files = sorted(fs.glob(f"{root.rstrip('/')}/*.parquet"))
    tables = []
    for file in files:
        with fs.open(file, "rb") as handle:
            tables.append(pq.read_table(handle))
    import pyarrow as pa

    return pa.concat_tables(tables).to_pylist() if tables else []


def test_every_input_once_broken_ones_with_errors(tmp_path, ray_local):
    names = make_mixed_images(tmp_path / "images")
    assert len(names) >= 20
    summary = run_job(small_job(str(tmp_path / "images"), str(tmp_path / "out")))
    rows = read_output(str(tmp_path / "out"))
    assert sorted(r["id"] for r in rows) == names, "every input exactly once"
    assert summary.images == len(names) and summary.errors == len(BROKEN)
    for row in rows:
        if row["id"] in BROKEN:
            assert row["error"] and row["text"] is None, row
            assert row["id"].split(".")[0] in row["error"] or row["path"] in row["error"]
        else:
            assert row["error"] is None, row
            assert isinstance(row["text"], str) and row["generated_tokens"] > 0
            assert row["visual_tokens"] == 576 and sum(row["partition_budgets"]) == 576
            assert row["method"] == "hired" and row["budget"] == "0.2"
            assert row["feature_bytes"] == 576 * 32 * 2  # kept fp16 features of a 32-wide tower
    errors = {r["id"]: r["error"] for r in rows}
    assert "decompression-bomb" in errors["bomb.png"]
    assert "empty" in errors["zero.jpg"]


def test_pipeline_output_equals_direct_api(tmp_path, ray_local, tiny_next):
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(500, 700), (800, 400), (336, 336), (1200, 300), (640, 640), (300, 900)]
    for i, (height, width) in enumerate(sizes):
        random_image(height, width, seed=7 + i).save(folder / f"img_{i}.png")
    for method, budget in (("hired", "0.2"), ("spatial", "300"), ("full", None), ("hired+divprune", "0.2")):
        out = tmp_path / f"out-{method}"
        run_job(small_job(str(folder), str(out), drop=DropConfig(method=method, budget=budget)))
        rows = {r["id"]: r for r in read_output(str(out))}
        model, processor = tiny_next
        vlm = HiredVLM(model, processor, DropConfig(method=method, budget=budget))
        answers = set()
        for name, row in rows.items():
            image = decode_image((folder / name).read_bytes(), source=name)
            direct = vlm.run([image], row["prompt"], GenerateOptions(max_new_tokens=6))[0]
            assert row["text"] == direct.text, (method, name)
            assert row["visual_tokens"] == direct.encoded.num_tokens
            assert row["partition_budgets"] == direct.encoded.budgets.tolist()
            answers.add(row["text"])
        assert len(answers) > 1, "all answers equal: the comparison could not fail"


def test_rows_asking_different_questions_of_one_image_keep_their_own_tokens(tmp_path, ray_local, tiny_next):
    """hired-cdpp through the job: a manifest asks four questions of one image, so one vision
    batch carries four prompts; each row is answered as the direct API answers its own prompt."""
    random_image(500, 700, seed=11).save(tmp_path / "scene.png")
    questions = ["What colour is the car?", "Is there a dog on the left?", "Count the red squares.", "Describe the image."]
    lines = [json.dumps({"id": f"q{i}", "image": "scene.png", "prompt": q}) for i, q in enumerate(questions)]
    (tmp_path / "questions.jsonl").write_text("\n".join(lines) + "\n")
    drop = DropConfig(method="hired-cdpp", budget=0.1)
    run_job(small_job(str(tmp_path / "questions.jsonl"), str(tmp_path / "out"), drop=drop))
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out"))}
    model, processor = tiny_next
    vlm = HiredVLM(model, processor, drop)
    image = decode_image((tmp_path / "scene.png").read_bytes(), source="scene.png")
    options = GenerateOptions(max_new_tokens=6)
    own = [vlm.run([image], q, options)[0].text for q in questions]
    blind = [g.text for g in vlm.generate(vlm.encode([image] * len(questions)), questions, options)]
    assert own != blind, "tokens chosen without the question answer the same: the test could not fail"
    assert [rows[f"q{i}"]["text"] for i in range(len(questions))] == own
    assert all(rows[f"q{i}"]["visual_tokens"] == 288 and rows[f"q{i}"]["method"] == "hired-cdpp" for i in range(len(questions)))


def test_s3_input_and_output(tmp_path, ray_local, s3_server):
    s3_server.create_bucket("data")
    images = make_mixed_images(tmp_path / "images")[:6]
    for name in images:
        s3_server.upload("data", f"imgs/{name}", (tmp_path / "images" / name).read_bytes())
    options = {"endpoint_url": s3_server.endpoint_url, "key": "testing", "secret": "testing"}
    config = small_job("s3://data/imgs/", "s3://data/captions/", storage_options=options)
    summary = run_job(config)
    rows = read_output("s3://data/captions/", **options)
    assert sorted(r["id"] for r in rows) == sorted(images)
    assert summary.images == len(images)
    assert all((r["error"] is None) == (r["id"] not in BROKEN) for r in rows)
    assert all(r["path"].startswith("s3://data/imgs/") for r in rows)


def test_resume_skips_rows_already_written(tmp_path, ray_local):
    names = make_mixed_images(tmp_path / "images")
    out = tmp_path / "out"
    seen = []
    first = run_job(small_job(str(tmp_path / "images"), str(out), limit=7), on_progress=seen.append)
    assert first.images == 7
    # progress after every written batch, cumulative, ending at the rows written
    assert [p.rows_done for p in seen] == sorted(p.rows_done for p in seen) and seen[-1].rows_done == 7
    assert seen[-1].rows_total == 7 and seen[-1].errors == first.errors
    assert first.skipped == 0  # rows --limit leaves for later were not done before
    second = run_job(small_job(str(tmp_path / "images"), str(out)))
    assert second.skipped == 7 and second.images == len(names) - 7
    ids = [r["id"] for r in read_output(str(out))]
    assert sorted(ids) == names and len(ids) == len(set(ids))
    third = run_job(small_job(str(tmp_path / "images"), str(out)))
    assert third.images == 0 and third.skipped == len(names)


def test_killed_job_resumes_each_row_once(tmp_path):
    """A real interruption: a run is killed as soon as its first file lands (whatever it had
    finished but not yet written is lost), and a second resumes: every row exactly once. The
    first run must not be done by then: its files land while it runs, so an interruption redoes
    only the rows not yet written."""
    folder = tmp_path / "images"
    folder.mkdir()
    rows, per_manifest, per_file = 40, 10, 4
    for i in range(rows):
        random_image(300 + 5 * i, 500, seed=i).save(folder / f"img_{i:02d}.png")
    # four manifests, one read unit each, so rows reach the LLM unit by unit (a folder of 40
    # images is one unit: its rows would travel through the stages as one block)
    for part in range(rows // per_manifest):
        lines = [json.dumps({"image": f"images/img_{i:02d}.png"}) for i in range(part * per_manifest, (part + 1) * per_manifest)]
        (tmp_path / f"part-{part}.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "jobs.cli", "caption", str(tmp_path / "part-*.jsonl"), "--output", str(out),
        "--model", TINY_MODEL, "--max-new-tokens", "128", "--vision-batch-size", "2", "--llm-batch-size", "2",
        "--decode-batch-size", "2", "--min-rows-per-file", str(per_file), "--no-tracking",
    ]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("*.parquet")) and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the job ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(3)  # a write already past the lease check when the driver died may still land
    partial = read_output(str(out))
    # only a run's last file holds fewer than min_rows_per_file rows, and the killed run had no last
    assert per_file <= len(partial) < rows, "the job must be interrupted part-way for this test to mean anything"
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ids = [r["id"] for r in read_output(str(out))]
    assert len(ids) == rows and len(set(ids)) == rows
    assert f"{len(partial)} already done" in result.stdout


def test_files_of_min_rows_and_a_success_marker(tmp_path, ray_local):
    """Files hold min_rows_per_file rows (one smaller at most: the run's last), and the finished
    job leaves _SUCCESS with its run id and counts; a resumed run that adds rows rewrites it."""
    names = make_mixed_images(tmp_path / "images")
    out = tmp_path / "out"
    first = run_job(small_job(str(tmp_path / "images"), str(out), limit=5, min_rows_per_file=8))
    marker = json.loads((out / "_SUCCESS").read_text())
    assert marker["run_id"] == first.run_id and marker["rows_written"] == 5 and marker["rows_in_output"] == 5
    summary = run_job(small_job(str(tmp_path / "images"), str(out), min_rows_per_file=8))
    sizes = [pq.read_metadata(f).num_rows for f in out.glob(f"part-{summary.run_id}-*.parquet")]
    assert sum(sizes) == len(names) - 5 and sum(1 for n in sizes if n < 8) <= 1, sizes
    marker = json.loads((out / "_SUCCESS").read_text())
    assert marker["run_id"] == summary.run_id and marker["rows_written"] == len(names) - 5
    assert marker["rows_already_there"] == 5 and marker["rows_in_output"] == len(names)
    assert marker["errors"] == summary.errors  # this run's errors


def test_figures_of_inline_manifest_images(tmp_path, ray_local):
    """A manifest of {bytes, path} structs with no readable path (as lmms-eval ships them): the
    kept-patch figures read the image where the job read it."""
    sources = sorted((REPO / "samples" / "images").iterdir())[:3]
    images = [{"bytes": p.read_bytes(), "path": None} for p in sources]
    pq.write_table(pa.table({"image": images, "question": ["What is this?"] * 3}), tmp_path / "inline.parquet")
    summary = run_job(small_job(str(tmp_path / "inline.parquet"), str(tmp_path / "out")), figures=2)
    assert summary.errors == 0 and len(summary.figures) == 2
    for image, encoded, row_id in summary.figures:
        position = int(re.search(r"(\d+)$", row_id).group(1))  # ids number manifest rows
        expected = decode_image(sources[position].read_bytes(), source=row_id)
        assert image.size == expected.size and image.tobytes() == expected.tobytes()
        assert int(encoded.budgets.sum()) == len(encoded.partition) == 576


def test_webdataset_shards_local_and_on_s3(tmp_path, ray_local, s3_server):
    from tests.test_reading import write_shard, write_shards

    ids = write_shards(tmp_path / "wds", shards=2, per_shard=3)
    write_shard(tmp_path / "wds" / "shards-0002.tar", {"x": {"txt": b"no image here"}})
    ids.append("shards-0002.tar/x")
    local = run_job(small_job(str(tmp_path / "wds" / "shards-{0000..0002}.tar"), str(tmp_path / "out")))
    rows = {r["id"]: r for r in read_output(str(tmp_path / "out"))}
    assert sorted(rows) == sorted(ids) and local.images == len(ids) == 7
    assert local.errors == 1 and "empty" in rows["shards-0002.tar/x"]["error"]
    assert rows["shards-0000.tar/0000001"]["prompt"] == "prompt 0000001"
    assert rows["shards-0000.tar/0000000"]["prompt"] == "q 0000000"
    s3_server.create_bucket("shards")
    for shard in sorted((tmp_path / "wds").iterdir()):
        s3_server.upload("shards", f"train/{shard.name}", shard.read_bytes())
    options = {"endpoint_url": s3_server.endpoint_url, "key": "testing", "secret": "testing"}
    remote = run_job(small_job("s3://shards/train/", "s3://shards/out/", storage_options=options))
    s3_rows = read_output("s3://shards/out/", **options)
    assert sorted(r["id"] for r in s3_rows) == sorted(ids) and remote.images == 7
    assert [r["text"] for r in sorted(s3_rows, key=lambda r: r["id"])] == [rows[i]["text"] for i in sorted(ids)]


def test_second_driver_on_the_same_output_is_refused(tmp_path):
    from pipeline.batch.lease import OutputLease, OutputLocked

    out = tmp_path / "out"
    out.mkdir()
    with OutputLease(fsspec.filesystem("file"), str(out)):
        with pytest.raises(OutputLocked, match="another job is writing it"):
            run_job(small_job(str(REPO / "samples" / "images"), str(out)))
        command = [sys.executable, "-m", "jobs.cli", "caption", "--output", str(out), "--no-tracking"]
        result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                                capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "another job is writing it" in result.stderr
    assert not list(out.glob("*.parquet"))


def test_retry_errors_redoes_failed_rows_once(tmp_path, ray_local):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        random_image(300, 400, seed=i).save(folder / f"img_{i}.png")
    good = (folder / "img_0.png").read_bytes()
    (folder / "flaky.png").write_bytes(good[:100])  # as if a read had been cut short
    out = str(tmp_path / "out")
    first = run_job(small_job(str(folder), out))
    assert first.images == 4 and first.errors == 1
    (folder / "flaky.png").write_bytes(good)  # the storage answers again
    assert run_job(small_job(str(folder), out)).images == 0, "a plain resume keeps the error"
    again = run_job(small_job(str(folder), out, retry_errors=True))
    assert again.images == 1 and again.errors == 0 and again.skipped == 3
    rows = read_output(out)
    assert sorted(r["id"] for r in rows) == ["flaky.png", "img_0.png", "img_1.png", "img_2.png"]
    assert all(r["error"] is None for r in rows)
