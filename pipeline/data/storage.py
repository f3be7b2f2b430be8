"""Where inputs live: fsspec filesystems (local, S3, GCS, HTTP) with cached instances, storage
options from the standard environment, whole-file reads, and path helpers.

Credentials and endpoints come from each filesystem's standard configuration (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ... read
by botocore) plus optional explicit ``storage_options`` passed through to fsspec.
"""

from __future__ import annotations

import os
import posixpath
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.spec import AbstractFileSystem
from fsspec.utils import get_protocol, infer_compression

#: Lower-case, dotted file extensions treated as images (matching is case-insensitive).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
)
#: Lower-case, dotted manifest extensions. JSON variants may also carry a
#: compression suffix (``rows.jsonl.gz``); Parquet compresses internally.
MANIFEST_EXTENSIONS: frozenset[str] = frozenset({".parquet", ".jsonl", ".json", ".ndjson"})
JSON_EXTENSIONS = frozenset({".jsonl", ".json", ".ndjson"})

URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
GLOB_CHARS = ("*", "?", "[")
HTTP_PROTOCOLS = frozenset({"http", "https"})
LOCAL_PROTOCOLS = frozenset({"file", "local"})

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


def filesystem(
    uri: str, storage_options: Mapping[str, Any] | None
) -> tuple[AbstractFileSystem, str, str]:
    """Return ``(fs, stripped_path, protocol)`` for ``uri``, reusing instances.

    Instances are cached per process (``os.getpid()`` in the key: a forked child
    must not reuse its parent's event loop/connections), protocol and options.
    """
    if not URL_RE.match(uri) and "::" not in uri:
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
    fs, stripped, _ = filesystem(path, storage_options)
    return fs.cat_file(stripped)


# --------------------------------------------------------------------------- #
# Path helpers
# --------------------------------------------------------------------------- #


def basename(path: str) -> str:
    """Last path component, ignoring a URL's query string/fragment."""
    if URL_RE.match(path):
        path = urlsplit(path).path
    return posixpath.basename(path.rstrip("/"))


def extension(path: str) -> str:
    return posixpath.splitext(basename(path))[1].lower()


def is_image_path(path: str) -> bool:
    """Whether ``path``'s extension is in :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return extension(path) in IMAGE_EXTENSIONS


def manifest_kind(path: str) -> str | None:
    """``"parquet"``, ``"json"`` or ``None`` from the file name (compression suffix allowed)."""
    name = basename(path).lower()
    ext = posixpath.splitext(name)[1]
    if ext == ".parquet":
        return "parquet"
    if ext in JSON_EXTENSIONS:
        return "json"
    if infer_compression(name) is not None:
        inner = posixpath.splitext(posixpath.splitext(name)[0])[1]
        if inner in JSON_EXTENSIONS:
            return "json"
    return None


def is_hidden(relative: str) -> bool:
    # Skip dot-files and dot-directories below the root: macOS "._IMG_0001.jpg"
    # AppleDouble files carry image extensions but are not images, and
    # ".ipynb_checkpoints"/".cache" hold copies that would duplicate rows.
    return any(part.startswith(".") for part in relative.split("/") if part)


def relative_to(path: str, root: str) -> str:
    root = root.rstrip("/")
    if root and path.startswith(root + "/"):
        return path[len(root) + 1 :]
    if not root and path.startswith("/"):
        return path[1:]
    return path


class Locator:
    """Turns stripped filesystem paths back into user-facing paths/URLs.

    Plain local inputs give plain absolute paths; inputs given as URLs give URLs
    of the same filesystem (``s3://bucket/key``, ``file:///abs``).
    """

    def __init__(self, fs: AbstractFileSystem, protocol: str, uri: str) -> None:
        self.fs = fs
        self.protocol = protocol
        self.plain_local = protocol in LOCAL_PROTOCOLS and not URL_RE.match(uri)

    def __call__(self, stripped: str) -> str:
        if self.plain_local or self.protocol in HTTP_PROTOCOLS:
            return stripped
        return self.fs.unstrip_protocol(stripped)

