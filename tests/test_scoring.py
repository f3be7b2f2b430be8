"""Scorers against hand-worked values, and the bundled eval set against its own labels and generator."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.experiments.choices import choice_accuracy, format_choices, parse_choice
from pipeline.experiments.scoring import (
    anls,
    exact_match,
    levenshtein,
    normalize_vqa_answer,
    parse_number,
    parse_yes_no,
    pope_metrics,
    relaxed_accuracy,
    vqa_accuracy,
)
from pipeline.experiments.tasks import TASKS, TaskSpec, aggregate, get_task

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO / "samples" / "eval"


@pytest.mark.parametrize("module", ["scoring.py", "choices.py", "tasks.py"])
def test_scoring_imports_only_the_standard_library(module):
    # Scoring runs on the driver and in lightweight tools: it must not drag in torch, ray or mlflow.
    tree = ast.parse((REPO / "pipeline" / "experiments" / module).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


# --------------------------------------------------------------------------------------------
# VQA normalisation and accuracy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes.", "yes"),
        ("  RED  ", "red"),
        ("yes, it is", "yes it is"),
        ("black-and-white", "black and white"),
        ("(b)", "b"),
        ("what?!", "what"),
        ('"quoted"', "quoted"),
        ("1,000", "1000"),
        ("1,000,000 people", "1000000 people"),
        ("3.5", "3.5"),
        ("3.5.", "3.5"),
        ("end. of story", "end of story"),
        ("Two", "2"),
        ("ten dogs", "10 dogs"),
        ("none", "0"),
        ("The dog", "dog"),
        ("a cat and an apple", "cat and apple"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("it's red", "it's red"),
        ("well", "well"),
        ("many \n  spaces\there", "many spaces here"),
        ("", ""),
    ],
)
def test_normalize_vqa_answer(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def _ten(match: str, k: int, other: str = "other") -> list[str]:
    return [match] * k + [other] * (10 - k)


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # k of 10 annotators agree: leaving out a matching one leaves k-1, a non-matching one k.
        # accuracy = (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10
        (0, 0.0),
        (1, 0.3),  # (1*0 + 9*1/3) / 10
        (2, 0.6),  # (2*1/3 + 8*2/3) / 10
        (3, 0.9),  # (3*2/3 + 7*1) / 10
        (4, 1.0),  # (4*1 + 6*1) / 10
        (10, 1.0),
    ],
)
def test_vqa_accuracy_ten_answers(k, expected):
    assert vqa_accuracy("cat", _ten("cat", k)) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_normalises_both_sides():
    answers = ["2", "two", "Two.", "3", "3", "3", "3", "3", "3", "3"]
    assert vqa_accuracy("two", answers) == pytest.approx(0.9, abs=1e-12)
    assert vqa_accuracy("The 3", answers) == pytest.approx(1.0)


def test_vqa_accuracy_fewer_than_ten_answers():
    # Leave-one-out over n answers: 3 of 3 agree -> every subset has 2 -> 2/3.
    assert vqa_accuracy("cat", ["cat", "cat", "cat"]) == pytest.approx(2 / 3, abs=1e-12)
    # 4 of 4 -> every subset has 3 -> 1.0.
    assert vqa_accuracy("cat", ["cat"] * 4) == pytest.approx(1.0)
    # 1 of 2: leaving out the match leaves 0, leaving out the other leaves 1 -> (0 + 1/3) / 2.
    assert vqa_accuracy("cat", ["cat", "dog"]) == pytest.approx(1 / 6, abs=1e-12)


def test_vqa_accuracy_single_answer_is_one_vote():
    assert vqa_accuracy("Cat", ["cat"]) == pytest.approx(1 / 3, abs=1e-12)
    assert vqa_accuracy("cat", "cat") == pytest.approx(1 / 3, abs=1e-12)
    assert vqa_accuracy("dog", ["cat"]) == 0.0


def test_vqa_accuracy_needs_answers():
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("cat", [])


# --------------------------------------------------------------------------------------------
# ANLS
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("", "", 0), ("flaw", "lawn", 2), ("same", "same", 0)],
)
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_anls_exact_is_case_and_whitespace_insensitive():
    assert anls("  Hello World ", ["hello   world"]) == 1.0


def test_anls_partial_match():
    # "helo" vs "hello": 1 edit over 5 chars -> NL 0.2 -> 0.8.
    assert anls("helo", ["hello"]) == pytest.approx(0.8, abs=1e-12)
    # "help" vs "hello": substitute l->p, delete o -> 2 / 5 -> 0.6.
    assert anls("help", ["hello"]) == pytest.approx(0.6, abs=1e-12)


def test_anls_at_and_below_threshold_scores_zero():
    # NL exactly 0.5 is not < 0.5.
    assert anls("ab", ["ac"]) == 0.0
    assert anls("abc", ["xyz"]) == 0.0
    # A looser threshold lets the same pair through: 1 - 0.5.
    assert anls("ab", ["ac"], threshold=0.6) == pytest.approx(0.5)


def test_anls_takes_best_answer():
    assert anls("helo", ["xyz", "hello", "help"]) == pytest.approx(0.8, abs=1e-12)


def test_anls_empty_strings():
    assert anls("", [""]) == 1.0
    assert anls("", ["abc"]) == 0.0
    assert anls("abc", [""]) == 0.0
    assert anls("abc", []) == 0.0


# --------------------------------------------------------------------------------------------
# Exact match and multiple choice
# --------------------------------------------------------------------------------------------


def test_exact_match():
    assert exact_match("The Cat.", ["dog", "cat"]) == 1.0
    assert exact_match("Two", ["2"]) == 1.0
    assert exact_match("cats", ["cat"]) == 0.0
    assert exact_match("cat", "cat") == 1.0


CHOICES = ["cat", "dog", "cat food", "bird"]


@pytest.mark.parametrize(
    ("reply", "index"),
    [
        ("B", 1),
        ("b", 1),
        ("(B)", 1),
        ("B.", 1),
        ("B)", 1),
        ("[B]", 1),
        (" B: ", 1),
        ("B. dog", 1),
        ("(B) dog", 1),
        ("The answer is B", 1),
        ("The answer is B.", 1),
        ("Answer: (b)", 1),
        ("The correct answer is option D", 3),
        ("dog", 1),
        ("Dog.", 1),
        ("A dog", 1),  # an article, not option A
        ("the answer is a dog", 1),  # lower-case "a" is an article here too
        ("It is cat food.", 2),  # "cat" is part of the longer choice that was named
        ("cat", 0),
        ("E", None),  # past the last choice
        ("cat or dog", None),
        ("I don't know", None),
        ("", None),
    ],
)
def test_parse_choice(reply, index):
    assert parse_choice(reply, CHOICES) == index


@pytest.mark.parametrize("answer", ["B", "b", "(B)", 1, "dog", "Dog"])
def test_choice_accuracy_answer_forms(answer):
    assert choice_accuracy("B", CHOICES, answer) == 1.0
    assert choice_accuracy("A", CHOICES, answer) == 0.0


def test_choice_accuracy_numeric_choices_read_as_text_first():
    choices = ["2", "3", "4"]
    assert choice_accuracy("B", choices, "3") == 1.0
    assert choice_accuracy("3", choices, "B") == 1.0
    assert choice_accuracy("three", choices, "B") == 1.0
    assert choice_accuracy("2", choices, "B") == 0.0
    # A digit string that is no choice text is an index.
    assert choice_accuracy("C", ["x", "y", "z"], "2") == 1.0


@pytest.mark.parametrize("answer", ["E", 7, -1, "fish", True])
def test_choice_accuracy_rejects_broken_answers(answer):
    with pytest.raises(ValueError):
        choice_accuracy("A", CHOICES, answer)


def test_format_choices():
    assert format_choices(["cat", "dog"]) == "A. cat\nB. dog"


# --------------------------------------------------------------------------------------------
# ChartQA relaxed accuracy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42.0),
        ("1,234", 1234.0),
        ("$5.50", 5.5),
        ("45%", 45.0),
        ("-3", -3.0),
        ("- $4", -4.0),
        ("12.5.", 12.5),
        (".5", 0.5),
        ("nan", None),
        ("inf", None),
        ("12 apples", None),
        ("", None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [
        ("104.9", "100", 1.0),  # 4.9% above
        ("95.1", "100", 1.0),  # 4.9% below
        ("105", "100", 1.0),  # exactly 5% counts
        ("105.1", "100", 0.0),  # 5.1% above
        ("94.9", "100", 0.0),  # 5.1% below
        ("45%", "45", 1.0),
        ("47.2%", "45", 1.0),  # 2.2 / 45 = 4.89%
        ("47.3%", "45", 0.0),  # 2.3 / 45 = 5.11%
        ("1,049", "1000", 1.0),
        ("$12", "12", 1.0),
        ("0", "0.0", 1.0),
        ("0.01", "0", 0.0),
        ("Yes ", "yes", 1.0),
        ("blue", "Red", 0.0),
        ("12", "twelve", 0.0),
    ],
)
def test_relaxed_accuracy(prediction, answer, expected):
    assert relaxed_accuracy(prediction, [answer]) == expected


def test_relaxed_accuracy_any_answer_and_tolerance():
    assert relaxed_accuracy("50", ["10", "51"]) == 1.0
    assert relaxed_accuracy("110", ["100"], tolerance=0.1) == 1.0
    assert relaxed_accuracy("110", ["100"]) == 0.0


# --------------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "is_yes"),
    [
        ("Yes", True),
        ("yes.", True),
        ("Yes, there is a dog in the image.", True),
        ("I think yes", True),
        ("No", False),
        ("No, yes", False),
        ("There is no dog.", False),
        ("Yesterday", False),
        ("", False),
    ],
)
def test_parse_yes_no(reply, is_yes):
    assert parse_yes_no(reply) is is_yes


def test_pope_metrics_confusion_matrix():
    # TP=3, FN=2, FP=1, TN=4.
    predictions = ["Yes", "yes, there is", "Yes.", "No", "There is no cat", "yes", "no", "No.", "no", "nope"]
    labels = ["yes", "yes", "yes", "yes", "yes", "no", "no", "no", "no", "no"]
    metrics = pope_metrics(predictions, labels)
    assert metrics == pytest.approx(
        {
            "accuracy": 0.7,  # 7 / 10
            "precision": 0.75,  # 3 / 4
            "recall": 0.6,  # 3 / 5
            "f1": 2 / 3,  # 2 * 0.75 * 0.6 / 1.35
            "yes_ratio": 0.4,  # 4 / 10
        },
        abs=1e-12,
    )


def test_pope_metrics_all_no_has_zero_precision():
    metrics = pope_metrics(["no", "No.", "no", "no"], ["yes", "yes", "no", "no"])
    assert metrics == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}


def test_pope_metrics_edge_sets():
    assert pope_metrics([], []) == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    # No positives at all: recall has nothing to recall.
    assert pope_metrics(["yes", "no"], ["no", "no"]) == {
        "accuracy": 0.5,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "yes_ratio": 0.5,
    }
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        pope_metrics(["yes", "no"], ["yes"])
    with pytest.raises(ValueError, match="'maybe'"):
        pope_metrics(["yes"], ["maybe"])


# --------------------------------------------------------------------------------------------
# Task registry
# --------------------------------------------------------------------------------------------


def test_registry_covers_the_task_kinds():
    assert set(TASKS) == {"vqa", "docvqa", "chartqa", "multiple_choice", "pope", "exact"}
    assert {name: spec.metric for name, spec in TASKS.items()} == {
        "vqa": "vqa_accuracy",
        "docvqa": "anls",
        "chartqa": "relaxed_accuracy",
        "multiple_choice": "choice_accuracy",
        "pope": "f1",
        "exact": "exact_match",
    }
    assert all(spec.name == name for name, spec in TASKS.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASKS["vqa"].metric = "other"


def test_get_task_lists_valid_names():
    assert get_task("vqa") is TASKS["vqa"]
    assert get_task(TASKS["pope"]) is TASKS["pope"]
    with pytest.raises(ValueError) as excinfo:
        get_task("gqa")
    assert str(excinfo.value) == (
        "unknown task 'gqa'; valid tasks: chartqa, docvqa, exact, multiple_choice, pope, vqa"
    )


def test_prompts():
    assert TASKS["vqa"].build_prompt({"question": " What color? "}) == (
        "What color?\nAnswer the question using a single word or phrase."
    )
    assert TASKS["multiple_choice"].build_prompt({"question": "Which?", "choices": ["cat", "dog"]}) == (
        "Which?\nA. cat\nB. dog\nAnswer with the option's letter from the given choices directly."
    )
    # Braces in a question are text, not placeholders.
    assert TASKS["exact"].build_prompt({"question": "Is {x} shown?"}).startswith("Is {x} shown?\n")
    with pytest.raises(ValueError, match="choices"):
        TASKS["multiple_choice"].build_prompt({"id": "q1", "question": "Which?"})


def test_task_scores_rows():
    assert TASKS["vqa"].score("cat", {"answers": _ten("cat", 2)}) == pytest.approx(0.6, abs=1e-12)
    assert TASKS["docvqa"].score("helo", {"answers": ["hello"]}) == pytest.approx(0.8, abs=1e-12)
    assert TASKS["chartqa"].score("104.9", {"answers": ["100"]}) == 1.0
    assert TASKS["chartqa"].score("12", {"answer": "12"}) == 1.0
    assert TASKS["multiple_choice"].score("(C)", {"choices": CHOICES, "answer": "C"}) == 1.0
    assert TASKS["pope"].score("Yes, there is.", {"answers": ["yes"]}) == 1.0
    assert TASKS["pope"].score("There is no dog.", {"answers": ["yes"]}) == 0.0
    assert TASKS["exact"].score("The Cat", {"answers": ["cat"]}) == 1.0
    with pytest.raises(ValueError, match="neither 'answers' nor 'answer'"):
        TASKS["vqa"].score("cat", {"id": "q1"})


def test_custom_taskspec():
    spec = TaskSpec("len", "{question}", "length_ok", lambda p, row: float(len(p) == row["n"]))
    assert spec.score("abc", {"n": 3}) == 1.0
    assert aggregate(spec, [1.0, 0.0], ["abc", "ab"], [{"n": 3}, {"n": 3}]) == {"length_ok": 0.5}


def test_aggregate_mean():
    rows = [{"answers": ["a"]}, {"answers": ["b"]}, {"answers": ["c"]}, {"answers": ["d"]}]
    assert aggregate("exact", [1.0, 0.0, 1.0, 1.0], ["a", "x", "c", "d"], rows) == {"exact_match": 0.75}
    assert aggregate("vqa", [], [], []) == {"vqa_accuracy": 0.0}


def test_aggregate_pope_reports_all_metrics():
    rows = [{"answers": [label]} for label in ["yes", "yes", "no", "no"]]
    predictions = ["yes", "no", "yes", "no"]
    scores = [TASKS["pope"].score(p, r) for p, r in zip(predictions, rows)]
    assert scores == [1.0, 0.0, 0.0, 1.0]
    assert aggregate("pope", scores, predictions, rows) == {
        "accuracy": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "yes_ratio": 0.5,
    }


def test_aggregate_validates():
    with pytest.raises(ValueError, match="valid tasks"):
        aggregate("nope", [], [], [])
    with pytest.raises(ValueError, match="2 scores, 1 predictions, 1 rows"):
        aggregate("vqa", [1.0, 0.0], ["a"], [{"answers": ["a"]}])


# --------------------------------------------------------------------------------------------
# The sample eval set
# --------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


MANIFESTS = {
    "vqa.jsonl": ("vqa", ["id", "image", "question", "answers", "task"]),
    "mcq.jsonl": ("multiple_choice", ["id", "image", "question", "choices", "answer", "task"]),
    "pope.jsonl": ("pope", ["id", "image", "question", "answers", "task"]),
}


@pytest.mark.parametrize("manifest", sorted(MANIFESTS))
def test_sample_manifests_are_consistent(manifest):
    from PIL import Image

    task, columns = MANIFESTS[manifest]
    rows = _read_jsonl(EVAL_DIR / manifest)
    assert rows
    assert len({row["id"] for row in rows}) == len(rows)
    spec = get_task(task)
    for row in rows:
        assert list(row) == columns
        assert row["task"] == task
        with Image.open(EVAL_DIR / row["image"]) as image:
            image.verify()
        if task == "vqa":
            assert len(row["answers"]) == 10
        if task == "pope":
            assert row["answers"] in (["yes"], ["no"])
        # The labels are self-consistent: the majority answer is a perfect reply.
        best = max(set(row.get("answers") or [row["answer"]]), key=(row.get("answers") or [row["answer"]]).count)
        assert spec.score(best, row) == 1.0
        spec.build_prompt(row)


def test_sample_set_is_small_and_balanced():
    total = sum(p.stat().st_size for p in EVAL_DIR.rglob("*") if p.is_file())
    assert total < 1_000_000
    for manifest in MANIFESTS:
        assert len(_read_jsonl(EVAL_DIR / manifest)) == 144
    labels = [row["answers"][0] for row in _read_jsonl(EVAL_DIR / "pope.jsonl")]
    assert labels.count("yes") == labels.count("no")


def test_sample_generator_reproduces_the_set(tmp_path):
    """The committed set is what ``python -m pipeline.testbed.make_eval_set`` writes."""
    from PIL import Image

    done = subprocess.run(
        [sys.executable, "-m", "pipeline.testbed.make_eval_set", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for manifest in MANIFESTS:
        assert (tmp_path / manifest).read_bytes() == (EVAL_DIR / manifest).read_bytes(), manifest
    committed = sorted(p.name for p in (EVAL_DIR / "images").iterdir())
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == committed
    for name in committed:
        with Image.open(EVAL_DIR / "images" / name) as a, Image.open(tmp_path / "images" / name) as b:
            assert (a.size, a.mode, a.tobytes()) == (b.size, b.mode, b.tobytes()), name
