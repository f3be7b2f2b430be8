"""A job's metrics, computed from its output rows and its actors' memory reports."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)


MIB = 2**20

# Columns job_metrics reads; a table without them is not a job's output.
_METRIC_COLUMNS = (
    "error",
    "visual_tokens",
    "generated_tokens",
    "ttft_s",
    "decode_s",
    "vision_s",
    "generate_s",
    "padding_fraction",
    "feature_bytes",
    "pixel_bytes",
)


def column_values(table: pa.Table, column: str) -> np.ndarray:
    """Non-null values of a column as float64."""
    return np.asarray(table[column].drop_null().to_numpy(), dtype=np.float64)


def job_metrics(
    table: pa.Table,
    wall_s: float,
    actor_stats: Sequence[Mapping[str, Any]],
    extra_metrics: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """A job's metrics from its output rows (one per input image, failed rows included).

    Rows count as failed when ``error`` is not null; the quality and latency numbers are over the
    successful rows only, and a metric with no value to stand on (every row failed) is left out.
    Percentiles interpolate linearly (numpy's default). Memory is in MiB.

    Metrics:
        ``images``, ``errors``, ``wall_s``;
        ``images_per_s`` (successful images / wall_s), ``generated_tokens_per_s``;
        ``ttft_p50_s``, ``ttft_p95_s``; ``latency_p50_s``, ``latency_p95_s`` (per image
        ``decode_s + vision_s + generate_s``);
        ``visual_tokens_mean``, ``visual_tokens_min``, ``visual_tokens_max``;
        ``padding_fraction_mean``, ``feature_bytes_mean``, ``pixel_bytes_mean`` (uint8 tiles
        from decode to the vision pool);
        per pool (``vision``, ``llm``): ``<pool>.actors``, ``<pool>.peak_host_mem_mb`` and
        ``<pool>.peak_accel_mem_mb`` (each actor's peak, summed over the pool: its footprint),
        ``<pool>.mean_host_mem_mb`` and ``<pool>.mean_accel_mem_mb`` (per actor); and
        ``peak_accel_mem_mb_max``, ``peak_host_mem_mb_max`` (the largest actor); all from
        ``actor_stats``, items as :func:`peak_memory_stats` returns (see :func:`actor_table`
        for the per-actor detail);
        and ``extra_metrics`` (e.g. accuracy) passed through.
    """
    if wall_s <= 0:
        raise ValueError(f"wall_s must be positive, got {wall_s}")
    missing = [name for name in _METRIC_COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(f"the output table lacks columns {missing}; see pipeline.batch.schema.OUTPUT_SCHEMA")
    ok = table.filter(pc.is_null(table["error"]))
    metrics: dict[str, float] = {
        "images": float(table.num_rows),
        "errors": float(table.num_rows - ok.num_rows),
        "wall_s": float(wall_s),
        "images_per_s": ok.num_rows / wall_s,
        "generated_tokens_per_s": float(column_values(ok, "generated_tokens").sum()) / wall_s,
    }
    ttft = column_values(ok, "ttft_s")
    if ttft.size:
        metrics["ttft_p50_s"], metrics["ttft_p95_s"] = (float(v) for v in np.percentile(ttft, [50, 95]))
    timed = ok.filter(
        pc.and_(pc.and_(pc.is_valid(ok["decode_s"]), pc.is_valid(ok["vision_s"])), pc.is_valid(ok["generate_s"]))
    )
    if timed.num_rows:
        latency = sum(column_values(timed, name) for name in ("decode_s", "vision_s", "generate_s"))
        metrics["latency_p50_s"], metrics["latency_p95_s"] = (float(v) for v in np.percentile(latency, [50, 95]))
    tokens = column_values(ok, "visual_tokens")
    if tokens.size:
        metrics.update(
            visual_tokens_mean=float(tokens.mean()),
            visual_tokens_min=float(tokens.min()),
            visual_tokens_max=float(tokens.max()),
        )
    for column in ("padding_fraction", "feature_bytes", "pixel_bytes"):
        values = column_values(ok, column)
        if values.size:
            metrics[f"{column}_mean"] = float(values.mean())
    metrics.update(_memory_metrics(actor_stats))
    clash = sorted(set(extra_metrics or {}) & set(metrics))
    if clash:
        raise ValueError(f"extra metrics {clash} would overwrite metrics computed from the output table")
    metrics.update({key: float(value) for key, value in (extra_metrics or {}).items()})
    return metrics


def actor_peaks(actor_stats: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each actor's peak memory in MiB, keyed by actor name: ``{"pool", "peak_accel_mem_mb",
    "peak_host_mem_mb"}``. Several reports from one actor (one per batch) keep the largest; the
    pool is the name's part before its first ``-`` (``vision-3299`` is in ``vision``)."""
    peaks: dict[str, dict[str, Any]] = {}
    for stats in actor_stats:
        try:
            name = str(stats["actor"])
            accel, host = stats["peak_accelerator_bytes"] / MIB, stats["peak_host_bytes"] / MIB
        except KeyError as error:
            raise ValueError(
                f"actor stats need 'actor', 'peak_accelerator_bytes' and 'peak_host_bytes' "
                f"(see peak_memory_stats); got keys {sorted(stats)}"
            ) from error
        known = peaks.setdefault(name, {"pool": name.split("-", 1)[0], "peak_accel_mem_mb": 0.0, "peak_host_mem_mb": 0.0})
        known["peak_accel_mem_mb"] = max(accel, known["peak_accel_mem_mb"])
        known["peak_host_mem_mb"] = max(host, known["peak_host_mem_mb"])
    return peaks


def actor_table(actor_stats: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Per-actor peaks as columns (``actor``, ``pool``, ``peak_accel_mem_mb``,
    ``peak_host_mem_mb``), for a table artifact: the detail the pool metrics sum up."""
    peaks = actor_peaks(actor_stats)
    columns: dict[str, list[Any]] = {"actor": list(peaks)}
    for key in ("pool", "peak_accel_mem_mb", "peak_host_mem_mb"):
        columns[key] = [stats[key] for stats in peaks.values()]
    return columns


def _memory_metrics(actor_stats: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per pool, keys every run of a job shares whatever its pool sizes (a key per actor would
    differ from run to run, and a 100-actor job would log 200 of them)."""
    peaks = actor_peaks(actor_stats)
    metrics: dict[str, float] = {}
    for pool in dict.fromkeys(stats["pool"] for stats in peaks.values()):
        members = [stats for stats in peaks.values() if stats["pool"] == pool]
        metrics[f"{pool}.actors"] = float(len(members))
        for kind in ("accel", "host"):
            values = [stats[f"peak_{kind}_mem_mb"] for stats in members]
            metrics[f"{pool}.peak_{kind}_mem_mb"] = float(sum(values))
            metrics[f"{pool}.mean_{kind}_mem_mb"] = float(sum(values) / len(values))
    if peaks:
        metrics["peak_accel_mem_mb_max"] = max(stats["peak_accel_mem_mb"] for stats in peaks.values())
        metrics["peak_host_mem_mb_max"] = max(stats["peak_host_mem_mb"] for stats in peaks.values())
    return metrics
