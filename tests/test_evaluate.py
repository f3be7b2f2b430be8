"""``hired evaluate``: the sweep grid, reading labelled manifests, scoring written answers, and the
whole command on the shipped held-out set with MLflow parent and child runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import compare
from jobs.cli import main
from pipeline.experiments.evaluation import (
    PREDICTIONS_ARTIFACT,
    SETTING_FILE,
    score_answers,
)
from pipeline.experiments.labelled import load_labelled_set
from pipeline.experiments.settings import TABLE_CSV, TABLE_MARKDOWN, Setting, sweep
from pipeline.experiments.tasks import get_task
from pipeline.model.loading import DEFAULT_MODEL
from pipeline.tracking.runs import KIND_TAG, TrackingConfig, open_client
from tests.conftest import REPO, TINY_MODEL

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

EVAL = REPO / "samples" / "eval"
IMAGE = str(EVAL / "images" / "heldout-000.png")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------


def test_sweep_runs_unbudgeted_methods_once():
    settings = sweep(["hired", "full", "spatial"], ["0.2", "40%"])
    assert [s.name for s in settings] == ["hired-0.2", "hired-0.4", "full", "spatial-0.2", "spatial-0.4"]
    assert [s.label for s in settings] == ["HiRED 20%", "HiRED 40%", "Full", "Spatial 20%", "Spatial 40%"]
    assert Setting("hired", "576").label == "HiRED 576 tokens"
    assert sweep(["hired", "hired"], ["0.2", "0.2"]) == (Setting("hired", "0.2"),)


@pytest.mark.parametrize(
    ("methods", "budgets", "message"),
    [
        (["nope"], ["0.2"], "unknown method"),
        (["hired"], [], "need at least one budget"),
        (["hired"], ["lots"], "not a number"),
        ([], ["0.2"], "at least one method"),
    ],
)
def test_sweep_rejects_bad_grids(methods, budgets, message):
    with pytest.raises(ValueError, match=message):
        sweep(methods, budgets)


def test_setting_refuses_a_budget_for_full():
    with pytest.raises(ValueError, match="chooses its own"):
        Setting("full", "0.2")


# ---------------------------------------------------------------------------------------------
# Labelled sets
# ---------------------------------------------------------------------------------------------


def test_shipped_sets_load_with_their_task_and_prompts():
    vqa = load_labelled_set(str(EVAL / "vqa.jsonl"))
    assert vqa.task.name == "vqa" and len(vqa.inputs) == 144
    first = vqa.inputs[0]
    assert first.id == "vqa-shape-001" and first.path.endswith("images/heldout-000.png")
    assert first.prompt == "What shape is the purple object?\nAnswer the question using a single word or phrase."
    assert vqa.labels["vqa-shape-001"]["answers"] == ["square"] * 10

    mcq = load_labelled_set(str(EVAL / "mcq.jsonl"))
    assert mcq.task.name == "multiple_choice"
    label = mcq.labels["mcq-count-001"]
    assert label["answer"] == "B" and label["choices"] == ["1", "2", "5", "0"]
    assert "B. 2" in mcq.inputs[0].prompt

    pope = load_labelled_set(str(EVAL / "pope.jsonl"), limit=3)
    assert pope.task.name == "pope" and [r.id for r in pope.inputs] == ["pope-yes-001", "pope-random-002", "pope-yes-003"]


def test_parquet_manifest_and_task_override(tmp_path):
    records = read_jsonl(EVAL / "vqa.jsonl")[:3]
    for record in records:
        record["image"] = str(EVAL / record["image"])
        del record["task"]
    manifest = tmp_path / "set.parquet"
    pq.write_table(pa.Table.from_pylist(records), manifest)
    with pytest.raises(ValueError, match="no 'task' column: pass --task"):
        load_labelled_set(str(manifest))
    labelled = load_labelled_set(str(manifest), task="exact")
    assert labelled.task.name == "exact" and [r.id for r in labelled.inputs] == [r["id"] for r in records]
    assert labelled.labels["vqa-count-002"]["answers"] == ["0"] * 10


def test_labelled_set_errors_name_the_problem(tmp_path):
    image = IMAGE
    no_answers = write_jsonl(tmp_path / "a.jsonl", [{"id": "q1", "image": image, "question": "What?"}])
    with pytest.raises(ValueError, match=r"row 'q1' cannot be scored as task 'vqa' \(it needs 'answers'\)"):
        load_labelled_set(str(no_answers), task="vqa")
    bad_choice = write_jsonl(
        tmp_path / "b.jsonl", [{"id": "q1", "image": image, "question": "Which?", "choices": ["a", "b"], "answer": "D"}]
    )
    with pytest.raises(ValueError, match="needs 'choices' and 'answer'"):
        load_labelled_set(str(bad_choice), task="multiple_choice")
    no_question = write_jsonl(tmp_path / "c.jsonl", [{"id": "q1", "image": image, "answers": ["red"]}])
    with pytest.raises(ValueError, match="row 'q1': no question"):
        load_labelled_set(str(no_question), task="vqa")
    mixed = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "q1", "image": image, "question": "Q?", "answers": ["yes"], "task": "pope"},
            {"id": "q2", "image": image, "question": "Q?", "answers": ["red"], "task": "vqa"},
        ],
    )
    with pytest.raises(ValueError, match=r"mixes tasks \['pope', 'vqa'\]"):
        load_labelled_set(str(mixed))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_labelled_set(str(mixed), task="nope")
    with pytest.raises(ValueError, match="is not a manifest"):
        load_labelled_set(str(EVAL / "images"))


def test_score_answers_counts_failed_rows_apart(tmp_path):
    # human answers disagree, as in VQAv2 (the bundled set's ten answers all agree)
    human = {
        "vqa-001": ["red"] * 8 + ["Red", "orange"],
        "vqa-002": ["3"] * 7 + ["three", "three", "4"],
        "vqa-003": ["hello"] * 8 + ["HELLO", "hello."],
        "vqa-004": ["triangle"] * 9 + ["pyramid"],
    }
    rows = [{"id": i, "image": IMAGE, "question": "Q?", "answers": a, "task": "vqa"} for i, a in human.items()]
    labelled = load_labelled_set(str(write_jsonl(tmp_path / "vqa.jsonl", rows)))
    # vqa-001: "Red." normalises to "red", which 9 of 10 answers are -> 1.0; vqa-002: "three"
    # normalises to "3", as do 9 of 10 answers -> 1.0; vqa-003: wrong -> 0.0; vqa-004: failed
    answers = pa.Table.from_pylist(
        [
            {"id": "vqa-001", "text": "Red.", "error": None},
            {"id": "vqa-002", "text": "three", "error": None},
            {"id": "vqa-003", "text": "goodbye", "error": None},
            {"id": "vqa-004", "text": None, "error": "ImageDecodeError: truncated"},
        ]
    )
    metrics, predictions = score_answers(labelled, answers)
    assert metrics == pytest.approx({"vqa_accuracy": (1.0 + 1.0 + 0.0) / 3, "scored_rows": 3, "failed_rows": 1})
    assert predictions[3] == {"id": "vqa-004", "error": "ImageDecodeError: truncated"}
    with pytest.raises(RuntimeError, match="no answer in the output"):
        score_answers(labelled, answers.slice(0, 2))


# ---------------------------------------------------------------------------------------------
# The command, end to end: on the tiny model, and on the default (testbed) model for POPE
# ---------------------------------------------------------------------------------------------


def _runs(db: Path, experiment: str) -> tuple[MlflowClient, list[Run]]:
    client = open_client(TrackingConfig(tracking_uri=f"sqlite:///{db}", experiment=experiment))
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id])


@pytest.mark.slow
def test_evaluate_sweep_on_the_sample_set(tmp_path, ray_local, capsys):
    db, out = tmp_path / "mlflow.db", tmp_path / "eval"
    argv = [
        "evaluate", str(EVAL / "vqa.jsonl"), "--output", str(out), "--model", TINY_MODEL, "--limit", "12",
        "--methods", "hired,spatial", "--budgets", "0.2,0.4", "--max-new-tokens", "4",
        "--tracking-uri", f"sqlite:///{db}", "--experiment", "eval-test",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| HiRED 20% |" in printed and "| Spatial 40% |" in printed

    client, runs = _runs(db, "eval-test")
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "evaluate-sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["task"] == "vqa" and "method" not in parent.data.params  # compare skips it
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["setting"] for r in children) == ["hired-0.2", "hired-0.4", "spatial-0.2", "spatial-0.4"]
    assert sorted(r.info.run_name for r in children) == [
        f"evaluate vqa · {method} {budget} · tiny-llava-next"
        for method in ("hired", "spatial") for budget in ("20%", "40%")
    ]  # fmt: skip
    assert parent.info.run_name == "evaluate vqa sweep · tiny-llava-next"
    assert {p.path for p in client.list_artifacts(parent.info.run_id)} == {TABLE_CSV, TABLE_MARKDOWN}

    manifest = {r["id"]: r for r in read_jsonl(EVAL / "vqa.jsonl")[:12]}
    task = get_task("vqa")
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        setting = child.data.params["setting"]
        method, budget = setting.split("-")
        assert (params["method"], params["budget"], params["task"]) == (method, budget, "vqa")
        assert child.info.status == "FINISHED"
        # recompute every row's score from the written Parquet and the manifest
        answers = pq.read_table(out / setting).to_pylist()
        assert sorted(a["id"] for a in answers) == sorted(manifest)
        assert all(a["error"] is None and a["method"] == method for a in answers)
        scores = [task.score(a["text"], manifest[a["id"]]) for a in answers]
        assert metrics["vqa_accuracy"] == pytest.approx(sum(scores) / len(scores))
        assert metrics["scored_rows"] == 12 and metrics["failed_rows"] == 0
        assert metrics["vqa_accuracy"] == parent.data.metrics[f"vqa_accuracy.{setting}"]
        assert metrics["chance"] == 0.0
        assert compare.headline_accuracy(params, metrics) == ("vqa_accuracy", metrics["vqa_accuracy"])
        assert metrics["visual_tokens_mean"] <= {"0.2": 576, "0.4": 1152}[budget]
        folder = tmp_path / "artifacts" / setting
        folder.mkdir(parents=True)
        local = client.download_artifacts(child.info.run_id, PREDICTIONS_ARTIFACT, str(folder))
        logged = json.loads(Path(local).read_text())
        recomputed = [task.score(p["prediction"], manifest[p["id"]]) for p in logged]
        assert [p["score"] for p in logged] == pytest.approx(recomputed)

    # the same command again resumes: nothing is answered anew and the scores are unchanged
    assert main(argv + ["--methods", "hired", "--budgets", "0.2"]) == 0
    assert "12 scored, 0 failed; 0 answered now" in capsys.readouterr().out
    # resuming into answers of another configuration is refused, with what differs
    assert main(argv + ["--methods", "hired", "--budgets", "0.2", "--max-new-tokens", "5"]) == 2
    error = capsys.readouterr().err
    assert "holds answers of another configuration (max_new_tokens: 4 there, 5 now)" in error
    assert json.loads((out / "hired-0.2" / SETTING_FILE).read_text())["max_new_tokens"] == 4


@pytest.mark.slow
def test_evaluate_pope_on_the_default_model_reports_its_four_numbers(tmp_path, ray_local, capsys):
    db = tmp_path / "mlflow.db"
    argv = [
        "evaluate", str(EVAL / "pope.jsonl"), "--output", str(tmp_path / "pope"), "--limit", "6",
        "--methods", "full,hired", "--budgets", "0.2", "--max-new-tokens", "3",
        "--tracking-uri", f"sqlite:///{db}", "--experiment", "pope-test",
    ]
    assert main(argv) == 0
    assert "| Method | visual tokens | f1 | accuracy | precision | recall | yes_ratio |" in capsys.readouterr().out
    _, runs = _runs(db, "pope-test")
    children = {r.data.params["setting"]: r for r in runs if r.data.tags.get(KIND_TAG) == "evaluate"}
    assert sorted(children) == ["full", "hired-0.2"]
    assert children["full"].data.params["budget"] == "None"  # full keeps what it has
    assert children["hired-0.2"].info.run_name == "evaluate pope · hired 20% · testbed-llava-next"
    for child in children.values():
        metrics = child.data.metrics
        assert {"accuracy", "precision", "recall", "f1", "yes_ratio"} <= set(metrics)
        assert metrics["scored_rows"] == 6
        assert compare.headline_accuracy(child.data.params, metrics)[0] == "f1"
        assert metrics["chance"] == 0.5
        assert child.data.params["model"] == DEFAULT_MODEL == "hired/testbed-llava-next"
    tokens = {name: child.data.metrics["visual_tokens_mean"] for name, child in children.items()}
    assert tokens["full"] > tokens["hired-0.2"] == 64  # 20% of the testbed model's 320
