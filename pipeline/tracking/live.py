"""Watching a running job: live MLflow metrics, and a progress line for the terminal.

The driver calls ``on_progress(progress)`` after each written batch with cumulative counters
(:class:`pipeline.batch.progress.Progress`). :class:`LiveMetrics` is such a callback: it only keeps
the latest counters, and a background thread logs them, one ``log_batch`` per step, at most once
every ``interval_s`` seconds, so the driver's loop never waits on the tracking server and a slow
or failing server costs the job nothing but the missing steps. The step is the number of rows
done, so the UI's charts read "images/s after N rows".

Live keys sit under ``live/`` (a section of their own in the UI), apart from the job's final
metrics, which are logged once at the end: a final ``images_per_s`` must not be a step of a
curve whose latest point MLflow would show instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from .runs import JobRun

logger = logging.getLogger(__name__)

LIVE_PREFIX = "live/"


class ProgressLike(Protocol):
    """What the watchers read from :class:`pipeline.batch.progress.Progress`."""

    rows_done: int
    rows_total: int | None
    errors: int
    elapsed_s: float

    @property
    def images_per_s(self) -> float: ...

    @property
    def generated_tokens_per_s(self) -> float: ...

    @property
    def visual_tokens_mean(self) -> float: ...


def live_metrics(progress: ProgressLike) -> dict[str, float]:
    """The ``live/*`` metrics of one progress report."""
    metrics = {
        "rows_done": float(progress.rows_done),
        "errors": float(progress.errors),
        "images_per_s": progress.images_per_s,
        "generated_tokens_per_s": progress.generated_tokens_per_s,
        "visual_tokens_mean": progress.visual_tokens_mean,
        "elapsed_s": progress.elapsed_s,
    }
    if progress.rows_total:
        metrics["fraction_done"] = progress.rows_done / progress.rows_total
    return {LIVE_PREFIX + key: float(value) for key, value in metrics.items()}


class LiveMetrics:
    """A throttled, background logger of a job's progress to its run; use as a context manager
    around the job and pass the object as ``on_progress``. With ``interval_s == 0`` or a
    disabled run it logs nothing. Every report becomes a step (the chart shows each batch), sent
    together with the others of its interval in one request; on exit the rest is sent."""

    def __init__(self, run: JobRun, interval_s: float) -> None:
        self.run = run
        self.interval_s = interval_s
        self.steps_logged = 0
        self._pending: list[ProgressLike] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    @property
    def active(self) -> bool:
        return self.run.enabled and self.interval_s > 0

    def __call__(self, progress: ProgressLike) -> None:
        """Queue the report; the driver's thread does nothing else here."""
        if self.active:
            with self._lock:
                self._pending.append(progress)

    def __enter__(self) -> LiveMetrics:
        if self.active:
            self._thread = threading.Thread(target=self._loop, name="hired-live-metrics", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            reports, self._pending = self._pending, []
        if not reports:
            return
        try:
            self.run.log_steps([(live_metrics(p), p.rows_done) for p in reports])
        except Exception as error:  # the job's rows matter more than its live curve
            if not self._failed:
                logger.warning("live metrics not logged (the job goes on): %s", error)
            self._failed = True
            return
        self.steps_logged += len(reports)


def duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``, ``3700`` -> ``"1h01m"``, ``8`` -> ``"8s"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(progress: ProgressLike, label: str = "") -> str:
    """``[label] 40/100 rows, 1.30 images/s, 0 errors, ~46s left``; the time left is the rows
    still to do at the rate so far (left out until the rate and the total are known)."""
    total = progress.rows_total
    line = f"{progress.rows_done}/{total if total is not None else '?'} rows, {progress.images_per_s:.2f} images/s"
    line += f", {progress.errors} errors"
    rate = progress.rows_done / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
    if total is not None and rate > 0:
        line += f", ~{duration((total - progress.rows_done) / rate)} left"
    return f"[{label}] {line}" if label else line


class ProgressPrinter:
    """An ``on_progress`` callback that prints :func:`progress_line`, at most every
    ``interval_s`` seconds (and always the report that finishes the job)."""

    def __init__(self, label: str, interval_s: float = 5.0, write: Callable[[str], None] = print) -> None:
        self.label = label
        self.interval_s = interval_s
        self.write = write
        self._last = float("-inf")

    def __call__(self, progress: ProgressLike) -> None:
        now = time.monotonic()
        finished = progress.rows_total is not None and progress.rows_done >= progress.rows_total
        if finished or now - self._last >= self.interval_s:
            self._last = now
            self.write(progress_line(progress, self.label))


def sweep_label(index: int, total: int, name: str, started_s: float, now_s: float) -> str:
    """``setting 2 of 5: hired-0.2, sweep ~3m10s left`` (the settings still to run at the mean
    time of those done; the estimate is left out before one is done)."""
    label = f"setting {index + 1} of {total}: {name}"
    if index > 0:
        per_setting = (now_s - started_s) / index
        label += f", sweep ~{duration(per_setting * (total - index))} left"
    return label


def both(*callbacks: Callable[[ProgressLike], None] | None) -> Callable[[ProgressLike], None]:
    """One ``on_progress`` callback that calls each given one in turn (``None`` skipped)."""
    chosen = [callback for callback in callbacks if callback is not None]

    def call(progress: ProgressLike) -> None:
        for callback in chosen:
            callback(progress)

    return call
