"""One input row (an image and what to ask about it) and the error a bad input raises."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputProblem
from .storage import read_bytes


class InputError(InputProblem):
    """A listing, manifest or path the job cannot use."""

    @property
    def uri(self) -> str:
        return self.subject


@dataclass(frozen=True)
class InputRow:
    """One image to process.

    ``path`` is a local path or URL that :func:`read_bytes` can fetch, except for
    manifest rows that carry ``image_bytes`` inline: those bytes take precedence
    and ``path`` is then informational (the path recorded in the manifest, or
    ``<manifest>#row=<n>`` when it recorded none).
    """

    id: str
    path: str
    prompt: str | None = None
    question: str | None = None
    answers: tuple[str, ...] | None = None
    choices: tuple[str, ...] | None = None
    answer: str | None = None  # the correct choice (letter, index or text) of a multiple-choice row
    task: str | None = None  # the evaluation task the manifest names for this row
    image_bytes: bytes | None = None


def row_bytes(path: str, inline: bytes | None, storage_options: dict | None = None) -> bytes:
    """The row's encoded image: its inline bytes when the manifest carried them, else read from
    ``path`` (the one rule every reader of a row follows)."""
    return bytes(inline) if inline is not None else read_bytes(path, storage_options)
