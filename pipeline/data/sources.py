"""Input discovery for a job: turn one user-supplied URI into rows.

``list_inputs`` accepts a local path or any fsspec URL (``file://``, ``s3://``, ``gs://``,
``http(s)://``) naming a directory, a glob pattern, a single image, or a manifest (Parquet or
JSON lines) and returns a deterministic list of :class:`InputRow`; images are read later, inside
the decode tasks (:func:`pipeline.data.rows.row_bytes`). No Ray dependency.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from typing import Any

from fsspec.spec import AbstractFileSystem

from .manifests import read_manifest
from .rows import InputError, InputRow
from .storage import (
    GLOB_CHARS,
    HTTP_PROTOCOLS,
    IMAGE_EXTENSIONS,
    MANIFEST_EXTENSIONS,
    Locator,
    basename,
    extension,
    filesystem,
    is_hidden,
    is_image_path,
    manifest_kind,
    relative_to,
)

logger = logging.getLogger(__name__)


def open_input(uri: str, storage_options: dict | None) -> tuple[AbstractFileSystem, str, Locator, bool]:
    """``(fs, stripped path, locator, is_http)`` of a user's input, with fresh listings."""
    if not isinstance(uri, str) or not uri.strip():
        raise InputError(str(uri), "the input is empty", "pass a path or URL such as s3://bucket/images/")
    fs, stripped, protocol = filesystem(uri, storage_options)
    is_http = protocol in HTTP_PROTOCOLS
    if not is_http:
        # instances are reused across calls: a cached listing of an earlier call would hide new objects
        fs.invalidate_cache()
    return fs, stripped, Locator(fs, protocol, uri), is_http


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
    fs, stripped, locate, is_http = open_input(uri, storage_options)

    if not is_http and any(ch in stripped for ch in GLOB_CHARS) and not fs.exists(stripped):
        # (A path that exists literally, e.g. "/photos [2020]/", is not a pattern.)
        rows = _list_glob(uri, fs, stripped, locate, limit)
    else:
        info = _info(uri, fs, stripped)
        if info.get("type") == "directory" and not is_http:
            rows = _list_directory(uri, fs, stripped, locate, limit)
        else:
            kind = manifest_kind(stripped)
            if kind is not None:
                rows = list(read_manifest(uri, fs, stripped, kind, locate, _parent(stripped, is_http), limit))
                if not rows:
                    raise InputError(uri, "the manifest has no rows", "check that the file is the one you meant")
            elif is_image_path(stripped):
                rows = [InputRow(id=basename(stripped), path=locate(stripped))]
            else:
                raise InputError(
                    uri,
                    f"the file extension {extension(stripped) or '(none)'!r} is neither an image "
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
    uri: str, fs: AbstractFileSystem, root: str, locate: Locator, limit: int | None
) -> list[InputRow]:
    files = sorted(fs.find(root, withdirs=False))
    rows: list[InputRow] = []
    skipped: set[str] = set()
    manifests = 0
    for path in files:
        rel = relative_to(path, root)
        if is_hidden(rel):
            continue
        if is_image_path(path):
            rows.append(InputRow(id=rel, path=locate(path)))
            if limit and len(rows) >= limit:
                break
        else:
            manifests += manifest_kind(path) is not None
            skipped.add(extension(path) or "(none)")
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
        if any(ch in part for ch in GLOB_CHARS):
            break
        fixed.append(part)
    return "/".join(fixed)


def _list_glob(
    uri: str, fs: AbstractFileSystem, pattern: str, locate: Locator, limit: int | None
) -> list[InputRow]:
    root = _glob_root(pattern)
    matched = fs.glob(pattern, detail=True)
    files = sorted(p for p, info in matched.items() if info.get("type") != "directory")
    files = [p for p in files if not is_hidden(relative_to(p, root))]
    images = [p for p in files if is_image_path(p)]
    manifests = [p for p in files if manifest_kind(p) is not None]
    if images and manifests:
        raise InputError(
            uri,
            f"the pattern matches both images ({len(images)}) and manifests ({len(manifests)})",
            "narrow the pattern to one kind, e.g. *.jpg or *.parquet",
        )
    if images:
        if limit:
            images = images[:limit]
        return [InputRow(id=relative_to(p, root), path=locate(p)) for p in images]
    if manifests:
        rows: list[InputRow] = []
        for manifest in manifests:
            remaining = None if limit is None else limit - len(rows)
            rows.extend(
                read_manifest(
                    locate(manifest), fs, manifest, manifest_kind(manifest) or "", locate,
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
    renames = repeated_id_renames([row.id for row in rows])
    return [dataclasses.replace(row, id=renames[i]) if i in renames else row for i, row in enumerate(rows)]


def repeated_id_renames(ids: list[str]) -> dict[int, str]:
    """``{position: new id}`` for the repeats in ``ids``: the second ``x`` becomes ``x#2``, ...
    (first wins; a suffix never collides with an id the input already has)."""
    seen = set(ids)
    if len(seen) == len(ids):
        return {}
    used: set[str] = set()
    counts: dict[str, int] = {}
    renames: dict[int, str] = {}
    for position, rid in enumerate(ids):
        if rid in used:
            n = counts.get(rid, 1)
            while True:
                n += 1
                candidate = f"{rid}#{n}"
                if candidate not in used and candidate not in seen:
                    break
            counts[rid] = n
            renames[position] = rid = candidate
        used.add(rid)
    logger.info("disambiguated %d repeated row ids with #N suffixes", len(renames))
    return renames
