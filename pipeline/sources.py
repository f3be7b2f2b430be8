"""Input discovery for the captioning job: turn one user-supplied URI into rows.

``list_inputs`` accepts a local path or any fsspec URL (``file://``, ``s3://``,
``gs://``, ``http(s)://``) naming a directory, a glob pattern, a single image, or
a manifest (Parquet or JSON lines) and returns a deterministic list of
:class:`InputRow`. ``read_bytes`` fetches one row's image later, typically inside
a Ray task; both are plain functions with no Ray dependency.

Credentials and endpoints come from each filesystem's standard configuration
(for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL``, ... read by botocore) plus optional explicit
``storage_options`` passed through to fsspec.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import posixpath
import re
import threading
from collections.abc import Iterator, Mapping
import dataclasses
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import fsspec
from fsspec.spec import AbstractFileSystem
from fsspec.utils import get_protocol, infer_compression

__all__ = [
    "IMAGE_EXTENSIONS",
    "MANIFEST_EXTENSIONS",
    "InputError",
    "InputRow",
    "BYTES_COLUMNS",
    "PATH_COLUMNS",
    "default_storage_options",
    "is_image_path",
    "list_inputs",
    "read_bytes",
    "resolve_storage_options",
]

logger = logging.getLogger(__name__)

#: Lower-case, dotted file extensions treated as images (matching is case-insensitive).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
)
#: Lower-case, dotted manifest extensions. JSON variants may also carry a
#: compression suffix (``rows.jsonl.gz``); Parquet compresses internally.
MANIFEST_EXTENSIONS: frozenset[str] = frozenset({".parquet", ".jsonl", ".json", ".ndjson"})
_JSON_EXTENSIONS = frozenset({".jsonl", ".json", ".ndjson"})

# Manifest columns, in order of preference. A string column holds a path/URL;
# a binary column (or an HF-datasets style {"bytes": ..., "path": ...} struct)
# holds the encoded image inline.
PATH_COLUMNS: tuple[str, ...] = ("image", "path", "image_path", "url", "file")
BYTES_COLUMNS: tuple[str, ...] = ("image_bytes", "bytes")
_OPTIONAL_COLUMNS: tuple[str, ...] = ("id", "prompt", "question", "answers", "choices", "answer", "task")

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_GLOB_CHARS = ("*", "?", "[")
_HTTP_PROTOCOLS = frozenset({"http", "https"})
_LOCAL_PROTOCOLS = frozenset({"file", "local"})


class InputError(ValueError):
    """A problem with the input the user pointed the job at (not a transient failure).

    The message names the input, what is wrong and what to do; the parts are kept
    as ``uri``, ``problem`` and ``hint``.
    """

    def __init__(self, uri: str, problem: str, hint: str = "") -> None:
        self.uri = uri
        self.problem = problem
        self.hint = hint
        message = f"input {uri!r}: {problem}"
        if hint:
            message += f". {hint[0].upper()}{hint[1:]}"
        super().__init__(message)

    def __reduce__(self):  # type: ignore[override]
        # Default exception pickling calls cls(*args) with the formatted message,
        # which does not match __init__; Ray pickles exceptions raised in tasks.
        return (type(self), (self.uri, self.problem, self.hint))


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


# --------------------------------------------------------------------------- #
# Filesystems
# --------------------------------------------------------------------------- #

_FS_CACHE: dict[tuple[Any, ...], AbstractFileSystem] = {}
_FS_LOCK = threading.Lock()


def default_storage_options(uri: str) -> dict[str, Any]:
    """Storage options implied by the standard environment for ``uri``.

    For ``s3://`` URLs this returns ``{"endpoint_url": ...}`` from
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (botocore's precedence, and
    nothing when ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` is true). s3fs already
    honours these variables through botocore, so this adds no new behaviour; it
    makes the endpoint part of the options so that cached filesystem instances
    (ours and fsspec's, both keyed on options, not on the environment) never
    keep talking to a previous endpoint. Other protocols: ``{}``.
    """
    if get_protocol(uri) not in {"s3", "s3a"}:
        return {}
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def resolve_storage_options(uri: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``storage_options`` layered over :func:`default_storage_options` for ``uri``.

    Explicit options win. Use this (rather than a plain ``{**a, **b}``) when
    building a filesystem for an output location too: an explicit endpoint in
    ``client_kwargs`` must suppress the environment's, or s3fs would pass
    botocore two ``endpoint_url`` arguments.
    """
    options = dict(storage_options or {})
    defaults = default_storage_options(uri)
    client_kwargs = options.get("client_kwargs") or {}
    if "endpoint_url" in options or "endpoint_url" in client_kwargs:
        # An explicit endpoint wins; passing both would make s3fs hand botocore
        # two endpoint_url arguments.
        defaults.pop("endpoint_url", None)
    return {**defaults, **options}


def _freeze(value: Any) -> Any:
    """Hashable, order-independent stand-in for a storage-options value."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _filesystem(
    uri: str, storage_options: Mapping[str, Any] | None
) -> tuple[AbstractFileSystem, str, str]:
    """Return ``(fs, stripped_path, protocol)`` for ``uri``, reusing instances.

    Instances are cached per process (``os.getpid()`` in the key: a forked child
    must not reuse its parent's event loop/connections), protocol and options.
    """
    if not _URL_RE.match(uri) and "::" not in uri:
        uri = os.path.expanduser(uri)  # "~/data" works like in a shell
    protocol = get_protocol(uri)
    cls = fsspec.get_filesystem_class(protocol)
    options = {**cls._get_kwargs_from_urls(uri), **resolve_storage_options(uri, storage_options)}
    key = (os.getpid(), protocol, _freeze(options))
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            fs = cls(**options)
            _FS_CACHE[key] = fs
    return fs, cls._strip_protocol(uri), protocol


def read_bytes(path: str, storage_options: dict | None = None) -> bytes:
    """Read a whole file (local path or fsspec URL) into memory.

    Errors from the filesystem (``FileNotFoundError``, ``PermissionError``, network
    errors) propagate unchanged so callers can tell a missing file from a
    transient failure worth retrying.
    """
    fs, stripped, _ = _filesystem(path, storage_options)
    return fs.cat_file(stripped)


# --------------------------------------------------------------------------- #
# Path helpers
# --------------------------------------------------------------------------- #


def _basename(path: str) -> str:
    """Last path component, ignoring a URL's query string/fragment."""
    if _URL_RE.match(path):
        path = urlsplit(path).path
    return posixpath.basename(path.rstrip("/"))


def _extension(path: str) -> str:
    return posixpath.splitext(_basename(path))[1].lower()


def is_image_path(path: str) -> bool:
    """Whether ``path``'s extension is in :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return _extension(path) in IMAGE_EXTENSIONS


def _manifest_kind(path: str) -> str | None:
    """``"parquet"``, ``"json"`` or ``None`` from the file name (compression suffix allowed)."""
    name = _basename(path).lower()
    ext = posixpath.splitext(name)[1]
    if ext == ".parquet":
        return "parquet"
    if ext in _JSON_EXTENSIONS:
        return "json"
    if infer_compression(name) is not None:
        inner = posixpath.splitext(posixpath.splitext(name)[0])[1]
        if inner in _JSON_EXTENSIONS:
            return "json"
    return None


def _is_hidden(relative: str) -> bool:
    # Skip dot-files and dot-directories below the root: macOS "._IMG_0001.jpg"
    # AppleDouble files carry image extensions but are not images, and
    # ".ipynb_checkpoints"/".cache" hold copies that would duplicate rows.
    return any(part.startswith(".") for part in relative.split("/") if part)


def _relative(path: str, root: str) -> str:
    root = root.rstrip("/")
    if root and path.startswith(root + "/"):
        return path[len(root) + 1 :]
    if not root and path.startswith("/"):
        return path[1:]
    return path


class _Locator:
    """Turns stripped filesystem paths back into user-facing paths/URLs.

    Plain local inputs give plain absolute paths; inputs given as URLs give URLs
    of the same filesystem (``s3://bucket/key``, ``file:///abs``).
    """

    def __init__(self, fs: AbstractFileSystem, protocol: str, uri: str) -> None:
        self.fs = fs
        self.protocol = protocol
        self.plain_local = protocol in _LOCAL_PROTOCOLS and not _URL_RE.match(uri)

    def __call__(self, stripped: str) -> str:
        if self.plain_local or self.protocol in _HTTP_PROTOCOLS:
            return stripped
        return self.fs.unstrip_protocol(stripped)


# --------------------------------------------------------------------------- #
# list_inputs
# --------------------------------------------------------------------------- #


def list_inputs(
    uri: str, storage_options: dict | None = None, limit: int | None = None
) -> list[InputRow]:
    """Discover the images named by ``uri``.

    ``uri`` may be a local path or fsspec URL naming:

    * a directory: all image files below it (recursively; dot-files and
      dot-directories skipped), sorted by path; ids are paths relative to it;
    * a glob (``s3://bucket/imgs/*.jpg``, ``/data/**/*.png``): matching image
      files, sorted; ids relative to the pattern's fixed leading directory. A
      glob matching only manifests (``s3://b/shards/*.parquet``) reads them all;
    * a single image file: one row whose id is the file name;
    * a manifest (``.parquet``, or JSON lines ``.jsonl``/``.json``/``.ndjson``,
      optionally compressed, a top-level JSON array is accepted too) with an
      image column (one of :data:`PATH_COLUMNS` holding a path/URL, relative
      paths being resolved against the manifest's directory on the same
      filesystem, or one of :data:`BYTES_COLUMNS` / an HF ``{"bytes", "path"}``
      struct holding the encoded image; base64 strings in JSON) and optional
      ``id``, ``prompt``, ``question``, ``answers``, ``choices``, ``answer`` and ``task`` columns.

    Row ids are unique: the manifest's ``id`` when present, else derived from
    the path; a repeated id gets ``#2``, ``#3``, ... appended in order.

    Args:
        uri: What to list.
        storage_options: Extra fsspec options for the filesystem (merged over
            :func:`default_storage_options`).
        limit: Return at most this many rows (the first ones in the order above).

    Raises:
        InputError: the input does not exist, is empty, is not an image or
            manifest, or a manifest is malformed.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(uri, f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(str(uri), "the input is empty", "pass a path or URL such as s3://bucket/images/")

    fs, stripped, protocol = _filesystem(uri, storage_options)
    locate = _Locator(fs, protocol, uri)
    is_http = protocol in _HTTP_PROTOCOLS
    if not is_http:
        # Instances are reused across calls; don't let a cached listing from an
        # earlier call hide newly uploaded objects.
        fs.invalidate_cache()

    if not is_http and any(ch in stripped for ch in _GLOB_CHARS) and not fs.exists(stripped):
        # (A path that exists literally, e.g. "/photos [2020]/", is not a pattern.)
        rows = _list_glob(uri, fs, stripped, locate, limit)
    else:
        info = _info(uri, fs, stripped)
        if info.get("type") == "directory" and not is_http:
            rows = _list_directory(uri, fs, stripped, locate, limit)
        else:
            kind = _manifest_kind(stripped)
            if kind is not None:
                rows = list(_read_manifest(uri, fs, stripped, kind, locate, _parent(stripped, is_http), limit))
                if not rows:
                    raise InputError(uri, "the manifest has no rows", "check that the file is the one you meant")
            elif is_image_path(stripped):
                rows = [InputRow(id=_basename(stripped), path=locate(stripped))]
            else:
                raise InputError(
                    uri,
                    f"the file extension {_extension(stripped) or '(none)'!r} is neither an image "
                    f"({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a manifest "
                    f"({', '.join(sorted(MANIFEST_EXTENSIONS))})",
                    "point at an image, a directory of images, a glob, or a .parquet/.jsonl manifest",
                )
    return _unique_ids(rows)[:limit] if limit else _unique_ids(rows)


def _parent(stripped: str, is_http: bool) -> str:
    if is_http:
        return stripped  # urljoin resolves against the manifest URL itself
    return posixpath.dirname(stripped.rstrip("/"))


def _info(uri: str, fs: AbstractFileSystem, stripped: str) -> dict[str, Any]:
    try:
        return fs.info(stripped)
    except FileNotFoundError as exc:
        raise InputError(
            uri,
            "the path does not exist",
            "check the spelling; for object stores also check the bucket, credentials and "
            "endpoint (AWS_ENDPOINT_URL / storage_options)",
        ) from exc
    except PermissionError as exc:
        raise InputError(
            uri, f"access was denied ({exc})", "check the credentials/profile that the job runs with"
        ) from exc


def _list_directory(
    uri: str, fs: AbstractFileSystem, root: str, locate: _Locator, limit: int | None
) -> list[InputRow]:
    files = sorted(fs.find(root, withdirs=False))
    rows: list[InputRow] = []
    skipped: set[str] = set()
    manifests = 0
    for path in files:
        rel = _relative(path, root)
        if _is_hidden(rel):
            continue
        if is_image_path(path):
            rows.append(InputRow(id=rel, path=locate(path)))
            if limit and len(rows) >= limit:
                break
        else:
            manifests += _manifest_kind(path) is not None
            skipped.add(_extension(path) or "(none)")
    if not rows:
        if not files:
            problem, hint = "the directory is empty", "check that the upload finished and the path is right"
        else:
            problem = (
                f"the directory has {len(files)} files but no images "
                f"(extensions seen: {', '.join(sorted(skipped)[:10]) or 'only hidden files'})"
            )
            hint = f"image extensions are {', '.join(sorted(IMAGE_EXTENSIONS))}"
            if manifests:
                hint += "; to read manifests, pass the manifest file itself or a glob such as dir/*.parquet"
        raise InputError(uri, problem, hint)
    return rows


def _glob_root(pattern: str) -> str:
    """The fixed directory before the first path component containing a wildcard."""
    parts = pattern.split("/")
    fixed: list[str] = []
    for part in parts[:-1]:
        if any(ch in part for ch in _GLOB_CHARS):
            break
        fixed.append(part)
    return "/".join(fixed)


def _list_glob(
    uri: str, fs: AbstractFileSystem, pattern: str, locate: _Locator, limit: int | None
) -> list[InputRow]:
    root = _glob_root(pattern)
    matched = fs.glob(pattern, detail=True)
    files = sorted(p for p, info in matched.items() if info.get("type") != "directory")
    files = [p for p in files if not _is_hidden(_relative(p, root))]
    images = [p for p in files if is_image_path(p)]
    manifests = [p for p in files if _manifest_kind(p) is not None]
    if images and manifests:
        raise InputError(
            uri,
            f"the pattern matches both images ({len(images)}) and manifests ({len(manifests)})",
            "narrow the pattern to one kind, e.g. *.jpg or *.parquet",
        )
    if images:
        if limit:
            images = images[:limit]
        return [InputRow(id=_relative(p, root), path=locate(p)) for p in images]
    if manifests:
        rows: list[InputRow] = []
        for manifest in manifests:
            remaining = None if limit is None else limit - len(rows)
            rows.extend(
                _read_manifest(
                    locate(manifest), fs, manifest, _manifest_kind(manifest) or "", locate,
                    posixpath.dirname(manifest), remaining, id_root=root,
                )
            )
            if limit and len(rows) >= limit:
                break
        if not rows:
            raise InputError(uri, f"the {len(manifests)} matching manifests have no rows")
        return rows
    if not files:
        raise InputError(uri, "no files match the pattern", "check the pattern and that the files exist")
    raise InputError(
        uri,
        f"{len(files)} files match but none is an image or manifest",
        f"image extensions are {', '.join(sorted(IMAGE_EXTENSIONS))}",
    )


def _unique_ids(rows: list[InputRow]) -> list[InputRow]:
    """Make ids unique by suffixing repeats with ``#2``, ``#3``, ... (stable, first wins)."""
    seen: set[str] = {row.id for row in rows}
    if len(seen) == len(rows):
        return rows
    used: set[str] = set()
    counts: dict[str, int] = {}
    out: list[InputRow] = []
    duplicates = 0
    for row in rows:
        rid = row.id
        if rid in used:
            duplicates += 1
            n = counts.get(row.id, 1)
            while True:
                n += 1
                candidate = f"{row.id}#{n}"
                if candidate not in used and candidate not in seen:
                    break
            counts[row.id] = n
            rid = candidate
            row = dataclasses.replace(row, id=rid)
        used.add(rid)
        out.append(row)
    logger.info("disambiguated %d repeated row ids with #N suffixes", duplicates)
    return out


# --------------------------------------------------------------------------- #
# Manifests
# --------------------------------------------------------------------------- #


def _read_manifest(
    uri: str,
    fs: AbstractFileSystem,
    path: str,
    kind: str,
    locate: _Locator,
    base: str,
    limit: int | None,
    id_root: str | None = None,
) -> Iterator[InputRow]:
    """Yield rows from one manifest; ``base`` resolves relative paths, ``id_root`` shortens ids."""
    records = _parquet_records(uri, fs, path) if kind == "parquet" else _json_records(uri, fs, path)
    id_root = base if id_root is None else id_root
    is_http = locate.protocol in _HTTP_PROTOCOLS
    manifest_name = _basename(path)
    count = 0
    for where, record in records:
        yield _row_from_record(uri, where, record, fs, locate, base, id_root, is_http, manifest_name, path)
        count += 1
        if limit and count >= limit:
            return


def _parquet_records(
    uri: str, fs: AbstractFileSystem, path: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq  # local import: pyarrow is heavy and only needed here

    with fs.open(path, "rb") as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError variants
            raise InputError(uri, f"cannot read the Parquet file ({exc})", "check that it is a valid Parquet file") from exc
        names = parquet.schema_arrow.names
        if not any(c in names for c in PATH_COLUMNS + BYTES_COLUMNS):
            raise InputError(
                uri,
                f"the manifest has no image column (columns: {', '.join(names) or 'none'})",
                f"name the column holding image paths/URLs one of {', '.join(PATH_COLUMNS)}, "
                f"or the column holding encoded bytes one of {', '.join(BYTES_COLUMNS)}",
            )
        # Only read the columns we use: manifests may carry large unrelated columns.
        columns = [c for c in names if c in PATH_COLUMNS + BYTES_COLUMNS + _OPTIONAL_COLUMNS]
        index = 0
        # Small batches: a row may hold a multi-MB inline image.
        for batch in parquet.iter_batches(batch_size=256, columns=columns):
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
    locate: _Locator,
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


def _resolve(raw: str, locate: _Locator, base: str, id_root: str, is_http: bool) -> tuple[str, str]:
    """Resolve a manifest path against the manifest; return ``(path_or_url, derived_id)``."""
    if _URL_RE.match(raw):
        return raw, raw  # already absolute (any protocol), keep as written
    if is_http:
        return urljoin(base, raw), posixpath.normpath(raw)
    if raw.startswith("/"):
        # Local: an absolute path. Object stores: rooted at the store, i.e.
        # "/bucket/key" on an s3 manifest means s3://bucket/key.
        stripped = raw if locate.protocol in _LOCAL_PROTOCOLS else raw.lstrip("/")
    else:
        stripped = posixpath.normpath(posixpath.join(base, raw))
    # Id: relative to the input root when inside it; otherwise the path as the
    # manifest wrote it (normalised), which is stable and leaks no more than the
    # manifest itself does.
    rel = _relative(stripped, id_root)
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
