"""One job at a time per output folder: a lease file the running driver holds and renews.

Two drivers writing one folder would each redo the other's unwritten rows and double them. The
lease (``OUT/.hired-lease.json``: owner, host, pid, renewal time) is renewed every
``ttl_s / 4`` while the job runs and deleted when it ends. A second driver refuses to start while
the lease is live; a lease is stale once it was not renewed for ``ttl_s`` (its driver died
elsewhere), or at once when its driver ran on this host and that process is gone (a killed job
re-run at once). Object stores have no create-if-absent here, so a new lease is written and read
back: of two drivers racing within one round trip, the one whose write landed last wins and the
other refuses.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import fsspec

from pipeline.data.errors import InputProblem

logger = logging.getLogger(__name__)

LEASE_NAME = ".hired-lease.json"
LEASE_TTL_S = 120.0


class OutputLocked(InputProblem):
    """Another job holds the output folder's lease."""

    what = "output"


class OutputLease:
    """The lease on one output folder; use as a context manager around the job."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, ttl_s: float = LEASE_TTL_S) -> None:
        self.fs, self.path, self.ttl_s = fs, f"{root}/{LEASE_NAME}", ttl_s
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self) -> dict[str, Any]:
        return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "renewed": time.time(),
                "ttl_s": self.ttl_s}

    def read(self) -> dict[str, Any] | None:
        return read_lease(self.fs, self.path)

    def stale(self, lease: dict[str, Any]) -> bool:
        if time.time() - float(lease.get("renewed", 0)) > float(lease.get("ttl_s", self.ttl_s)):
            return True
        return lease.get("host") == socket.gethostname() and not _alive(int(lease.get("pid", -1)))

    def acquire(self) -> None:
        """Take the lease or raise :class:`OutputLocked` naming the holder and what to do."""
        held = self.read()
        if held is not None and held.get("owner") != self.owner and not self.stale(held):
            self._refuse(held)
        if held is None and _local(self.fs):
            try:  # local disk: create-if-absent settles a race exactly
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._refuse(self.read() or {})
            with os.fdopen(fd, "w") as handle:
                json.dump(self.record(), handle)
        else:
            self._write()
        if (self.read() or {}).get("owner") != self.owner:
            self._refuse(self.read() or {})
        self._thread = threading.Thread(target=self._renew, name="hired-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (self.read() or {}).get("owner") == self.owner:
            self.fs.rm(self.path)

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _write(self) -> None:
        """Replace the lease whole (workers read it before each write: never a half-written one)."""
        data = json.dumps(self.record()).encode()
        if _local(self.fs):
            temporary = f"{self.path}.{self.owner}.tmp"
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, self.path)
        else:
            with self.fs.open(self.path, "wb") as handle:
                handle.write(data)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self._write()
            except Exception as error:  # a storage hiccup: the next renewal tries again
                logger.warning("could not renew the output lease %s: %s", self.path, error)

    def _refuse(self, held: dict[str, Any]) -> None:
        age = time.time() - float(held.get("renewed", time.time()))
        raise OutputLocked(
            self.path.rsplit("/", 1)[0],
            f"another job is writing it (host {held.get('host', '?')}, pid {held.get('pid', '?')}, "
            f"lease renewed {age:.0f} s ago; stale after {float(held.get('ttl_s', self.ttl_s)):.0f} s without renewal)",
            f"wait for that job to finish or write elsewhere; if you know it is gone, delete {self.path}",
        )


def read_lease(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """The lease at ``path``, or None when there is none (or a crash cut it short mid-write)."""
    try:
        with fs.open(path, "rb") as handle:
            return json.loads(handle.read())
    except (FileNotFoundError, ValueError):
        return None


def check_holder(fs: fsspec.AbstractFileSystem, root: str, owner: str) -> None:
    """Raise :class:`OutputLocked` unless ``owner`` still holds the lease on ``root`` and, on this
    host, its driver lives: Ray may run a killed driver's actors on for a while, and they must not
    write rows a re-run will redo. (On another host a dead driver shows once the lease is taken
    over or stale.)"""
    held = read_lease(fs, f"{root}/{LEASE_NAME}") or {}
    gone = held.get("host") == socket.gethostname() and not _alive(int(held.get("pid", -1)))
    if held.get("owner") != owner or gone:
        raise OutputLocked(root, "this job no longer holds the output's lease (its driver is gone)", "nothing to do")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def _local(fs: fsspec.AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)
