"""MLflow tracking of jobs and ``hired compare``, against SQLite and a real ``mlflow server``.

The job output is real: the tiny LLaVA-NeXT runs HiRED on a few images, and the rows follow
``OUTPUT_SCHEMA`` (one failed row included), so metrics and kept-patch figures are checked on what
a job would actually log.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hired_ops import DropConfig
from jobs import compare
from pipeline.batch.config import JobConfig
from pipeline.batch.schema import OUTPUT_COLUMNS, OUTPUT_SCHEMA
from pipeline.model.config import ModelConfig
from pipeline.model.vlm import HiredVLM
from pipeline.tracking.figures import (
    draw_kept_patches,
    kept_masks,
    partition_pixels,
    resolve_layout,
    shade_partition,
)
from pipeline.tracking.job_metrics import job_metrics
from pipeline.tracking.memory import peak_memory_stats
from pipeline.tracking.results import (
    CONFIG_ARTIFACT,
    HISTOGRAM_ARTIFACT,
    KEPT_PATCHES_DIR,
    KIND_TAG,
    SAMPLE_ARTIFACT,
    log_job_results,
    track_job,
)
from pipeline.tracking.runs import (
    JobRun,
    TrackingConfig,
    git_commit,
    package_version,
    start_job_run,
)
from tests.conftest import TINY_MODEL
from tests.mlflow_server import mlflow_server  # noqa: F401  (a loopback server per module)

MIB = 2**20
PROMPT = "Describe the image."
# (height, width): wide, tall, square (all five partitions real) and small wide (1x2 grid)
IMAGE_SIZES = [(600, 1000), (1000, 600), (672, 672), (300, 500)]
ACTOR_STATS = [
    {"actor": "vision-0", "peak_accelerator_bytes": 3 * MIB, "peak_host_bytes": 900 * MIB},
    {"actor": "llm-0", "peak_accelerator_bytes": 5 * MIB, "peak_host_bytes": 700 * MIB},
]
JOB_PARAMS = {
    "model": TINY_MODEL,
    "method": "hired",
    "budget": "0.2",
    "alpha": 0.5,
    "l_init": 0,
    "l_final": None,
    "vision_pool": 1,
    "llm_pool": 1,
    "vision_batch_size": 4,
    "llm_batch_size": 4,
    "dataset": "/data/images",
    "images": 5,
}
MIN_PNG_BYTES = 5_000


def empty_row(**values) -> dict:
    """An output row with every column, unset ones null."""
    unknown = set(values) - set(OUTPUT_COLUMNS)
    assert not unknown, f"not output columns: {sorted(unknown)}"
    return {**dict.fromkeys(OUTPUT_COLUMNS), **values}


def smooth_image(height: int, width: int, seed: int) -> Image.Image:
    """Random colour blobs: structured enough that CLS attention is not uniform."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((max(2, height // 64), max(2, width // 64), 3)) * 255).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR)


@pytest.fixture(scope="module")
def job_output(tiny_next):
    """A real job's output: images, the engine's results, the Parquet-shaped table, geometry."""
    model, processor = tiny_next
    vlm = HiredVLM(model, processor, DropConfig(budget=0.2))
    images = [smooth_image(h, w, seed) for seed, (h, w) in enumerate(IMAGE_SIZES)]
    results = vlm.run(images, PROMPT)
    rows = []
    for index, (image, result) in enumerate(zip(images, results)):
        encoded, generation = result.encoded, result.generation
        rows.append(
            empty_row(
                id=f"img/{index}.png",
                path=f"/data/images/img/{index}.png",
                prompt=PROMPT,
                text=result.text,
                method="hired",
                budget="0.2",
                visual_tokens=encoded.num_tokens,
                sequence_tokens=encoded.sequence_length,
                available_tokens=int(encoded.available.sum()),
                partition_budgets=encoded.budgets.tolist(),
                image_height=image.height,
                image_width=image.width,
                prompt_tokens=generation.prompt_tokens,
                generated_tokens=generation.generated_tokens,
                padding_fraction=0.05 * index,
                decode_s=0.01 * (index + 1),
                vision_s=result.timings["encode_s"] / len(images),
                ttft_s=generation.ttft_s + 0.01 * index,  # the batch shares one TTFT: spread it out
                generate_s=generation.generate_s,
                feature_bytes=encoded.nbytes,
                pixel_bytes=3 * 336 * 336 * len(encoded.budgets),  # one uint8 tile per partition
            )
        )
    rows.append(
        empty_row(
            id="broken.jpg",
            path="/data/images/broken.jpg",
            prompt=PROMPT,
            method="hired",
            budget="0.2",
            decode_s=0.002,
            error="UnidentifiedImageError: cannot identify image file",
        )
    )
    table = pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)
    return images, results, table, vlm.geometry


def successful(table: pa.Table, column: str) -> np.ndarray:
    return np.array([r[column] for r in table.to_pylist() if r["error"] is None], dtype=np.float64)


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def backend(request, tmp_path):
    """``(tracking URI, folder the artifacts must land in)`` for each kind of store."""
    if request.param == "server":
        return request.getfixturevalue("mlflow_server")
    return f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "mlartifacts"


def download(client, run_id: str, path: str, tmp_path: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(tmp_path)))


def assert_png(path: Path, min_bytes: int = MIN_PNG_BYTES) -> None:
    assert path.stat().st_size > min_bytes, f"{path} is only {path.stat().st_size} bytes"
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
    with Image.open(path) as image:
        assert min(image.size) >= 200


# --------------------------------------------------------------------------------------------
# configuration and metrics


def test_tracking_config_resolves_the_default_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrackingConfig()
    assert config.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert config.sqlite_path == tmp_path / "mlflow.db"
    assert config.experiment == "hired"
    assert config.artifact_location == (tmp_path / "mlartifacts" / "hired").as_uri()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert TrackingConfig().tracking_uri == "http://127.0.0.1:5999"
    assert TrackingConfig().artifact_location is None  # the server decides
    assert TrackingConfig(tracking_uri="sqlite:///rel/m.db").sqlite_path == tmp_path / "rel" / "m.db"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"experiment": " "}, "experiment"),
        ({"tracking_uri": "mlflow.db"}, "not a URI"),
        ({"run_name": ""}, "run_name"),
        ({"tags": {"team": 3}}, "tags"),
    ],
)
def test_tracking_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrackingConfig(**kwargs)


def test_job_metrics_are_computed_from_the_rows(job_output):
    _, _, table, _ = job_output
    metrics = job_metrics(table, 2.5, ACTOR_STATS, {"vqa_accuracy": 0.625})
    tokens = successful(table, "visual_tokens")
    ttft = successful(table, "ttft_s")
    latency = successful(table, "decode_s") + successful(table, "vision_s") + successful(table, "generate_s")
    assert metrics["images"] == 5 and metrics["errors"] == 1
    assert metrics["images_per_s"] == pytest.approx(4 / 2.5)
    assert metrics["generated_tokens_per_s"] == pytest.approx(successful(table, "generated_tokens").sum() / 2.5)
    assert metrics["ttft_p50_s"] == pytest.approx(np.percentile(ttft, 50))
    assert metrics["ttft_p95_s"] == pytest.approx(np.percentile(ttft, 95))
    assert metrics["latency_p50_s"] == pytest.approx(np.percentile(latency, 50))
    assert metrics["latency_p95_s"] == pytest.approx(np.percentile(latency, 95))
    assert metrics["visual_tokens_mean"] == pytest.approx(tokens.mean())
    assert (metrics["visual_tokens_min"], metrics["visual_tokens_max"]) == (tokens.min(), tokens.max())
    assert metrics["padding_fraction_mean"] == pytest.approx(successful(table, "padding_fraction").mean())
    assert metrics["feature_bytes_mean"] == pytest.approx(successful(table, "feature_bytes").mean())
    assert metrics["pixel_bytes_mean"] == pytest.approx(successful(table, "pixel_bytes").mean())
    assert metrics["vision.peak_accel_mem_mb"] == 3 and metrics["llm.peak_accel_mem_mb"] == 5
    assert metrics["vision.actors"] == metrics["llm.actors"] == 1
    assert not [key for key in metrics if "-0" in key]  # no key names an actor
    assert metrics["peak_accel_mem_mb_max"] == 5 and metrics["peak_host_mem_mb_max"] == 900
    assert metrics["vqa_accuracy"] == 0.625


def test_job_metrics_when_every_row_failed_and_on_bad_input(job_output):
    _, _, table, _ = job_output
    failed = table.filter(pc.is_valid(table["error"]))
    metrics = job_metrics(failed, 1.0, [])
    assert metrics["images"] == metrics["errors"] == 1 and metrics["images_per_s"] == 0
    assert "ttft_p50_s" not in metrics and "visual_tokens_mean" not in metrics  # nothing to stand on
    with pytest.raises(ValueError, match="wall_s"):
        job_metrics(table, 0.0, [])
    with pytest.raises(ValueError, match="overwrite"):
        job_metrics(table, 1.0, [], {"images_per_s": 1.0})
    with pytest.raises(ValueError, match="lacks columns"):
        job_metrics(table.drop_columns(["ttft_s"]), 1.0, [])
    with pytest.raises(ValueError, match="peak_memory_stats"):
        job_metrics(table, 1.0, [{"actor": "x"}])


def test_actors_can_import_tracking_without_mlflow():
    # Every actor imports the stages module (and through it peak_memory_stats): MLflow (~120 MiB) must not come
    # with it, or each actor's reported peak would include it.
    code = "import sys, pipeline.batch.stages; print(sorted({'mlflow', 'matplotlib'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_peak_memory_stats_reports_this_process():
    stats = peak_memory_stats("vision-0")
    assert stats["actor"] == "vision-0"
    assert stats["peak_accelerator_bytes"] == 0  # no CUDA here
    assert stats["peak_host_bytes"] > 50 * MIB  # this process holds torch and a model


# --------------------------------------------------------------------------------------------
# kept-patch figures


def test_partitions_are_the_pixels_the_processor_feeds_the_tower(job_output, tiny_next):
    images, results, _, geometry = job_output
    processor = tiny_next[1].image_processor
    mean = np.array(processor.image_mean)[:, None, None]
    std = np.array(processor.image_std)[:, None, None]
    for image, result in zip(images, results):
        layout = resolve_layout(result.encoded, geometry)
        assert resolve_layout(result.encoded) == layout  # inferred from the encoded image alone
        pixels = processor(images=[image], return_tensors="pt")["pixel_values"][0].numpy()
        stock = ((pixels * std + mean) * 255).transpose(0, 2, 3, 1)
        tiles = partition_pixels(image, layout)
        assert len(tiles) == layout.num_partitions
        for tile, expected in zip(tiles, stock):
            assert np.abs(tile.astype(np.float64) - expected).max() <= 1.0


def test_kept_patches_stay_clear_and_dropped_ones_darken(job_output):
    images, results, _, geometry = job_output
    image, encoded = images[0], results[0].encoded
    layout = resolve_layout(encoded, geometry)
    masks = kept_masks(encoded, layout)
    assert masks.reshape(len(masks), -1).sum(axis=1).tolist() == np.bincount(encoded.partition).tolist()
    candidates = layout.candidate_mask().numpy().reshape(masks.shape)
    tile = partition_pixels(image, layout)[1]
    shaded = shade_partition(tile, masks[1], candidates[1])
    block = layout.patch
    for row, col in [tuple(np.argwhere(masks[1])[0]), tuple(np.argwhere(~masks[1] & candidates[1])[0])]:
        window = np.s_[row * block : (row + 1) * block, col * block : (col + 1) * block]
        if masks[1][row, col]:
            assert np.array_equal(shaded[window], tile[window])
        else:
            assert shaded[window].mean() < 0.3 * tile[window].mean() + 1


def test_draw_kept_patches_shows_every_partition(job_output):
    images, results, _, geometry = job_output
    for image, result in zip(images, results):
        encoded = result.encoded
        figure = draw_kept_patches(image, encoded, geometry, title="x")
        rows, cols = encoded.grid
        titles = [axis.get_title() for axis in figure.axes]
        assert len(titles) == 1 + rows * cols
        assert titles[0] == f"full image: {(encoded.partition == 0).sum()}/{encoded.available[0]}"
    with pytest.raises(ValueError, match="original image"):
        draw_kept_patches(images[1], results[0].encoded, geometry)


def test_draw_kept_patches_for_a_single_partition_model(tiny_llava, tmp_path):
    model, processor = tiny_llava
    image = smooth_image(400, 700, seed=7)
    encoded = HiredVLM(model, processor, DropConfig(budget=100)).encode([image])[0]
    layout = resolve_layout(encoded)
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0].numpy()
    mean = np.array(processor.image_processor.image_mean)[:, None, None]
    std = np.array(processor.image_processor.image_std)[:, None, None]
    stock = ((pixels * std + mean) * 255).transpose(1, 2, 0)
    assert np.abs(partition_pixels(image, layout)[0].astype(np.float64) - stock).max() <= 1.0
    figure = draw_kept_patches(image, encoded)
    assert [axis.get_title() for axis in figure.axes] == ["full image: 100/576"]
    figure.savefig(tmp_path / "kept.png")
    assert_png(tmp_path / "kept.png")


# --------------------------------------------------------------------------------------------
# runs in MLflow


def test_metric_names_from_setting_names_are_accepted_by_mlflow(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with start_job_run(TrackingConfig(tracking_uri=uri, experiment="names"), {}) as run:
        # what a sweep's parent logs for PruMerge+ (MLflow refused "+" and failed the whole sweep)
        run.log_metrics({"accuracy.prumerge+": 0.5, "f1.hired-0.2": 0.25, "odd name?": 1.0})
    metrics = MlflowClient(uri).get_run(run.run_id).data.metrics
    assert metrics == {"accuracy.prumerge_plus": 0.5, "f1.hired-0.2": 0.25, "odd name_": 1.0}


def test_job_run_records_params_metrics_and_artifacts(backend, job_output, tmp_path):
    from mlflow import MlflowClient

    uri, artifact_root = backend
    images, results, table, geometry = job_output
    config = TrackingConfig(tracking_uri=uri, experiment="caption-test", run_name="tiny-hired-0.2", tags={"team": "a"})
    figures = [(images[i], results[i].encoded, f"img/{i}.png") for i in (0, 3)]
    resolved = {"model": "hired/tiny-llava-next", "drop": {"method": "hired", "budget": "0.2"}, "out": Path("/o")}
    with start_job_run(config, JOB_PARAMS) as run:
        returned = log_job_results(
            run, table, 2.5, ACTOR_STATS, resolved, figures, {"vqa_accuracy": 0.625}, geometry=geometry
        )

    client = MlflowClient(uri)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "tiny-hired-0.2"
    assert logged.data.tags["team"] == "a"
    params = logged.data.params
    assert {key: params[key] for key in JOB_PARAMS} == {key: str(value) for key, value in JOB_PARAMS.items()}
    assert params["package_version"] == package_version() != "unknown"
    assert params["git_commit"] == git_commit()

    metrics = logged.data.metrics
    assert {key: metrics[key] for key in returned} == pytest.approx(returned)
    assert metrics["visual_tokens_mean"] == pytest.approx(successful(table, "visual_tokens").mean())
    assert metrics["ttft_p95_s"] == pytest.approx(np.percentile(successful(table, "ttft_s"), 95))
    assert metrics["errors"] == 1 and metrics["peak_accel_mem_mb_max"] == 5
    assert metrics["vqa_accuracy"] == 0.625

    assert json.loads(download(client, run.run_id, CONFIG_ARTIFACT, tmp_path).read_text()) == {
        **resolved,
        "out": "/o",
    }
    sample = json.loads(download(client, run.run_id, SAMPLE_ARTIFACT, tmp_path).read_text())
    assert [row["id"] for row in sample] == table.column("id").to_pylist()
    assert sample[-1]["error"].startswith("UnidentifiedImageError") and sample[-1]["text"] is None
    assert sample[0]["visual_tokens"] == results[0].encoded.num_tokens
    assert_png(download(client, run.run_id, HISTOGRAM_ARTIFACT, tmp_path))
    kept = sorted(a.path for a in client.list_artifacts(run.run_id, KEPT_PATCHES_DIR))
    assert kept == [f"{KEPT_PATCHES_DIR}/00_img_0.png", f"{KEPT_PATCHES_DIR}/01_img_3.png"]
    for path in kept:
        assert_png(download(client, run.run_id, path, tmp_path), min_bytes=20_000)
    # the files live where this store keeps artifacts: next to the SQLite db, or the server's folder
    assert len(list(artifact_root.rglob("visual_tokens_hist.png"))) >= 1


def test_nested_failed_and_disabled_runs(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrackingConfig(tracking_uri=uri, experiment="sweep", log_system_metrics=False)
    client = MlflowClient(uri)
    with start_job_run(config, {"sweep": "budgets"}) as parent:
        with start_job_run(config, {"method": "hired"}, parent_run_id=parent.run_id) as child:
            pass
        with (
            pytest.raises(RuntimeError, match="boom"),
            start_job_run(config, {"method": "hired"}, parent_run_id=parent.run_id) as failing,
        ):
            raise RuntimeError("boom")
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(failing.run_id).info.status == "FAILED"
    assert client.get_run(parent.run_id).info.status == "FINISHED"
    with pytest.raises(ValueError, match="not found"), start_job_run(config, {}, parent_run_id="0" * 32):
        pass
    other = TrackingConfig(tracking_uri=uri, experiment="elsewhere", log_system_metrics=False)
    with pytest.raises(ValueError, match="share their parent"), start_job_run(other, {}, parent_run_id=parent.run_id):
        pass

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with start_job_run(TrackingConfig(enabled=False), {"method": "hired"}) as disabled:
        assert isinstance(disabled, JobRun) and not disabled.enabled
        disabled.log_metrics({"x": 1.0})
    assert list(elsewhere.iterdir()) == []  # no database, no artifacts


class FakeJobConfig:
    """Stands in for a job's config: a nested dict with secrets already masked, and its params."""

    def to_dict(self) -> dict:
        return {"model": {"name": "hired/tiny-llava-next"}, "drop": {"method": "hired", "budget": "0.2"}, "vision": {"size": 2}}

    def to_params(self) -> dict:
        return {"model": "hired/tiny-llava-next", "method": "hired", "budget": "0.2", "vision.size": 2}


def test_track_job_logs_params_kind_and_summary(job_output, tmp_path):
    from mlflow import MlflowClient

    _, _, table, _ = job_output
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = TrackingConfig(tracking_uri=uri, experiment="cli", run_name="from-cli")
    summary = argparse.Namespace(table=table, wall_s=2.0, actor_stats=ACTOR_STATS)
    with track_job(tracking, FakeJobConfig(), dataset="/data/images", kind="caption") as tracker:
        metrics = tracker.log_summary(summary)
    run = MlflowClient(uri).get_run(tracker.run.run_id)
    assert run.info.run_name == "from-cli" and run.data.tags[KIND_TAG] == "caption"
    assert {k: run.data.params[k] for k in ("vision.size", "dataset", "images", "budget")} == {
        "vision.size": "2",
        "dataset": "/data/images",
        "images": "5",
        "budget": "0.2",
    }
    assert run.data.metrics["images_per_s"] == metrics["images_per_s"] == 2.0

    off = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'off.db'}", enabled=False)
    with track_job(off, FakeJobConfig(), dataset="/data/images") as tracker:
        assert tracker.log_summary(summary) == metrics
    assert not (tmp_path / "off.db").exists()


def test_system_metrics_are_sampled_while_the_job_runs(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    pytest.importorskip("psutil", reason="MLflow's system metrics need psutil")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with start_job_run(TrackingConfig(tracking_uri=uri, experiment="system"), {}) as run:
        time.sleep(1.0)
    metrics = MlflowClient(uri).get_run(run.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


# --------------------------------------------------------------------------------------------
# hired compare

COMPARED = [  # run name, method, budget, wall seconds, accuracy
    ("hired-0.2", "hired", "0.2", 2.0, 0.61),
    ("spatial-0.4", "spatial", "0.4", 4.0, 0.55),
    ("hired-0.4", "hired", "0.4", 3.0, 0.70),
]


@pytest.fixture(scope="module")
def compared_runs(job_output, tmp_path_factory):
    """Three finished runs in one SQLite experiment: ``(uri, {run name: run id})``."""
    _, _, table, _ = job_output
    uri = f"sqlite:///{tmp_path_factory.mktemp('compare') / 'mlflow.db'}"
    ids = {}
    for name, method, budget, wall_s, accuracy in COMPARED:
        config = TrackingConfig(tracking_uri=uri, experiment="sweep", run_name=name, log_system_metrics=False)
        # the first two runs are logged as jobs logged them before configs nested, the last as
        # JobConfig.to_params() logs them now: compare must line both up
        params = {**JOB_PARAMS, "method": method, "budget": budget, "task": "vqa"}
        if name == COMPARED[-1][0]:
            job = JobConfig(
                input="in", output="out", model=ModelConfig(name=TINY_MODEL), drop=DropConfig(method=method, budget=budget)
            )
            params = {**job.to_params(), "task": "vqa"}
        with start_job_run(config, params) as run:
            log_job_results(run, table, wall_s, ACTOR_STATS, {}, (), {"vqa_accuracy": accuracy})
        ids[name] = run.run_id
    return uri, ids


def run_compare(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hired")
    compare.add_parser(parser.add_subparsers(dest="command"))
    return compare.run(parser.parse_args(["compare", *argv]))


def printed_order(stdout: str, names) -> list[str]:
    return sorted(names, key=lambda name: stdout.index(f"  {name}  "))


def test_compare_orders_by_a_column_and_writes_plots(compared_runs, tmp_path, capsys):
    from mlflow import MlflowClient

    uri, ids = compared_runs
    out = tmp_path / "out"
    argv = ["--experiment", "sweep", "--tracking-uri", uri, "--output", str(out)]
    assert run_compare(*argv, "--order-by", "images_per_s", "--descending") == 0
    stdout = capsys.readouterr().out
    by_throughput = ["hired-0.2", "hired-0.4", "spatial-0.4"]  # walls 2 < 3 < 4 s for the same rows
    assert printed_order(stdout, ids) == by_throughput
    with (out / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run_name"] for row in rows] == by_throughput
    assert [row["run_id"] for row in rows] == [ids[name] for name in by_throughput]
    assert [float(row["accuracy"]) for row in rows] == [0.61, 0.70, 0.55]
    assert {row["accuracy_metric"] for row in rows} == {"vqa_accuracy"}
    assert {row["budget_unit"] for row in rows} == {"fraction"}
    assert [float(row["images_per_s"]) for row in rows] == pytest.approx([4 / 2, 4 / 3, 4 / 4])
    for name in ("accuracy_vs_tokens.png", "accuracy_vs_throughput.png", "throughput_vs_budget.png"):
        assert_png(out / name)

    logged = re.search(r"logged as run ([0-9a-f]{32})", stdout).group(1)
    client = MlflowClient(uri)
    assert client.get_run(logged).info.run_name == "compare"
    artifacts = {a.path for a in client.list_artifacts(logged)}
    assert artifacts == {"compare.csv", "accuracy_vs_tokens.png", "accuracy_vs_throughput.png", "throughput_vs_budget.png"}

    # the compare run just logged is not a job run: comparing again still shows the three, by
    # default by method then budget
    assert run_compare(*argv, "--no-log") == 0
    stdout = capsys.readouterr().out
    assert printed_order(stdout, ids) == ["hired-0.2", "hired-0.4", "spatial-0.4"]
    assert stdout.count("hired/tiny-llava-next") == 3


def test_compare_keeps_the_order_of_run_ids(compared_runs, tmp_path, capsys):
    uri, ids = compared_runs
    wanted = ["spatial-0.4", "hired-0.2", "hired-0.4"]
    out = tmp_path / "out"
    run_ids = [ids[name] for name in wanted]
    assert run_compare("--run-ids", *run_ids, "--tracking-uri", uri, "--output", str(out), "--no-log") == 0
    stdout = capsys.readouterr().out
    assert printed_order(stdout, ids) == wanted
    assert all(ids[name][:8] in stdout for name in wanted)
    with (out / "compare.csv").open() as handle:
        assert [row["run_name"] for row in csv.DictReader(handle)] == wanted


def test_compare_errors_name_what_is_missing(compared_runs, tmp_path):
    uri, _ = compared_runs
    with pytest.raises(ValueError, match=r"experiment 'nope' not found .*'sweep'"):
        run_compare("--experiment", "nope", "--tracking-uri", uri, "--output", str(tmp_path))
    with pytest.raises(ValueError, match="run 'f00d' not found"):
        run_compare("--run-ids", "f00d", "--tracking-uri", uri, "--output", str(tmp_path))
    missing = tmp_path / "none.db"
    with pytest.raises(ValueError, match="no MLflow database"):
        run_compare("--tracking-uri", f"sqlite:///{missing}", "--output", str(tmp_path))
    assert not missing.exists()


def test_compare_without_accuracy_and_with_mixed_budget_units(job_output, tmp_path, capsys):
    _, _, table, _ = job_output
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for method, budget in [("hired", "576"), ("hired", "0.2"), ("prumerge", "auto")]:
        config = TrackingConfig(tracking_uri=uri, experiment="mixed", log_system_metrics=False)
        with start_job_run(config, {**JOB_PARAMS, "method": method, "budget": budget}) as run:
            log_job_results(run, table, 1.0, [], {})
    out = tmp_path / "out"
    assert run_compare("--experiment", "mixed", "--tracking-uri", uri, "--output", str(out), "--no-log") == 0
    assert "no run has an accuracy metric" in capsys.readouterr().out
    assert not (out / "accuracy_vs_tokens.png").exists() and not (out / "accuracy_vs_throughput.png").exists()
    assert_png(out / "throughput_vs_budget.png")
    with (out / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    mean_kept = successful(table, "visual_tokens").mean()
    assert {(row["budget_unit"], float(row["budget_x"])) for row in rows} == {("kept", mean_kept)}


@pytest.mark.slow
def test_caption_job_run_matches_its_parquet_output(backend, tmp_path, ray_local):
    """`hired caption` end to end: the MLflow run's numbers are the Parquet rows' numbers."""
    from mlflow import MlflowClient

    from jobs.cli import main

    uri, _ = backend
    out = tmp_path / "captions"
    samples = Path(__file__).resolve().parents[1] / "samples" / "images"
    code = main([
        "caption", str(samples), "--output", str(out), "--model", TINY_MODEL, "--tracking-uri", uri, "--experiment", "e2e",
        "--run-name", "caption-e2e", "--max-new-tokens", "4", "--budget", "300",
    ])  # fmt: skip
    assert code == 0
    rows = pq.read_table(out).to_pylist()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'caption-e2e'")
    params, metrics = run.data.params, run.data.metrics
    assert params["method"] == "hired" and params["budget"] == "300" and params["model"] == "hired/tiny-llava-next"
    assert int(params["images"]) == len(rows) == 8
    ok = [r for r in rows if r["error"] is None]
    assert metrics["visual_tokens_mean"] == pytest.approx(np.mean([r["visual_tokens"] for r in ok])) == 300
    assert metrics["errors"] == len(rows) - len(ok)
    assert metrics["ttft_p50_s"] == pytest.approx(np.median([r["ttft_s"] for r in ok]), rel=1e-4)
    assert metrics["peak_host_mem_mb_max"] > 0
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "plots", "samples", "kept_patches"} <= names
    figures = client.list_artifacts(run.info.run_id, "kept_patches")
    assert len(figures) == 4
    assert_png(download(client, run.info.run_id, figures[0].path, tmp_path))
