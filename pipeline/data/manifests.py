"""Manifest rows: Parquet and JSON-lines records with an image path or inline bytes and the optional
prompt, question and label columns."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urljoin

from fsspec.spec import AbstractFileSystem

from .rows import InputError, InputRow
from .storage import (
    HTTP_PROTOCOLS,
    LOCAL_PROTOCOLS,
    URL_RE,
    Locator,
    basename,
    relative_to,
)

logger = logging.getLogger(__name__)

# Manifest columns, in order of preference. A string column holds a path/URL;
# a binary column (or an HF-datasets style {"bytes": ..., "path": ...} struct)
# holds the encoded image inline.
PATH_COLUMNS: tuple[str, ...] = ("image", "path", "image_path", "url", "file")
BYTES_COLUMNS: tuple[str, ...] = ("image_bytes", "bytes")
_OPTIONAL_COLUMNS: tuple[str, ...] = ("id", "prompt", "question", "answers", "choices", "answer", "task")


def read_manifest(
    uri: str,
    fs: AbstractFileSystem,
    path: str,
    kind: str,
    locate: Locator,
    base: str,
    limit: int | None,
    id_root: str | None = None,
    row_groups: Sequence[int] | None = None,
    first_row: int = 0,
) -> Iterator[InputRow]:
    """Yield rows from one manifest; ``base`` resolves relative paths, ``id_root`` shortens ids.

    ``row_groups`` (Parquet only) reads just those row groups, whose first row is row
    ``first_row`` of the file, so that a read task can take one slice of a large manifest."""
    if kind == "parquet":
        records = _parquet_records(uri, fs, path, row_groups, first_row)
    else:
        records = _json_records(uri, fs, path)
    id_root = base if id_root is None else id_root
    is_http = locate.protocol in HTTP_PROTOCOLS
    manifest_name = basename(path)
    count = 0
    for where, record in records:
        yield _row_from_record(uri, where, record, fs, locate, base, id_root, is_http, manifest_name, path)
        count += 1
        if limit and count >= limit:
            return


def parquet_columns(uri: str, names: Sequence[str]) -> list[str]:
    """The columns of a Parquet manifest a job reads; an :class:`InputError` when it has no image
    column (checked from the footer alone, before any row is read)."""
    if not any(c in names for c in PATH_COLUMNS + BYTES_COLUMNS):
        raise InputError(
            uri,
            f"the manifest has no image column (columns: {', '.join(names) or 'none'})",
            f"name the column holding image paths/URLs one of {', '.join(PATH_COLUMNS)}, "
            f"or the column holding encoded bytes one of {', '.join(BYTES_COLUMNS)}",
        )
    # Only read the columns we use: manifests may carry large unrelated columns.
    return [c for c in names if c in PATH_COLUMNS + BYTES_COLUMNS + _OPTIONAL_COLUMNS]


def open_parquet(uri: str, handle: Any) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` over an open file, or an :class:`InputError`."""
    import pyarrow.parquet as pq  # local import: pyarrow is heavy and only needed here

    try:
        return pq.ParquetFile(handle)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError variants
        raise InputError(uri, f"cannot read the Parquet file ({exc})", "check that it is a valid Parquet file") from exc


def _parquet_records(
    uri: str, fs: AbstractFileSystem, path: str, row_groups: Sequence[int] | None = None, first_row: int = 0
) -> Iterator[tuple[str, dict[str, Any]]]:
    with fs.open(path, "rb") as handle:
        parquet = open_parquet(uri, handle)
        columns = parquet_columns(uri, parquet.schema_arrow.names)
        index = first_row
        # Small batches: a row may hold a multi-MB inline image.
        for batch in parquet.iter_batches(batch_size=256, columns=columns, row_groups=row_groups):
            for record in batch.to_pylist():
                yield f"row {index}", record
                index += 1


def _json_records(
    uri: str, fs: AbstractFileSystem, path: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    with fs.open(path, "rt", encoding="utf-8", compression="infer") as handle:
        lines = iter(handle)
        first = True
        for lineno, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            if first and text.startswith("["):
                # A single JSON array of objects (some tools write ".json" that
                # way). Only possible as the first non-blank line: a JSON lines
                # record is always an object.
                try:
                    items = json.loads(line + "".join(lines))
                except json.JSONDecodeError as exc:
                    raise InputError(
                        uri, f"invalid JSON array ({exc})", "write one JSON object per line (JSON lines)"
                    ) from exc
                if not isinstance(items, list):
                    raise InputError(uri, "the JSON is not an array of objects", "write one JSON object per line")
                for index, item in enumerate(items):
                    yield f"item {index}", _expect_object(uri, f"item {index}", item)
                return
            first = False
            try:
                item = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(
                    uri, f"line {lineno} is not valid JSON ({exc.msg})", "write one JSON object per line"
                ) from exc
            yield f"line {lineno}", _expect_object(uri, f"line {lineno}", item)


def _expect_object(uri: str, where: str, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InputError(uri, f"{where} is a JSON {type(item).__name__}, expected an object", "write one JSON object per row")
    return item


def _row_from_record(
    uri: str,
    where: str,
    record: Mapping[str, Any],
    fs: AbstractFileSystem,
    locate: Locator,
    base: str,
    id_root: str,
    is_http: bool,
    manifest_name: str,
    manifest_path: str,
) -> InputRow:
    path_col = next((c for c in PATH_COLUMNS if c in record), None)
    bytes_col = next((c for c in BYTES_COLUMNS if c in record), None)
    if path_col is None and bytes_col is None:
        raise InputError(
            uri,
            f"{where} has no image field (fields: {', '.join(map(str, record)) or 'none'})",
            f"add a path/URL field named one of {', '.join(PATH_COLUMNS)} "
            f"or inline bytes named one of {', '.join(BYTES_COLUMNS)}",
        )

    raw_path: str | None = None
    data: bytes | None = None
    for column, role in ((bytes_col, "bytes"), (path_col, "path")):
        if column is None:
            continue
        value = record.get(column)
        if isinstance(value, Mapping):  # HF datasets Image feature: {"bytes": ..., "path": ...}
            data = data or _as_bytes(uri, where, column, value.get("bytes"))
            raw_path = raw_path or (value.get("path") or None)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = data or bytes(value)
        elif isinstance(value, str) and value:
            if role == "bytes":
                data = data or _as_bytes(uri, where, column, value)
            else:
                raw_path = raw_path or value
        elif value is not None and value != "":
            raise InputError(
                uri, f"{where}: column {column!r} holds a {type(value).__name__}, expected a path string or bytes"
            )
    if data is None and raw_path is None:
        raise InputError(uri, f"{where} has an empty image field", "every row needs an image path or inline bytes")

    if raw_path is not None:
        if not isinstance(raw_path, str):
            raise InputError(uri, f"{where}: image path is a {type(raw_path).__name__}, expected a string")
        full_path, derived_id = _resolve(raw_path, locate, base, id_root, is_http)
    else:
        full_path = f"{locate(manifest_path)}#{where.replace(' ', '=')}"
        derived_id = f"{manifest_name}:{where.split()[-1]}"

    explicit_id = record.get("id")
    return InputRow(
        id=derived_id if explicit_id is None or explicit_id == "" else str(explicit_id),
        path=full_path,
        prompt=_optional_str(record.get("prompt")),
        question=_optional_str(record.get("question")),
        answers=_optional_strings(uri, where, "answers", record.get("answers")),
        choices=_optional_strings(uri, where, "choices", record.get("choices")),
        answer=_optional_str(record.get("answer")),
        task=_optional_str(record.get("task")),
        image_bytes=data,
    )


def _resolve(raw: str, locate: Locator, base: str, id_root: str, is_http: bool) -> tuple[str, str]:
    """Resolve a manifest path against the manifest; return ``(path_or_url, derived_id)``."""
    if URL_RE.match(raw):
        return raw, raw  # already absolute (any protocol), keep as written
    if is_http:
        return urljoin(base, raw), posixpath.normpath(raw)
    if raw.startswith("/"):
        # Local: an absolute path. Object stores: rooted at the store, i.e.
        # "/bucket/key" on an s3 manifest means s3://bucket/key.
        stripped = raw if locate.protocol in LOCAL_PROTOCOLS else raw.lstrip("/")
    else:
        stripped = posixpath.normpath(posixpath.join(base, raw))
    # Id: relative to the input root when inside it; otherwise the path as the
    # manifest wrote it (normalised), which is stable and leaks no more than the
    # manifest itself does.
    rel = relative_to(stripped, id_root)
    if rel != stripped:
        derived = rel
    elif raw.startswith("/"):
        derived = raw
    else:
        derived = posixpath.normpath(raw)
    return locate(stripped), derived


def _as_bytes(uri: str, where: str, column: str, value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    if isinstance(value, str):
        # JSON cannot hold raw bytes; inline images there are base64 text.
        try:
            return base64.b64decode(value, validate=True) or None
        except (binascii.Error, ValueError) as exc:
            raise InputError(uri, f"{where}: column {column!r} is a string but not valid base64 ({exc})") from exc
    raise InputError(uri, f"{where}: column {column!r} holds a {type(value).__name__}, expected bytes")


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _optional_strings(uri: str, where: str, column: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)  # a single answer written as a bare string
    if isinstance(value, (list, tuple)):
        return tuple(v if isinstance(v, str) else str(v) for v in value if v is not None)
    raise InputError(uri, f"{where}: column {column!r} holds a {type(value).__name__}, expected a list of strings")
