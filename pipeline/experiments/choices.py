"""Multiple-choice scoring (ScienceQA-style): reading which option a free-form reply picked."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .scoring import normalize_vqa_answer

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# The whole reply is a letter: "B", "b", "(B)", "B.", "B)", "[B]", "B:".
_BARE_LETTER = re.compile(r"^[\(\[]?([A-Za-z])[\)\]]?[.:)]?$")
# The reply opens with a letter marked as an option: "B. dog", "(B) dog", "b) dog", "B: dog".
# A bare lowercase "a " is not accepted here: it is the article far more often than option A.
_LEADING_LETTER = re.compile(r"^(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Za-z])[.:)])(?:\s|$)")
# "The answer is B", "Answer: (B)", "answer is option C". The letter must be upper case or
# bracketed, so "the answer is a dog" is not read as option A.
_ANSWER_IS_LETTER = re.compile(
    r"(?i:answer\s*(?:is|:)?\s*:?\s*(?:option\s+)?)(?:\(([A-Za-z])\)|([A-Z]))(?![A-Za-z])"
)


def _letter_index(letter: str, n_choices: int) -> int | None:
    index = _LETTERS.find(letter.upper())
    return index if 0 <= index < n_choices else None


def _match_choice_text(text: str, choices: Sequence[str]) -> int | None:
    norm = normalize_vqa_answer(text)
    norm_choices = [normalize_vqa_answer(c) for c in choices]
    exact = [i for i, c in enumerate(norm_choices) if c and c == norm]
    if len(exact) == 1:
        return exact[0]
    if exact:
        return None
    # A sentence that names exactly one choice ("it is a triangle"). When several match, one
    # choice may be part of another ("cat" in "cat food"): the longer, containing one wins.
    padded = f" {norm} "
    named = [i for i, c in enumerate(norm_choices) if c and f" {c} " in padded]
    outermost = [i for i in named if not any(j != i and norm_choices[i] in norm_choices[j] for j in named)]
    return outermost[0] if len(outermost) == 1 else None


def parse_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """Map a model reply to a 0-based choice index, or None when it names no single choice.

    Accepted, in this order: a reply that is only a letter (``"B"``, ``"(B)"``, ``"B."``); a
    reply that opens with a marked letter (``"B. dog"``, ``"(B) dog"``); a sentence such as
    ``"The answer is B"``; and the text of a choice, alone or inside a sentence. Letters beyond
    the number of choices do not count.
    """
    text = str(prediction).strip()
    n = len(choices)
    # in order of how sure a reading is: the whole reply, its opening, "the answer is (B)"
    for found in (_BARE_LETTER.match(text), _LEADING_LETTER.match(text), _ANSWER_IS_LETTER.search(text)):
        if found:
            index = _letter_index(next(g for g in found.groups() if g), n)
            if index is not None:
                return index
    return _match_choice_text(text, choices)


def _answer_index(answer: int | str, choices: Sequence[str]) -> int:
    if isinstance(answer, bool):
        raise ValueError(f"multiple-choice answer must be a letter, an index or a choice, got {answer!r}")
    if isinstance(answer, int):
        if 0 <= answer < len(choices):
            return answer
        raise ValueError(f"answer index {answer} is out of range for {len(choices)} choices")
    text = str(answer).strip()
    m = _BARE_LETTER.match(text)
    if m:
        index = _letter_index(m.group(1), len(choices))
        if index is not None:
            return index
    norm = normalize_vqa_answer(text)
    for i, choice in enumerate(choices):
        if normalize_vqa_answer(choice) == norm:
            return i
    # A numeric string is an index only when no choice reads that way: choices are often numbers.
    if text.isdigit() and int(text) < len(choices):
        return int(text)
    raise ValueError(f"answer {answer!r} is neither a letter, an index nor one of the choices {list(choices)!r}")


def choice_accuracy(prediction: str, choices: Sequence[str], answer: int | str) -> float:
    """1.0 when the reply names the correct choice, else 0.0 (see :func:`parse_choice`).

    ``answer`` is a letter (``"B"``), a 0-based index (``1``) or the choice text itself.
    Raises ValueError when ``answer`` names no choice: that is a broken row, not a wrong reply.
    """
    gold = _answer_index(answer, choices)
    return 1.0 if parse_choice(prediction, choices) == gold else 0.0


def format_choices(choices: Sequence[str]) -> str:
    """Render choices as a prompt block: ``"A. cat\\nB. dog"``."""
    if len(choices) > len(_LETTERS):
        raise ValueError(f"at most {len(_LETTERS)} choices can be lettered, got {len(choices)}")
    return "\n".join(f"{_LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
