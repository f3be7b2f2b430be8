"""Runs a person compares at a glance, against a real ``mlflow server`` on loopback: experiments
of the model-training kind, run names that say what ran, metric keys every run shares, live steps
while a job runs, the input as an MLflow dataset, and ``hired compare``'s trade-off plots over old
and new runs."""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import compare
from pipeline.batch.progress import Progress
from pipeline.data.storage import filesystem, is_image_path
from pipeline.experiments.tasks import chance_level
from pipeline.tracking.datasets import describe_input, log_input, read_profile
from pipeline.tracking.frontier import (
    accuracy_vs_throughput,
    accuracy_vs_tokens,
    pareto,
)
from pipeline.tracking.job_metrics import actor_table, job_metrics
from pipeline.tracking.live import (
    LiveMetrics,
    ProgressPrinter,
    duration,
    progress_line,
    sweep_label,
)
from pipeline.tracking.naming import run_name
from pipeline.tracking.results import ACTORS_ARTIFACT, log_job_results
from pipeline.tracking.runs import (
    EXPERIMENT_KIND_TAG,
    TRAINING_KIND,
    JobRun,
    TrackingConfig,
    start_job_run,
)
from tests.conftest import TINY_MODEL
from tests.mlflow_server import mlflow_server  # noqa: F401  (a loopback server per module)
from tests.test_tracking import JOB_PARAMS, empty_row

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
MIB = 2**20


def described(uri: str):
    fs, path, _ = filesystem(uri, None)
    return describe_input(uri, fs, path, is_image_path)


def progress_after(rows: int, seconds: float, total: int = 8) -> Progress:
    return Progress(rows_done=rows, rows_total=total, errors=rows // 4, generated_tokens=3 * rows,
                    visual_tokens=300 * (rows - rows // 4), elapsed_s=seconds)  # fmt: skip


# --------------------------------------------------------------------------------------------
# names, progress lines, chance, datasets: no server needed


def test_run_names_say_what_ran():
    assert run_name("caption", "hired", "0.2", "hired/tiny-llava-next") == "caption · hired 20% · tiny-llava-next"
    assert run_name("evaluate vqa", "divprune", "0.1") == "evaluate vqa · divprune 10%"
    assert run_name("caption", "hired", "576", "/ckpt/llava-next-7b/") == "caption · hired 576 tokens · llava-next-7b"
    assert run_name("benchmark", "full", None, "m", "b4") == "benchmark · full · m · b4"


def test_progress_lines_count_rows_and_time_left():
    assert duration(8) == "8s" and duration(75) == "1m15s" and duration(3700) == "1h01m"
    line = progress_line(progress_after(4, 10.0), "setting 1 of 3: hired-0.2")
    assert line == "[setting 1 of 3: hired-0.2] 4/8 rows, 0.30 images/s, 1 errors, ~10s left"
    assert "left" not in progress_line(Progress(rows_done=0, rows_total=None, elapsed_s=1.0))
    assert sweep_label(0, 3, "hired-0.2", 0.0, 5.0) == "setting 1 of 3: hired-0.2"
    assert sweep_label(2, 3, "full", 0.0, 120.0) == "setting 3 of 3: full, sweep ~1m00s left"
    printed: list[str] = []
    printer = ProgressPrinter("x", interval_s=3600, write=printed.append)
    for rows in (2, 4, 6, 8):
        printer(progress_after(rows, rows))
    assert [line.split(" rows")[0] for line in printed] == ["[x] 2/8", "[x] 8/8"]  # throttled, but the end shows


def test_chance_comes_from_the_task():
    assert chance_level("vqa") == 0.0 and chance_level("pope") == 0.5
    assert chance_level("multiple_choice", [{"choices": ["a", "b"]}, {"choices": ["a", "b", "c", "d"]}]) == 0.375
    assert chance_level("multiple_choice") is None


def test_dataset_digest_is_of_the_listing_and_the_manifest(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "notes.txt", ".hidden.png"):
        (folder / name).write_bytes(b"x" * 10)
    first = described(str(folder))
    assert (first.name, first.rows, first.kind) == ("images", 2, "listing")
    assert described(str(folder)).digest == first.digest  # nothing changed
    (folder / ".hidden.png").write_bytes(b"y" * 99)
    assert described(str(folder)).digest == first.digest  # hidden files are not inputs
    (folder / "b.jpg").write_bytes(b"x" * 11)
    assert described(str(folder)).digest != first.digest  # a file grew
    glob = described(f"{folder}/*.png")
    assert (glob.name, glob.rows) == ("images/*.png", 1)

    manifest = tmp_path / "set.jsonl"
    manifest.write_text("\n".join(json.dumps({"image": f"{i}.png"}) for i in range(5)))  # no final newline
    jsonl = described(str(manifest))
    assert (jsonl.rows, jsonl.kind) == (5, "manifest")
    pq.write_table(pa.table({"image": [f"{i}.png" for i in range(7)]}), tmp_path / "set.parquet")
    assert described(str(tmp_path / "set.parquet")).rows == 7  # from the footer
    assert described(str(folder / "a.png")).rows == 1
    with pytest.raises(ValueError, match="does not exist"):
        described(str(tmp_path / "missing"))


def test_pool_memory_keys_do_not_depend_on_pool_size():
    def stats(pool: str, pid: int, host_mib: int) -> dict:
        return {"actor": f"{pool}-{pid}", "peak_accelerator_bytes": 0, "peak_host_bytes": host_mib * MIB}

    table = pa.Table.from_pylist([empty_row(id="a", error="bad")])
    one = job_metrics(table, 1.0, [stats("vision", 11, 100), stats("llm", 12, 300)])
    three = [stats("vision", 21, 100), stats("vision", 22, 200), stats("vision", 22, 150), stats("llm", 23, 300)]
    many = job_metrics(table, 1.0, three)
    assert set(one) == set(many)
    assert many["vision.actors"] == 2 and many["vision.peak_host_mem_mb"] == 300  # 100 + the larger of 200, 150
    assert many["vision.mean_host_mem_mb"] == 150 and many["peak_host_mem_mb_max"] == 300
    assert actor_table(three) == {
        "actor": ["vision-21", "vision-22", "llm-23"],
        "pool": ["vision", "vision", "llm"],
        "peak_accel_mem_mb": [0.0, 0.0, 0.0],
        "peak_host_mem_mb": [100.0, 200.0, 300.0],
    }


def test_frontier_is_what_no_other_run_beats():
    points = [(1.0, 0.5, "a"), (2.0, 0.6, "b"), (3.0, 0.4, "c"), (1.5, 0.45, "d")]
    assert pareto(points) == [(2.0, 0.6, "b"), (3.0, 0.4, "c")]


def frontier_rows() -> list[dict]:
    base = {"accuracy_metric": "f1", "chance": 0.5, "dataset": "pope.jsonl", "dataset_digest": "d1"}
    return [
        {**base, "method": "full", "budget": None, "accuracy": 0.8, "visual_tokens_mean": 2000.0, "images_per_s": 1.0},
        {**base, "method": "hired", "budget": "0.2", "accuracy": 0.7, "visual_tokens_mean": 400.0, "images_per_s": 3.0},
        {**base, "method": "hired", "budget": "0.4", "accuracy": 0.75, "visual_tokens_mean": 800.0, "images_per_s": 2.0},
    ]


def test_trade_off_plots_draw_full_tokens_and_chance():
    rows = frontier_rows()
    for figure in (accuracy_vs_tokens(rows, "f1"), accuracy_vs_throughput(rows, "f1")):
        labels = [line.get_label() for line in figure.axes[0].lines]
        assert "full tokens (0.800)" in labels and "chance (0.5)" in labels
        assert "WARNING" not in figure._suptitle.get_text()
    mixed = rows + [{**rows[1], "dataset": "other.jsonl", "dataset_digest": "d2"}]
    title = accuracy_vs_throughput(mixed, "f1")._suptitle.get_text()
    assert "2 datasets" in title and "other.jsonl (d2)" in title


# --------------------------------------------------------------------------------------------
# against the server


def test_experiments_are_of_the_model_training_kind_unless_given_one(mlflow_server):  # noqa: F811
    from mlflow import MlflowClient

    uri, _ = mlflow_server
    client = MlflowClient(uri)
    genai = client.create_experiment("made-as-genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    bare = client.create_experiment("made-bare")
    for name in ("new-here", "made-as-genai", "made-bare"):
        with start_job_run(TrackingConfig(tracking_uri=uri, experiment=name, log_system_metrics=False), {}) as run:
            pass
    # the link a job prints opens the UI in its model-training view, whatever the browser chose
    assert run.ui_url == f"{uri}/#/experiments/{bare}/runs/{run.run_id}?workflowType=machine_learning"
    assert JobRun(None, None, None, "sqlite:///x.db").ui_url is None
    kinds = {name: client.get_experiment_by_name(name).tags.get(EXPERIMENT_KIND_TAG) for name in
             ("new-here", "made-as-genai", "made-bare")}  # fmt: skip
    assert kinds == {"new-here": TRAINING_KIND, "made-as-genai": "genai_development", "made-bare": TRAINING_KIND}
    assert {genai, bare} <= {e.experiment_id for e in client.search_experiments()}


def test_live_steps_reach_the_server_while_the_job_runs(mlflow_server, caplog):  # noqa: F811
    from mlflow import MlflowClient

    uri, _ = mlflow_server
    client = MlflowClient(uri)
    config = TrackingConfig(tracking_uri=uri, experiment="live", log_system_metrics=False)
    seen_while_running = []
    with start_job_run(config, {}) as run, LiveMetrics(run, interval_s=0.1) as live:
        for rows in (2, 4, 6, 8):
            live(progress_after(rows, rows * 0.5))
            deadline = time.monotonic() + 30  # the background thread logs this report in a while
            while time.monotonic() < deadline:
                history = client.get_metric_history(run.run_id, "live/rows_done")
                if history and history[-1].step == rows:
                    break
                time.sleep(0.05)
            seen_while_running.append(len(history))
        assert client.get_run(run.run_id).info.status == "RUNNING"
    assert seen_while_running == [1, 2, 3, 4]
    history = client.get_metric_history(run.run_id, "live/images_per_s")
    assert [m.step for m in history] == [2, 4, 6, 8]
    assert [m.value for m in history] == pytest.approx([progress_after(r, r * 0.5).images_per_s for r in (2, 4, 6, 8)])
    assert client.get_run(run.run_id).data.metrics["live/fraction_done"] == 1.0

    class Refusing:
        def log_batch(self, *args, **kwargs):
            raise ConnectionError("server gone")

    broken = JobRun(Refusing(), "0" * 32, "0", uri)
    caplog.set_level(logging.WARNING)
    with LiveMetrics(broken, interval_s=0.05) as live:  # a failing server never reaches the job
        live(progress_after(2, 1.0))
        time.sleep(0.2)
        live(progress_after(4, 2.0))
    assert live.steps_logged == 0
    assert sum("live metrics not logged" in r.message for r in caplog.records) == 1


def test_old_and_new_runs_line_up_in_compare(mlflow_server, tmp_path, capsys):  # noqa: F811
    """A run logged before this change (per-actor memory keys, flat params, no dataset input)
    and runs logged now read into one table; the datasets differ, and compare says so."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri, _ = mlflow_server
    client = MlflowClient(uri)
    experiment = client.create_experiment("old-and-new")
    old = client.create_run(experiment, run_name="indecisive-hawk-245").info.run_id
    old_params = {**JOB_PARAMS, "method": "hired", "budget": "0.2", "task": "pope", "dataset": "/data/pope.jsonl"}
    old_metrics = {
        "images_per_s": 2.0, "visual_tokens_mean": 576.0, "f1": 0.7,
        "peak_host_mem_mb.llm-3299": 900.0, "peak_host_mem_mb.vision-3298": 1200.0,
        "peak_accel_mem_mb.llm-3299": 0.0, "peak_host_mem_mb_max": 1200.0, "peak_accel_mem_mb_max": 0.0,
    }  # fmt: skip
    client.log_batch(
        old,
        metrics=[Metric(k, v, 0, 0) for k, v in old_metrics.items()],
        params=[Param(k, str(v)) for k, v in old_params.items()],
    )
    client.set_terminated(old)

    manifest = SAMPLES / "eval" / "pope.jsonl"
    dataset = described(str(manifest))
    config = TrackingConfig(tracking_uri=uri, experiment="old-and-new", log_system_metrics=False)
    table = pa.Table.from_pylist([empty_row(id="a", visual_tokens=400, generated_tokens=3)])
    stats = [{"actor": "vision-1", "peak_accelerator_bytes": 0, "peak_host_bytes": 800 * MIB}]
    new_ids = {}
    for method, budget, accuracy in (("full", None, 0.8), ("hired", "0.4", 0.75)):
        params = {**JOB_PARAMS, "method": method, "budget": budget, "task": "pope", "dataset": dataset.uri}
        with start_job_run(config, params) as run:
            log_input(run, dataset, "evaluate")
            log_job_results(run, table, 1.0, stats, {}, (), {"f1": accuracy, "chance": 0.5})
        new_ids[method] = run.run_id
    logged = client.get_run(new_ids["hired"])
    (entry,) = logged.inputs.dataset_inputs
    assert (entry.dataset.name, entry.dataset.digest) == ("pope.jsonl", dataset.digest)
    assert read_profile(entry.dataset.profile)["num_rows"] == sum(1 for line in manifest.open() if line.strip())
    assert json.loads(entry.dataset.source)["uri"] == str(manifest)
    assert {tag.key: tag.value for tag in entry.tags}["mlflow.data.context"] == "evaluate"
    actors = json.loads(Path(client.download_artifacts(run.run_id, ACTORS_ARTIFACT, str(tmp_path))).read_text())
    assert actors["columns"] == ["actor", "pool", "peak_accel_mem_mb", "peak_host_mem_mb"]
    assert actors["data"] == [["vision-1", "vision", 0.0, 800.0]]

    out = tmp_path / "out"
    parser = argparse.ArgumentParser(prog="hired")
    compare.add_parser(parser.add_subparsers(dest="command"))
    argv = ["compare", "--experiment", "old-and-new", "--tracking-uri", uri, "--output", str(out)]
    assert compare.run(parser.parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "WARNING: runs over 2 datasets" in printed
    with (out / "compare.csv").open() as handle:
        rows = {row["run_id"]: row for row in csv.DictReader(handle)}
    assert rows[old]["dataset"] == "/data/pope.jsonl" and rows[old]["dataset_digest"] == ""
    assert float(rows[old]["peak_host_mem_mb"]) == 1200 and float(rows[old]["accuracy"]) == 0.7
    assert rows[old]["chance"] == "0.5"  # from the task, as old runs logged no chance
    assert rows[new_ids["hired"]]["dataset_digest"] == dataset.digest
    assert float(rows[new_ids["full"]]["peak_host_mem_mb"]) == 800
    for name in ("accuracy_vs_tokens.png", "accuracy_vs_throughput.png", "throughput_vs_budget.png"):
        assert (out / name).stat().st_size > 5_000
    compare_run = client.search_runs([experiment], "attributes.run_name = 'compare'")[0]
    assert {"accuracy_vs_throughput.png", "accuracy_vs_tokens.png"} <= {
        a.path for a in client.list_artifacts(compare_run.info.run_id)
    }


# --------------------------------------------------------------------------------------------
# hired caption end to end


def caption_argv(uri: str, out: Path, pool: int, name: str | None = None) -> list[str]:
    argv = [
        "caption", str(SAMPLES / "images"), "--output", str(out), "--model", TINY_MODEL,
        "--tracking-uri", uri, "--experiment", "pools",
        "--max-new-tokens", "2", "--budget", "0.2", "--vision-pool-size", str(pool),
        "--vision-batch-size", "2", "--llm-batch-size", "2", "--decode-batch-size", "2", "--live-interval-s", "0.05",
        "--min-rows-per-file", "2",  # a step per written file: several files, several steps
    ]  # fmt: skip
    return argv + (["--run-name", name] if name else [])


@pytest.mark.slow
def test_caption_runs_share_keys_step_live_and_record_their_data(mlflow_server, tmp_path, ray_local):  # noqa: F811
    from mlflow import MlflowClient

    from jobs.cli import main

    uri, _ = mlflow_server
    client = MlflowClient(uri)
    assert main(caption_argv(uri, tmp_path / "one", pool=1)) == 0

    # the second job runs in a thread while the test watches its run on the server
    done: list[int] = []
    job = threading.Thread(target=lambda: done.append(main(caption_argv(uri, tmp_path / "two", 2, "two-actors"))))
    job.start()
    steps_while_running = set()
    deadline = time.monotonic() + 600
    while job.is_alive() and time.monotonic() < deadline:
        found = client.search_runs([client.get_experiment_by_name("pools").experiment_id],
                                   "attributes.run_name = 'two-actors'")  # fmt: skip
        if found and found[0].info.status == "RUNNING":
            steps_while_running.add(len(client.get_metric_history(found[0].info.run_id, "live/rows_done")))
        time.sleep(0.2)
    job.join()
    assert done == [0]

    experiment = client.get_experiment_by_name("pools")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"caption · hired 20% · tiny-llava-next", "two-actors"}
    one, two = runs["caption · hired 20% · tiny-llava-next"], runs["two-actors"]
    assert two.data.params["vision.size"] == "2" and one.data.params["vision.size"] == "1"
    # system metrics are sampled every MLflow sampling interval (10 s), so a job shorter than that
    # may have none: the job's own keys are what must line up
    job_keys = [{key for key in run.data.metrics if not key.startswith("system/")} for run in (one, two)]
    assert job_keys[0] == job_keys[1]
    assert {"vision.peak_host_mem_mb", "llm.peak_host_mem_mb", "vision.actors", "llm.actors"} <= set(one.data.metrics)
    assert not [key for key in one.data.metrics if re.search(r"(vision|llm)-\d", key)]  # no key names an actor

    dataset = described(str(SAMPLES / "images"))
    for run in (one, two):
        history = client.get_metric_history(run.info.run_id, "live/rows_done")
        steps = [m.step for m in history]
        assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] == 8  # grew batch by batch
        (entry,) = run.inputs.dataset_inputs
        assert (entry.dataset.name, entry.dataset.digest) == ("images", dataset.digest)
        assert read_profile(entry.dataset.profile)["num_rows"] == 8
        actors = json.loads(
            Path(client.download_artifacts(run.info.run_id, ACTORS_ARTIFACT, str(tmp_path / run.info.run_id))).read_text()
        )
        pools = [row[1] for row in actors["data"]]
        assert pools.count("vision") == run.data.metrics["vision.actors"] and pools.count("llm") == 1
    assert max(steps_while_running, default=0) >= 1  # seen on the server before the job ended
