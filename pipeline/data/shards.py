"""WebDataset shards: brace patterns naming them and the samples inside one tar.

A sample is the tar members sharing a key (the member name up to the first dot of its last
component): one image (``.jpg``, ``.png``, ...) and optionally ``.txt`` (the prompt) or ``.json``
(``prompt``, ``question``, ``answers``, ...). Ray Data's ``read_webdataset`` groups samples the
same way, but it fails a whole read task on a bad sample and gives no row position; here a
sample without an image becomes one row that fails alone, and the id ``<shard>/<key>`` is unique
and deterministic by construction.
"""

from __future__ import annotations

import itertools
import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from typing import Any

from fsspec.spec import AbstractFileSystem

from .rows import InputError, InputRow
from .storage import IMAGE_EXTENSIONS

SHARD_EXTENSIONS = (".tar",)
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def is_shard_path(path: str) -> bool:
    return path.lower().endswith(SHARD_EXTENSIONS)


def has_braces(pattern: str) -> bool:
    """Whether ``pattern`` holds a ``{a..b}`` range or a ``{x,y}`` list."""
    return any(_RANGE.match(m) or "," in m for m in _BRACE.findall(pattern))


def expand_braces(pattern: str) -> list[str]:
    """``shards-{0000..0002}.tar`` -> the three names, zero padding kept; ``{a,b}`` lists too."""
    pieces: list[list[str]] = []
    last = 0
    for match in _BRACE.finditer(pattern):
        pieces.append([pattern[last : match.start()]])
        body = match.group(1)
        numbers = _RANGE.match(body)
        if numbers:
            low, high = numbers.groups()
            width = len(low) if low.startswith("0") else 0
            step = 1 if int(high) >= int(low) else -1
            pieces.append([str(n).zfill(width) for n in range(int(low), int(high) + step, step)])
        elif "," in body:
            pieces.append(body.split(","))
        else:
            pieces.append([match.group(0)])
        last = match.end()
    pieces.append([pattern[last:]])
    return ["".join(parts) for parts in itertools.product(*pieces)]


def read_shard(uri: str, fs: AbstractFileSystem, path: str, shard_id: str, located: str) -> Iterator[InputRow]:
    """The samples of one tar shard, streamed member by member (the tar is never held whole).

    Args:
        uri: the shard as the user named it (for error messages).
        shard_id: the id prefix of its samples (the shard's path relative to the input root).
        located: the shard's user-facing path, for the rows' ``path`` column.
    """
    try:
        with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
            key, parts = None, {}
            for member in tar:
                folder, name = posixpath.split(member.name)
                if not member.isfile() or name.startswith("."):
                    continue
                stem, _, suffix = name.partition(".")
                member_key = posixpath.join(folder, stem)
                if key is not None and member_key != key:
                    yield _sample(uri, shard_id, located, key, parts)
                    parts = {}
                key = member_key
                parts[suffix.lower()] = tar.extractfile(member).read()
            if key is not None:
                yield _sample(uri, shard_id, located, key, parts)
    except tarfile.TarError as exc:
        raise InputError(uri, f"cannot read the tar shard {located} ({exc})", "check that it is a valid tar file") from exc


def _sample(uri: str, shard_id: str, located: str, key: str, parts: dict[str, bytes]) -> InputRow:
    image = next((parts[s] for s in parts if f".{s}" in IMAGE_EXTENSIONS), b"")  # none: fails alone
    fields: dict[str, Any] = {}
    if "json" in parts:
        try:
            loaded = json.loads(parts["json"])
        except ValueError as exc:
            raise InputError(uri, f"sample {key!r} of {located}: its .json is not valid JSON ({exc})") from exc
        fields = loaded if isinstance(loaded, dict) else {}
    prompt = parts["txt"].decode("utf-8", "replace").strip() if "txt" in parts else fields.get("prompt")
    answers = fields.get("answers")
    return InputRow(
        id=f"{shard_id}/{key}",
        path=f"{located}#{key}",
        prompt=prompt or None,
        question=fields.get("question"),
        answers=tuple(map(str, answers)) if isinstance(answers, list) else None,
        answer=fields.get("answer"),
        task=fields.get("task"),
        image_bytes=image,
    )
