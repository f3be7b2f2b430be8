"""The tables of a benchmark sweep: Table-4-style cells, ratios against full tokens, every number."""

from __future__ import annotations

import logging
import os
import platform
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .measure import MIB, RequestTiming
from .settings import Setting, csv_text

if TYPE_CHECKING:
    from .benchmarking import BenchConfig

logger = logging.getLogger(__name__)


TIMERS = (
    "Timers start at preprocessing (image processor on decoded RGB images; file read and image "
    "decode are excluded). TTFT: preprocessing start -> first generated token of the batch. "
    "Throughput: generated tokens / wall time of preprocess + vision encode and drop + prefill + "
    "decode. Medians over the timed repeats, after warm-up."
)


@dataclass
class BenchResult:
    """One setting at one batch size: medians of its timed requests, and its peak memory.

    ``memory_kind`` is ``"cuda"`` (torch's allocations on the GPU) or ``"host"`` (the process's
    resident set). ``peak_memory_mb`` / ``mem_over_base_mb`` are ``None`` where they cannot be
    measured, and every median is ``None`` when the setting ran out of memory (``out_of_memory``).
    """

    setting: Setting
    batch_size: int
    memory_kind: str
    timings: list[RequestTiming] = field(default_factory=list)
    peak_memory_mb: float | None = None
    mem_over_base_mb: float | None = None
    out_of_memory: bool = False
    run_id: str | None = None

    def median(self, name: str) -> float | None:
        if not self.timings:
            return None
        return statistics.median(float(getattr(t, name)) for t in self.timings)

    def metrics(self) -> dict[str, float]:
        """MLflow metrics. Those ``hired compare`` reads carry its names: ``generated_tokens_per_s``,
        ``ttft_p50_s``, ``latency_p50_s``, ``images_per_s``, ``visual_tokens_mean`` and
        ``peak_accel_mem_mb_max`` / ``peak_host_mem_mb_max``."""
        if self.out_of_memory:
            return {"out_of_memory": 1.0}
        latency = self.median("latency_s")
        metrics = {
            "generated_tokens_per_s": self.median("throughput"),
            "ttft_p50_s": self.median("ttft_s"),
            "latency_p50_s": latency,
            "images_per_s": self.batch_size / latency,
            "preprocess_s": self.median("preprocess_s"),
            "encode_s": self.median("encode_s"),
            "generate_s": self.median("generate_s"),
            "generated_tokens": self.median("generated_tokens"),
            "visual_tokens_mean": self.median("visual_tokens"),
            "prompt_tokens_mean": self.median("prompt_tokens"),
        }
        if self.peak_memory_mb is not None:
            peak = "peak_accel_mem_mb_max" if self.memory_kind == "cuda" else "peak_host_mem_mb_max"
            metrics[peak] = self.peak_memory_mb
            metrics["mem_over_base_mb"] = self.mem_over_base_mb
        return metrics


def machine_description(device: torch.device) -> str:
    """CPU model, cores, memory, torch threads and version; the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass  # not Linux: platform's name will do
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    text = (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


@dataclass
class BenchReport:
    """A finished sweep: one :class:`BenchResult` per setting and batch size."""

    config: BenchConfig
    machine: str
    device: str
    dtype: str
    results: list[BenchResult]
    parent_run_id: str | None = None

    def result(self, setting: Setting, batch_size: int) -> BenchResult | None:
        return next((r for r in self.results if r.setting == setting and r.batch_size == batch_size), None)

    def rows(self) -> list[dict[str, Any]]:
        """Every number, one dict per setting and batch size (times in s, memory in MiB)."""
        rows = []
        for r in self.results:
            metrics = r.metrics()
            rows.append(
                {
                    "setting": r.setting.name,
                    "method": r.setting.method,
                    "budget": r.setting.budget or "",
                    "batch_size": r.batch_size,
                    "visual_tokens": metrics.get("visual_tokens_mean"),
                    "prompt_tokens": metrics.get("prompt_tokens_mean"),
                    "generated_tokens": metrics.get("generated_tokens"),
                    "throughput_tok_s": metrics.get("generated_tokens_per_s"),
                    "ttft_s": metrics.get("ttft_p50_s"),
                    "latency_s": metrics.get("latency_p50_s"),
                    "preprocess_s": metrics.get("preprocess_s"),
                    "encode_s": metrics.get("encode_s"),
                    "generate_s": metrics.get("generate_s"),
                    "peak_memory_mb": r.peak_memory_mb,
                    "mem_over_base_mb": r.mem_over_base_mb,
                    "memory_kind": r.memory_kind,
                    "out_of_memory": r.out_of_memory,
                    "run_id": r.run_id or "",
                }
            )
        return rows

    def to_csv(self) -> str:
        return csv_text(self.rows())

    def table4(self) -> str:
        """The paper's Table 4 layout: a row per batch size, a column per setting, cells
        ``throughput tok/s / TTFT s / peak memory GB``."""
        settings = self.config.settings
        lines = [
            "| Batch | " + " | ".join(s.label for s in settings) + " |",
            "|---|" + "---|" * len(settings),
        ]
        for batch_size in self.config.batch_sizes:
            cells = [_table4_cell(self.result(s, batch_size)) for s in settings]
            lines.append(f"| {batch_size} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def details(self) -> str:
        """Every setting's numbers as a markdown table."""
        header = [
            "setting", "batch", "visual tokens", "tok/s", "TTFT s", "latency s",
            "preprocess s", "encode s", "generate s", "peak MiB", "over base MiB",
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows():
            values = [
                row["visual_tokens"], row["throughput_tok_s"], row["ttft_s"], row["latency_s"],
                row["preprocess_s"], row["encode_s"], row["generate_s"], row["peak_memory_mb"], row["mem_over_base_mb"],
            ]
            cells = [row["setting"], str(row["batch_size"]), *(_number(v) for v in values)]
            if row["out_of_memory"]:
                cells[2:] = ["out of memory"] + [""] * (len(cells) - 3)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def ratios(self, baseline: Setting = Setting("full")) -> str:
        """Each setting against ``baseline`` at the same batch size: throughput, TTFT, peak memory
        and memory over base, as setting / baseline (TTFT below 1 is faster)."""
        header = ["setting", "batch", "throughput x", "TTFT x", "peak memory x", "memory over base x"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        names = ("generated_tokens_per_s", "ttft_p50_s", "peak", "mem_over_base_mb")
        for batch_size in self.config.batch_sizes:
            base = self.result(baseline, batch_size)
            if base is None or base.out_of_memory:
                continue
            for setting in self.config.settings:
                other = self.result(setting, batch_size)
                if setting == baseline or other is None or other.out_of_memory:
                    continue
                cells = [_ratio(_value(other, name), _value(base, name)) for name in names]
                lines.append(f"| {setting.label} | {batch_size} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        """Everything a reader needs: setup, the Table-4 layout, ratios, details, timers."""
        c = self.config
        full = Setting("full") in c.settings
        decoding = "end of sequence masked" if c.ignore_eos else "stopping at end of sequence"
        return "\n\n".join(
            [
                f"Model `{c.model.name}` on {self.device} ({self.dtype}); {self.machine}. "
                f"{c.generate.max_new_tokens} new tokens per image ({decoding}), "
                f"{c.warmup} warm-up + {c.repeats} timed requests per cell, medians. Images: `{c.input}`.",
                "Throughput (generated tok/s) / TTFT (s) / peak memory (GB):\n\n" + self.table4(),
                *(["Against full at the same batch size (setting / full):\n\n" + self.ratios()] if full else []),
                "Details:\n\n" + self.details(),
                TIMERS,
            ]
        )


def _value(result: BenchResult, name: str) -> float | None:
    return result.peak_memory_mb if name == "peak" else result.metrics().get(name)


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _table4_cell(result: BenchResult | None) -> str:
    if result is None:
        return "-"
    if result.out_of_memory:
        return "out of memory"
    memory = "-" if result.peak_memory_mb is None else f"{result.peak_memory_mb * MIB / 1e9:.2f}"
    return f"{result.median('throughput'):.2f} / {result.median('ttft_s'):.2f} / {memory}"
