"""The data a run read, recorded as an MLflow dataset input: where it is, a digest, its size.

Nothing here reads an image, and nothing is loaded into the driver: the digest is of what
describes the data, cheaply,

* a manifest file: its ETag (object stores) or a hash of its bytes streamed in chunks (local and
  HTTP), and its row count from the Parquet footer, or the JSON-lines records counted while hashing;
* a folder or glob: a hash of the sorted listing's relative names and sizes (one ``find`` /
  ``glob``, as the job itself lists), rows being the listed files the caller counts as rows.

so two runs over the same bytes share a digest, and a re-uploaded or grown set gets a new one.
The dataset is an MLflow :class:`~mlflow.data.meta_dataset.MetaDataset` (metadata only, never the
data) whose source MLflow resolves from the URI (local, ``s3``, ``gs``, ``http``); its profile
holds the row count.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from fsspec.spec import AbstractFileSystem

from .runs import JobRun

DIGEST_CHARS = 16  # MLflow keeps at most 36 characters of a digest
CHUNK_BYTES = 1 << 20
GLOB_CHARS = "*?["
_ETAG_KEYS = ("ETag", "etag", "md5Hash", "md5", "checksum")
_JSON_LINES = (".jsonl", ".ndjson", ".json")
CONTEXT_TAG = "mlflow.data.context"  # what MLflow's own log_input writes the context under


@dataclass(frozen=True)
class InputDataset:
    """What a run read. ``rows`` is ``None`` where it cannot be known without reading the data
    (a compressed JSON-lines file, say)."""

    name: str
    uri: str
    digest: str
    rows: int | None
    kind: str  # "manifest", "listing" or "file"


def _digest(parts: Iterable[str | bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
    return hasher.hexdigest()[:DIGEST_CHARS]


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _listing(entries: dict[str, dict[str, Any]], root: str, is_row: Callable[[str], bool]) -> tuple[str, int]:
    """Digest of the sorted visible files' relative names and sizes, and how many are rows."""
    files = sorted(
        (posixpath.relpath(path, root), info.get("size") or 0)
        for path, info in entries.items()
        if info.get("type") != "directory"
    )
    visible = [(name, size) for name, size in files if not _hidden(name)]
    return _digest(f"{name}\t{size}\n" for name, size in visible), sum(is_row(name) for name, _ in visible)


def _file(fs: AbstractFileSystem, path: str, info: dict[str, Any]) -> tuple[str, int | None]:
    """Digest of one file (its ETag when the store gives one, else its bytes) and, for a
    manifest, its row count."""
    etag = next((info[key] for key in _ETAG_KEYS if info.get(key)), None)
    lines = path.endswith(_JSON_LINES)
    rows: int | None = None
    if etag is not None and not lines:
        digest = _digest([f"{info.get('size')}\t{etag}"])
    else:
        hasher, newlines, last = hashlib.sha256(), 0, b"\n"
        with fs.open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                hasher.update(chunk)
                newlines += chunk.count(b"\n")
                last = chunk[-1:]
        digest = hasher.hexdigest()[:DIGEST_CHARS]
        rows = newlines + (last != b"\n") if lines else None
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows  # the footer only
    return digest, rows


def describe_input(
    uri: str, fs: AbstractFileSystem, path: str, is_row: Callable[[str], bool] = lambda name: True
) -> InputDataset:
    """Describe the input ``uri`` (``path`` on ``fs``, as the job's own listing resolves it).

    Args:
        is_row: which files of a folder or glob are rows (images); a single file that passes it
            is one row, one that does not is a manifest.
    """
    name = posixpath.basename(uri.rstrip("/")) or uri
    if any(ch in path for ch in GLOB_CHARS) and not fs.exists(path):
        root = path[: min(path.index(ch) for ch in GLOB_CHARS if ch in path)].rsplit("/", 1)[0]
        digest, rows = _listing(fs.glob(path, detail=True), root, is_row)
        # "images/*.png" says more than "*.png"
        return InputDataset(posixpath.basename(root) + path[len(root) :], uri, digest, rows, "listing")
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise ValueError(f"input {uri!r} does not exist: check the path (and, for object stores, the bucket)") from None
    if info.get("type") == "directory":
        digest, rows = _listing(fs.find(path, detail=True, withdirs=False), path.rstrip("/"), is_row)
        return InputDataset(name, uri, digest, rows, "listing")
    digest, rows = _file(fs, path, info)
    if is_row(path):
        return InputDataset(name, uri, digest, 1, "file")
    return InputDataset(name, uri, digest, rows, "manifest")


def _source_uri(uri: str) -> str:
    # a relative local path means nothing once the run is read from elsewhere
    return uri if urlparse(uri).scheme else os.path.abspath(uri)


def mlflow_dataset(dataset: InputDataset):
    """The :class:`~mlflow.data.meta_dataset.MetaDataset` of an input, its profile the row count."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class _Described(MetaDataset):
        @property
        def profile(self) -> dict[str, Any]:
            return {"num_rows": dataset.rows, "kind": dataset.kind}

        def to_dict(self) -> dict[str, str]:
            # MLflow's Dataset leaves the profile to subclasses that have one
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    with warnings.catch_warnings():  # a local path matches MLflow's local source twice; either is right
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(_source_uri(dataset.uri))
    return _Described(source=source, name=dataset.name, digest=dataset.digest)


def log_input(run: JobRun, dataset: InputDataset, context: str) -> None:
    """Attach the input to the run as a dataset (``context`` says how it was used: ``caption``,
    ``evaluation``), as ``mlflow.log_input`` does for the active run."""
    if not run.enabled:
        return
    from mlflow.entities import DatasetInput, InputTag

    entity = mlflow_dataset(dataset)._to_mlflow_entity()
    run.client.log_inputs(run.run_id, [DatasetInput(entity, [InputTag(CONTEXT_TAG, context)])])


def read_profile(profile: str | None) -> dict[str, Any]:
    """A logged dataset's profile back as a dict (empty when it has none)."""
    try:
        value = json.loads(profile) if profile else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
