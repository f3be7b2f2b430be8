"""Answer scoring for ``hired evaluate``: the metrics of the benchmarks HiRED is reported on.

Pure Python on purpose (no torch, ray or mlflow): scoring runs on the driver after the
predictions come back, and the tests pin every definition against hand-worked values.

Metrics, each for one question unless stated:

* :func:`vqa_accuracy` -- VQAv2 ``min(1, #humans / 3)``, averaged over leave-one-out subsets;
* :func:`anls` -- DocVQA Average Normalized Levenshtein Similarity;
* :func:`relaxed_accuracy` -- ChartQA, numbers within 5% relative error;
* :func:`choice_accuracy` -- ScienceQA-style multiple choice (letter or choice text);
* :func:`exact_match` -- after VQA normalisation;
* :func:`pope_metrics` -- POPE accuracy / precision / recall / F1 / yes-ratio over a whole set.

:data:`TASKS` maps a task name (the ``task`` column of an eval manifest) to its prompt and
scorer; :func:`aggregate` turns per-row scores into the task's headline numbers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

# --------------------------------------------------------------------------------------------
# VQAv2 answer normalisation
# --------------------------------------------------------------------------------------------

# The punctuation set of the official VQA evaluation. Periods are handled separately (a decimal
# point must survive) and apostrophes are not in it, so contractions such as "don't" survive.
_VQA_PUNCTUATION = frozenset(';/[]"{}()=+\\_-><@`,?!')

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

_ARTICLES = frozenset({"a", "an", "the"})

# Apostrophe-less spellings that annotators and models type. Words that are also real words
# without the apostrophe ("its", "well", "were", "ill", "hell", "shell", "wed") are left out:
# rewriting them would corrupt correct answers.
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "couldve": "could've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "im": "i'm",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "ive": "i've",
    "lets": "let's",
    "mightnt": "mightn't",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "shant": "shan't",
    "shes": "she's",
    "shouldnt": "shouldn't",
    "shouldve": "should've",
    "thats": "that's",
    "theres": "there's",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "wasnt": "wasn't",
    "weve": "we've",
    "werent": "weren't",
    "whats": "what's",
    "whens": "when's",
    "wheres": "where's",
    "whos": "who's",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "wouldve": "would've",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

_DIGIT_GROUP_COMMA = re.compile(r"(?<=\d),(?=\d)")
# A period survives only in front of a digit ("3.5", ".5"), as in the official script.
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")


def _strip_punctuation(text: str) -> str:
    # The official rule deletes punctuation that touches a space ("yes, it is") and turns
    # punctuation that joins two words into a space ("black-and-white" -> "black and white").
    # This applies that rule per occurrence, which gives the same answers without the official
    # script's quirk of letting one occurrence decide for every other one in the string.
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch not in _VQA_PUNCTUATION:
            out.append(ch)
            continue
        before = text[i - 1] if i > 0 else " "
        after = text[i + 1] if i + 1 < len(text) else " "
        joins_two_words = not before.isspace() and not after.isspace()
        out.append(" " if joins_two_words else "")
    return "".join(out)


def normalize_vqa_answer(text: str) -> str:
    """Normalise an answer the way the VQAv2 evaluation does before comparing strings.

    Lowercases; drops commas inside numbers (``"1,000"`` -> ``"1000"``); removes punctuation,
    turning it into a space where it joins two words; removes periods except a decimal point
    (``"3.5"`` stays); maps number words up to ten to digits (``"two"`` -> ``"2"``); drops the
    articles *a*, *an*, *the*; restores apostrophes in common contractions (``"dont"`` ->
    ``"don't"``); and collapses whitespace.
    """
    text = str(text).lower().replace("\n", " ").replace("\t", " ").strip()
    text = _DIGIT_GROUP_COMMA.sub("", text)
    text = _strip_punctuation(text)
    text = _NON_DECIMAL_PERIOD.sub("", text)
    words: list[str] = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction against the human answers of one question.

    The official metric is ``min(1, #humans who gave the prediction / 3)``, made robust by
    averaging it over the 10 subsets of 9 of the 10 human answers (leave one out). With ``k``
    of 10 matching answers that is 0.3 for k=1, 0.6 for k=2, 0.9 for k=3 and 1.0 for k>=4.

    With ``n`` answers, ``2 <= n``, the same leave-one-out average is taken over the ``n``
    subsets of ``n - 1`` answers. With a single answer there is no subset left to count in,
    so the score is ``min(1, matches / 3)``, i.e. 1/3 for a match -- one human is one vote.
    Prediction and answers are both compared after :func:`normalize_vqa_answer`.

    Raises ValueError when ``answers`` is empty: a question without answers cannot be scored.
    """
    if isinstance(answers, str):
        answers = [answers]
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(a) == pred for a in answers]
    total = sum(matches)
    if len(matches) == 1:
        return min(1.0, total / 3.0)
    per_subset = [min(1.0, (total - left_out) / 3.0) for left_out in matches]
    return sum(per_subset) / len(per_subset)


# --------------------------------------------------------------------------------------------
# DocVQA: ANLS
# --------------------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance between ``a`` and ``b``: insertions, deletions, substitutions cost 1."""
    if len(a) < len(b):
        a, b = b, a
    # One row of the dynamic-programming table at a time, over the shorter string.
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(
                min(
                    previous[j] + 1,  # delete ca
                    current[j - 1] + 1,  # insert cb
                    previous[j - 1] + (ca != cb),  # substitute (free when equal)
                )
            )
        previous = current
    return previous[-1]


def _anls_clean(text: str) -> str:
    return " ".join(str(text).lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one prediction (DocVQA).

    For each answer ``a``: ``NL = levenshtein(a, p) / max(len(a), len(p))`` on lowercased,
    whitespace-stripped (and whitespace-collapsed) strings; the similarity is ``1 - NL`` when
    ``NL < threshold`` and 0 otherwise. The score is the best similarity over the answers.
    Two empty strings are identical (similarity 1); no answers score 0.
    """
    if isinstance(answers, str):
        answers = [answers]
    pred = _anls_clean(prediction)
    best = 0.0
    for answer in answers:
        gold = _anls_clean(answer)
        longest = max(len(gold), len(pred))
        nl = levenshtein(gold, pred) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


# --------------------------------------------------------------------------------------------
# Exact match
# --------------------------------------------------------------------------------------------


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the prediction equals any answer after :func:`normalize_vqa_answer`, else 0.0."""
    if isinstance(answers, str):
        answers = [answers]
    pred = normalize_vqa_answer(prediction)
    return 1.0 if any(normalize_vqa_answer(a) == pred for a in answers) else 0.0


# --------------------------------------------------------------------------------------------
# ChartQA: relaxed accuracy
# --------------------------------------------------------------------------------------------

_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def parse_number(text: str) -> float | None:
    """Read a number as charts print it (``"1,234"``, ``"$5.5"``, ``"45%"``, ``"-3"``), or None.

    The percent sign is dropped, not divided out: ChartQA labels write percentages as bare
    numbers ("45"), so "45%" must read as 45 to be compared with them. A trailing period is
    ignored (models end sentences). "nan" and "inf" are not numbers here.
    """
    s = str(text).strip().rstrip(".").strip()
    sign = ""
    if s and s[0] in "+-":
        sign, s = s[0], s[1:].lstrip()
    s = s.removeprefix("$").removesuffix("%").strip()
    s = _DIGIT_GROUP_COMMA.sub("", s)
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    return float(sign + s)


def relaxed_accuracy(prediction: str, answers: Sequence[str], tolerance: float = 0.05) -> float:
    """ChartQA relaxed accuracy: 1.0 if the prediction matches any answer, else 0.0.

    When both read as numbers (:func:`parse_number`) and the answer is not zero, they match if
    ``|p - a| / |a| <= tolerance`` (a zero answer needs a zero prediction, as relative error
    is undefined there). Otherwise they match on lowercased, stripped strings.
    """
    if isinstance(answers, str):
        answers = [answers]
    pred_text = str(prediction).strip().lower()
    pred_num = parse_number(pred_text)
    for answer in answers:
        gold_text = str(answer).strip().lower()
        gold_num = parse_number(gold_text)
        if pred_num is not None and gold_num is not None:
            # Relative error is undefined at zero: a zero answer needs a zero prediction.
            close = pred_num == 0 if gold_num == 0 else abs(pred_num - gold_num) / abs(gold_num) <= tolerance
            if close:
                return 1.0
        elif pred_text == gold_text:
            return 1.0
    return 0.0


# --------------------------------------------------------------------------------------------
# POPE
# --------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", str(text).lower())


# cached: a bootstrap interval re-scores the same few replies ("yes", "no") a million times
@functools.lru_cache(maxsize=4096)
def parse_yes_no(prediction: str) -> bool:
    """True when a reply says yes: its first word is not "no" and "yes" appears as a word.

    "Yes, there is a dog" -> True; "No, there is not" -> False; "There is no dog" -> False;
    anything that never says "yes" counts as no, as in the POPE evaluation.
    """
    words = _words(prediction)
    if words and words[0] == "no":
        return False
    return "yes" in words


@functools.lru_cache(maxsize=4096)
def label_is_yes(label: str) -> bool:
    norm = " ".join(_words(label))
    if norm in ("yes", "no"):
        return norm == "yes"
    raise ValueError(f"POPE labels are 'yes' or 'no', got {label!r}")


def ratio_or_zero(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE scores over a set of yes/no object-presence questions; "yes" is the positive class.

    Returns ``accuracy``, ``precision``, ``recall``, ``f1`` and ``yes_ratio`` (share of replies
    read as yes, see :func:`parse_yes_no`). A ratio whose denominator is zero is 0.0 -- e.g.
    precision when the model never says yes.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    tp = fp = tn = fn = 0
    for prediction, label in zip(predictions, labels):
        said_yes = parse_yes_no(prediction)
        is_yes = label_is_yes(label)
        if said_yes and is_yes:
            tp += 1
        elif said_yes:
            fp += 1
        elif is_yes:
            fn += 1
        else:
            tn += 1
    n = len(labels)
    precision = ratio_or_zero(tp, tp + fp)
    recall = ratio_or_zero(tp, tp + fn)
    return {
        "accuracy": ratio_or_zero(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": ratio_or_zero(2 * precision * recall, precision + recall),
        "yes_ratio": ratio_or_zero(tp + fp, n),
    }


# --------------------------------------------------------------------------------------------
# Task registry
# --------------------------------------------------------------------------------------------

Row = Mapping[str, Any]
