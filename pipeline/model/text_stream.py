"""Answer text as it streams: stop strings (OpenAI semantics) and incremental detokenisation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def truncate_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to the first of the ``stop`` strings (OpenAI semantics: the stop is excluded)."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text if cut < 0 else text[:cut]


def _pending_stop(text: str, stop: Iterable[str]) -> int:
    """Start of the longest suffix of ``text`` that is a proper prefix of a stop string (else ``len(text)``)."""
    for start in range(max(0, len(text) - max((len(s) for s in stop), default=0) + 1), len(text)):
        tail = text[start:]
        if any(len(s) > len(tail) and s.startswith(tail) for s in stop):
            return start
    return len(text)


class TextStream:
    """Incremental detokenisation of one answer: text deltas whose concatenation is the final text.

    The final text is what the server's non-streamed answer holds,
    ``truncate_at_stop(decode(ids).strip(), stop).strip()``, with ``ids`` the tokens before the
    first end token. Each :meth:`push` decodes the whole id list (byte-level BPE pieces only make
    sense together) and sends only text no later token can change: a trailing U+FFFD (an
    incomplete UTF-8 sequence) waits until it resolves, leading and trailing whitespace wait for
    non-space text after them (the final text is stripped), and a suffix that may begin a stop
    string waits until it does or cannot. This assumes decoding more ids only appends to the
    text, true of tokenizers that do not clean up spaces around punctuation.

    Attributes:
        ids: the answer's tokens so far (end tokens excluded).
        done: an end token or a stop string ended the answer; later pushes are ignored.
        stopped: a stop string cut the text (as the non-streamed answer's ``stopped``).
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = (), end_ids: Iterable[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.end_ids = frozenset(end_ids)
        self.ids: list[int] = []
        self.sent = ""
        self.done = False
        self.stopped = False

    def _emit(self, text: str) -> str:
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent += delta
        return delta

    def push(self, token: int) -> str:
        """Add one generated token; the new text that can be sent (often empty)."""
        if self.done:
            return ""
        if token in self.end_ids:
            return self.finish()
        self.ids.append(token)
        stable = self.tokenizer.decode(self.ids, skip_special_tokens=True).rstrip("\ufffd").strip()
        found = min((stable.find(s) for s in self.stop if s in stable), default=-1)
        pending = _pending_stop(stable, self.stop)
        # a stop found is final only if no earlier partial match could still become one
        if 0 <= found <= pending:
            self.done = self.stopped = True
            return self._emit(stable[:found].rstrip())
        return self._emit(stable[:pending].rstrip())

    def finish(self) -> str:
        """End the answer (an end token or the token limit): whatever of the final text is unsent."""
        if self.done and self.stopped:
            return ""
        self.done = True
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        final = truncate_at_stop(full, self.stop).strip()
        self.stopped = final != full
        return self._emit(final)
