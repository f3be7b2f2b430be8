"""Text-only conversations for stage 2, answered by the base LLM itself.

Stage 2 tunes LoRA adapters on questions about scenes; with nothing else in the mix, 300 more
steps wore SmolLM2's text answers away ("What is the capital of France?" -> "France";
docs/testbed.md). LLaVA keeps text-only conversations in its instruction mix for this reason. No
such data may be copied in here, so the questions come from templates and word lists written
here, and the base model (before any adapter) answers each greedily: its answer is the target
(sequence-level self-distillation). Training on them holds the adapted model where the pretrained
one was on text without teaching it anything new.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import ClassVar


def _a(word: str) -> str:
    """``word`` with its indefinite article."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


_ANIMALS = tuple(map(_a, ("dog", "cat", "horse", "cow", "duck", "frog", "spider", "bee", "lion", "sheep", "owl",
                          "snake", "chicken", "elephant", "whale", "penguin", "rabbit", "goat", "bear", "ant")))
_THINGS = tuple(map(_a, ("bicycle", "piano", "library", "volcano", "calendar", "thermometer", "bridge", "umbrella",
                         "compass", "telescope", "kettle", "passport", "ladder", "candle", "battery", "magnet", "map",
                         "clock", "rainbow", "desert", "glacier", "harbour", "vaccine", "recipe", "poem", "triangle",
                         "planet", "river", "forest", "keyboard", "island", "hospital", "museum", "orchestra",
                         "dictionary", "microwave", "satellite", "tornado", "skeleton", "democracy")))
_TOOLS = tuple(map(_a, ("hammer", "saw", "spoon", "broom", "needle", "shovel", "pair of scissors", "microscope",
                        "stapler", "ruler", "toothbrush", "wrench", "pencil", "bucket", "ladle")))
_COLOURED = ("a banana", "the sky on a clear day", "grass", "snow", "a ripe strawberry", "coal", "a carrot",
             "milk", "a lemon", "a ripe tomato", "an emerald", "chocolate", "a pumpkin", "a fire engine", "the sea")
_ADJECTIVES = ("hot", "tall", "fast", "happy", "empty", "light", "early", "loud", "wet", "strong", "old", "rich",
               "open", "soft", "thick")
_TEMPLATES = (
    ("What is {}?", _THINGS),
    ("Why do people use {}?", _TOOLS),
    ("What colour is {}?", _COLOURED),
    ("How many legs does {} have?", _ANIMALS),
    ("What does {} eat?", _ANIMALS),
    ("Where does {} live?", _ANIMALS),
    ("What is the opposite of {}?", _ADJECTIVES),
    ("Give me one word that rhymes with {}.", _ADJECTIVES),
    ("What is {} plus {}?", tuple(product(range(2, 10), range(2, 10)))),
)


def questions() -> list[str]:
    """Every question the templates make, in a fixed order.

    None asks for a capital city: the tests ask the shipped model one (tests/test_testbed.py), so
    that question measures what the model kept, not what it was shown.
    """
    return [template.format(*(w if isinstance(w, tuple) else (w,))) for template, words in _TEMPLATES for w in words]


@dataclass(frozen=True)
class TextTurn:
    """One text-only exchange: a question and the base model's greedy answer."""

    task: ClassVar[str] = "text"  # as :class:`.questions.QA` names its task; the prompt is the question itself
    question: str
    answer: str


def _answers(model, processor, prompts: list[str], max_new_tokens: int) -> list[str | None]:
    """Greedy replies to text-only user prompts, formatted and decoded as `hired serve` answers a
    chat; ``None`` where a reply did not end within ``max_new_tokens`` (a cut answer would teach
    the model to stop mid-sentence)."""
    from pipeline.model.generation import GenerateOptions
    from pipeline.model.vlm import HiredVLM

    vlm = HiredVLM(model, processor)
    chats = [(vlm.chat_ids([{"role": "user", "content": [{"type": "text", "text": p}]}]), []) for p in prompts]
    replies = vlm.generate_chats(chats, GenerateOptions(max_new_tokens=max_new_tokens))
    # token_ids stop before the end token, so a reply that ended is shorter than the limit
    return [g.text.strip() if len(g.token_ids) < max_new_tokens else None for g in replies]


def write_text_turns(model, processor, count: int, seed: int, batch: int = 32,
                     max_new_tokens: int = 64) -> list[TextTurn]:
    """Up to ``count`` text-only exchanges: :func:`questions` in a seeded order, each with the
    greedy answer of ``model``'s base LLM (call it before any adapter is added). Questions whose
    answer runs past ``max_new_tokens`` are left out, so fewer come back when the templates run
    out; ``RuntimeError`` if none does."""
    pool = questions()
    random.Random(seed).shuffle(pool)
    was_training = model.training
    model.eval()
    turns: list[TextTurn] = []
    try:
        start = 0
        while start < len(pool) and len(turns) < count:
            # about two answers in five end within 64 tokens: ask for some three times as many as are missing
            chunk = pool[start : start + min(batch, 3 * (count - len(turns)))]
            turns += [TextTurn(q, a) for q, a in zip(chunk, _answers(model, processor, chunk, max_new_tokens)) if a]
            start += len(chunk)
    finally:
        model.train(was_training)
    if count and not turns:
        raise RuntimeError(f"none of the {len(pool)} text questions got an answer within {max_new_tokens} tokens")
    return turns[:count]


def cached_text_turns(path: Path, model, processor, count: int, seed: int) -> list[TextTurn]:
    """:func:`write_text_turns`, written to ``path`` once and read back by a later run asking
    for as many with the same seed, so a resumed stage trains on the same exchanges."""
    if path.exists():
        saved = json.loads(path.read_text())
        if (saved["count"], saved["seed"]) == (count, seed):
            return [TextTurn(**row) for row in saved["turns"]]
    turns = write_text_turns(model, processor, count, seed) if count else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"count": count, "seed": seed, "turns": [asdict(t) for t in turns]}, indent=1))
    return turns
