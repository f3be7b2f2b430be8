"""A real S3-protocol server on loopback for tests (moto's threaded server).

Unlike ``moto.mock_aws`` (which patches botocore in-process), this speaks HTTP,
so s3fs/aiobotocore, pyarrow and Ray workers in other processes all see the same
buckets through the standard ``AWS_ENDPOINT_URL`` environment variable.

Use from a test module with::

    from tests.s3_server import s3_server  # noqa: F401

    def test_something(s3_server):
        s3_server.create_bucket("my-bucket")
        s3_server.upload("my-bucket", "imgs/a.jpg", b"...")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["S3Server", "s3_server"]

# Fixed fake credentials: moto accepts anything, and fixed values keep the
# process from ever reaching for real ones.
_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that could redirect requests away from the loopback server or pull
# in a developer's real identity; removed while the server runs.
_UNSET = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_REGION",
)


@dataclass
class S3Server:
    """Handle to the running server: its endpoint and boto3 helpers."""

    endpoint_url: str
    _client: Any = field(default=None, repr=False)

    @property
    def client(self) -> Any:
        """A boto3 S3 client bound to this server."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=_ENV["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=_ENV["AWS_SECRET_ACCESS_KEY"],
                region_name=_ENV["AWS_DEFAULT_REGION"],
            )
        return self._client

    def create_bucket(self, bucket: str) -> str:
        """Create ``bucket`` (no error if it exists); return ``"s3://bucket"``."""
        existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            self.client.create_bucket(Bucket=bucket)
        return f"s3://{bucket}"

    def upload(self, bucket: str, key: str, data: bytes | str | Path) -> str:
        """Upload bytes, text or a local file to ``bucket/key``; return its ``s3://`` URL."""
        if isinstance(data, Path):
            data = data.read_bytes()
        elif isinstance(data, str):
            data = data.encode("utf-8")
        self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"

    def upload_files(self, bucket: str, files: Mapping[str, bytes | str | Path]) -> list[str]:
        """Create ``bucket`` if needed and upload ``{key: data}``; return the URLs."""
        self.create_bucket(bucket)
        return [self.upload(bucket, key, data) for key, data in files.items()]

    def upload_dir(self, bucket: str, local_dir: str | Path, prefix: str = "") -> list[str]:
        """Upload every file under ``local_dir`` to ``bucket/prefix/<relative path>``."""
        root = Path(local_dir)
        files = {
            "/".join(filter(None, [prefix.strip("/"), p.relative_to(root).as_posix()])): p
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
        return self.upload_files(bucket, files)


def _clear_fsspec_s3_instances() -> None:
    # fsspec caches S3FileSystem instances by constructor arguments, not by the
    # environment; an instance created before/after this server would keep the
    # wrong endpoint.
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:  # pragma: no cover - s3fs is a project dependency
        pass


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Session-wide loopback S3 server with AWS_* env pointing at it (restored afterwards)."""
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request at INFO; keep test output readable.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    # Port 0: the OS picks a free port at bind time (no race with other test
    # processes); get_host_and_port() reports the one actually bound.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    # Session-scoped fixtures cannot use the function-scoped ``monkeypatch``;
    # MonkeyPatch.context() gives the same save/restore semantics.
    with pytest.MonkeyPatch.context() as mp:
        for name in _UNSET:
            mp.delenv(name, raising=False)
        for name, value in _ENV.items():
            mp.setenv(name, value)
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        # Don't read ~/.aws of whoever runs the tests.
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        _clear_fsspec_s3_instances()
        try:
            yield S3Server(endpoint_url=endpoint)
        finally:
            _clear_fsspec_s3_instances()
            server.stop()
