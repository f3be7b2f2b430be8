"""``hired benchmark``: the per-setting peak memory, one timed request, and the whole command on
the tiny model with its table and MLflow runs."""

from __future__ import annotations

import csv
import io

import pytest
import torch

from hired_ops import DropConfig
from jobs.cli import main
from pipeline.experiments.benchmarking import BenchConfig
from pipeline.experiments.measure import (
    batch_of,
    load_images,
    peak_memory,
    time_request,
)
from pipeline.experiments.settings import TABLE_CSV, TABLE_MARKDOWN, Setting
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM
from pipeline.tracking.runs import KIND_TAG, TrackingConfig, open_client
from tests.conftest import REPO, TINY_MODEL

SAMPLE_IMAGES = REPO / "samples" / "images"


def test_host_peak_is_the_blocks_own_after_a_larger_one():
    cpu = torch.device("cpu")
    # 100 kB blocks live on malloc's heap, which keeps freed pages unless trimmed: the case in
    # which a larger setting would leave its high-water mark to the next one
    with peak_memory(cpu) as big:
        blocks = [bytearray(100_000) for _ in range(3000)]
        del blocks
    with peak_memory(cpu) as small:
        blocks = [bytearray(100_000) for _ in range(600)]
        del blocks
    if big.peak_mb is None:
        pytest.skip("no /proc/self/clear_refs here: host peak memory is not measured")
    assert 280 <= big.over_base_mb < 400
    assert 55 <= small.over_base_mb < 150
    assert small.peak_mb < big.peak_mb


def test_one_request_times_each_step(tiny_next):
    model, processor = tiny_next
    vlm = HiredVLM(model, processor)
    images = batch_of(load_images(str(SAMPLE_IMAGES), count=2), 3)
    assert len(images) == 3 and images[2] is images[0]
    timing = time_request(vlm, images, "Describe.", DropConfig(method="full"), GenerateOptions(max_new_tokens=3))
    assert 0 < timing.preprocess_s + timing.encode_s < timing.ttft_s < timing.latency_s
    assert timing.throughput == pytest.approx(timing.generated_tokens / timing.latency_s)
    assert timing.visual_tokens > 576 and timing.prompt_tokens > timing.visual_tokens


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda v: BenchConfig(**v, batch_sizes=(0,)), "batch sizes must be >= 1"),
        (lambda v: BenchConfig(**v, repeats=0), "repeats must be >= 1"),
        (lambda v: BenchConfig(**v, warmup=-1), "warmup must be >= 0"),
        (lambda v: BenchConfig(**v, generate=GenerateOptions(max_new_tokens=0)), "max_new_tokens must be >= 1"),
        (lambda v: BenchConfig(**v, drop=DropConfig(alpha=2.0)), "alpha must be in"),
        (lambda v: BenchConfig(**{**v, "settings": ()}), "at least one setting"),
    ],
)
def test_config_is_validated(build, message):
    values = {"input": str(SAMPLE_IMAGES), "settings": (Setting("full"),)}
    with pytest.raises(ValueError, match=message):
        build(values)


@pytest.mark.slow
def test_benchmark_command_table_and_runs(tmp_path, capsys):
    db, out = tmp_path / "mlflow.db", tmp_path / "bench"
    argv = [
        "benchmark", "--model", TINY_MODEL, "--methods", "full,hired", "--budgets", "0.2", "--batch-sizes", "1,2",
        "--repeats", "2", "--max-new-tokens", "4", "--output", str(out),
        "--tracking-uri", f"sqlite:///{db}", "--experiment", "bench-test",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Batch | Full | HiRED 20% |" in printed
    assert "Timers start at preprocessing" in printed

    rows = list(csv.DictReader(io.StringIO((out / TABLE_CSV).read_text())))
    assert [(r["setting"], r["batch_size"]) for r in rows] == [
        ("full", "1"), ("full", "2"), ("hired-0.2", "1"), ("hired-0.2", "2")
    ]
    by_key = {(r["setting"], int(r["batch_size"])): r for r in rows}
    for row in rows:
        assert float(row["throughput_tok_s"]) > 0 and float(row["ttft_s"]) > 0
        assert float(row["ttft_s"]) < float(row["latency_s"])
        # the end of sequence is masked: every image decodes all its tokens
        assert float(row["generated_tokens"]) == 4 * int(row["batch_size"])
    for batch in (1, 2):
        assert float(by_key[("full", batch)]["visual_tokens"]) > float(by_key[("hired-0.2", batch)]["visual_tokens"])
    assert (out / TABLE_MARKDOWN).read_text().startswith("Model `hired/tiny-llava-next`")

    client = open_client(TrackingConfig(tracking_uri=f"sqlite:///{db}", experiment="bench-test"))
    experiment = client.get_experiment_by_name("bench-test")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(KIND_TAG) == "benchmark-sweep")
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {TABLE_CSV, TABLE_MARKDOWN}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == [
        f"benchmark · {setting} · tiny-llava-next · b{batch}" for setting in ("full", "hired 20%") for batch in (1, 2)
    ]
    for child in children:
        assert child.data.params["method"] in ("full", "hired")
        assert child.data.params["batch_size"] in ("1", "2")
        metrics = child.data.metrics
        assert metrics["generated_tokens_per_s"] > 0 and metrics["ttft_p50_s"] > 0
        assert metrics["peak_host_mem_mb_max"] > 0
        setting = "-".join(v for v in (child.data.params["method"], child.data.params["budget"]) if v != "None")
        row = by_key[(setting, int(child.data.params["batch_size"]))]
        assert metrics["generated_tokens_per_s"] == pytest.approx(float(row["throughput_tok_s"]))
