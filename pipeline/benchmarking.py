"""The efficiency sweep behind ``hired benchmark``: throughput, time to first token and peak
memory for methods x budgets x batch sizes on one model, like the paper's Table 4.

Everything runs in this process on one :class:`pipeline.engine.HiredVLM` (no Ray: a scheduler
between the stages would be part of what is timed). Per setting and batch size: ``warmup``
requests, then ``repeats`` timed requests, each reported as the median over the repeats.

**A request** is what a user of one model instance waits for: ``batch_size`` images (the input's
images in order, repeated when there are fewer) with one prompt each, run as

1. preprocess: the stock image processor (anyres grid choice, resize, pad, tiles; PIL -> tensors);
2. encode: vision tower with CLS capture, budget allocation and selection (``HiredVLM.encode``);
3. generate: projector, prompt assembly, one batched prefill and ``max_new_tokens`` decode steps
   (``HiredVLM.generate``).

**What each timer includes.** The images are read and decoded (file bytes -> RGB) once, before
any timer, so image decode is *not* included; everything from preprocessing on is.

* ``latency_s``: wall time of the whole request, steps 1-3.
* ``ttft_s``: from the start of preprocessing to the first generated token (the prefill's
  logits) -- the paper starts its clock before preprocessing too. For a batch this is the batch's
  first token, which all its images get at once.
* ``throughput``: generated tokens of the request (all images, counted up to an end-of-sequence
  token) / ``latency_s``. With ``ignore_eos`` (the default, as LLM benchmarks usually do) the end
  of sequence is masked for ``max_new_tokens`` steps, so every setting decodes the same number of
  tokens and the comparison is of equal work.
* ``preprocess_s``, ``encode_s``, ``generate_s``: the three steps.

**Peak memory**, measured over the timed repeats (after warm-up) of each setting alone:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; like the paper's
  numbers it includes the weights. ``mem_over_base_mb`` subtracts what was allocated before.
* CPU (Linux): the process's resident-set high-water mark (``VmHWM``), reset through
  ``/proc/self/clear_refs`` at the start of the setting, after freed heap is handed back to the
  OS (``malloc_trim``) so an earlier, larger setting does not leave its high-water mark behind.
  It includes the weights and the Python process; ``mem_over_base_mb`` is the growth over the
  resident set at the start of the setting, i.e. what the setting's requests needed. Elsewhere
  host memory is not reported.

**MLflow.** One parent run (tag ``hired.kind=benchmark-sweep``; the Table-4-style table as
``table.md`` and every number as ``table.csv``) and one child run per setting and batch size (tag
``hired.kind=benchmark``; params ``method``, ``budget``, ``batch_size``, ...; metrics named as
``hired compare`` reads them: ``generated_tokens_per_s``, ``ttft_p50_s``, ``latency_p50_s``,
``images_per_s``, ``visual_tokens_mean``, ``peak_accel_mem_mb_max`` or
``peak_host_mem_mb_max``). System metrics are off: their sampler would run in the measured process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from hired_ops import DropConfig

from .config import DEFAULT_PROMPT
from .engine import GenerateOptions, HiredVLM
from .evaluation import Setting, csv_text
from .images import decode_image
from .loading import DEFAULT_MODEL, load_model
from .sources import list_inputs, read_bytes
from .tracking import KIND_TAG, TrackingConfig, start_job_run

logger = logging.getLogger(__name__)

SWEEP_KIND = "benchmark-sweep"
SETTING_KIND = "benchmark"
TABLE_CSV = "table.csv"
TABLE_MARKDOWN = "table.md"
MIB = 2**20
TIMERS = (
    "Timers start at preprocessing (image processor on decoded RGB images; file read and image "
    "decode are excluded). TTFT: preprocessing start -> first generated token of the batch. "
    "Throughput: generated tokens / wall time of preprocess + vision encode and drop + prefill + "
    "decode. Medians over the timed repeats, after warm-up."
)
_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_RESET_PEAK_RSS = "5"  # proc(5): writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark sweep. Validated at construction.

    Attributes:
        input: the images (a folder, glob, image or manifest, as ``hired caption`` takes); a
            batch of ``b`` takes the first ``b``, repeating them when there are fewer.
        settings: methods and budgets, e.g. from :func:`pipeline.evaluation.sweep`.
        batch_sizes: images per request.
        model, device, dtype: what to load (``"auto"``: CUDA with bf16/fp16 when present).
        repeats: timed requests per setting (the median is reported); warmup: untimed ones first.
        max_new_tokens: decode steps per request; ignore_eos: decode all of them (see module doc).
        prompt: the instruction for every image.
        alpha, l_init, l_final, newlines, seed: the dropping, as in ``DropConfig``.
    """

    input: str
    settings: tuple[Setting, ...]
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    repeats: int = 3
    warmup: int = 1
    max_new_tokens: int = 16
    ignore_eos: bool = True
    prompt: str = DEFAULT_PROMPT
    alpha: float = 0.5
    l_init: int = 0
    l_final: int | None = None
    newlines: str = "auto"
    seed: int = 0
    storage_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.settings:
            raise ValueError("a benchmark needs at least one setting")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch sizes must be >= 1, got {list(self.batch_sizes)}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        object.__setattr__(self, "settings", tuple(self.settings))
        object.__setattr__(self, "batch_sizes", tuple(dict.fromkeys(self.batch_sizes)))
        self.generate_options()
        for setting in self.settings:
            self.drop_config(setting)

    def drop_config(self, setting: Setting) -> DropConfig:
        return DropConfig(
            method=setting.method,
            budget=setting.budget,
            alpha=self.alpha,
            l_init=self.l_init,
            l_final=self.l_final,
            newlines=self.newlines,
            seed=self.seed,
        )

    def generate_options(self) -> GenerateOptions:
        return GenerateOptions(max_new_tokens=self.max_new_tokens, seed=self.seed)


@dataclass(frozen=True)
class RequestTiming:
    """One timed request. Seconds; tokens summed over the batch."""

    preprocess_s: float
    encode_s: float
    generate_s: float
    ttft_s: float
    generated_tokens: int
    visual_tokens: float  # mean per image, newlines not counted
    prompt_tokens: float  # mean LLM input length per image, visual and text, no padding

    @property
    def latency_s(self) -> float:
        return self.preprocess_s + self.encode_s + self.generate_s

    @property
    def throughput(self) -> float:
        return self.generated_tokens / self.latency_s


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


# --------------------------------------------------------------------------------------------
# Peak memory of one setting
# --------------------------------------------------------------------------------------------


def _proc_status_kib(field_name: str) -> int:
    with open(_PROC_STATUS) as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{_PROC_STATUS} has no {field_name}")


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so the resident set is what is in use."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _reset_host_peak() -> bool:
    """Reset this process's resident-set high-water mark to its current resident set; False
    where the kernel offers no way to (not Linux, or a sandbox that forbids it)."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write(_RESET_PEAK_RSS)
    except OSError:
        return False
    return True


@dataclass
class _Peak:
    """Filled in by :func:`peak_memory` when its block ends (MiB; ``None`` when unmeasured)."""

    peak_mb: float | None = None
    over_base_mb: float | None = None


@contextmanager
def peak_memory(device: torch.device) -> Iterator[_Peak]:
    """Measure the peak memory of the block alone (see the module doc for what is counted)."""
    result = _Peak()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        result.peak_mb, result.over_base_mb = peak / MIB, (peak - base) / MIB
        return
    _release_free_heap()
    if not _reset_host_peak():
        logger.warning("peak host memory is not measured here: it needs Linux's %s", _CLEAR_REFS)
        yield result
        return
    base_kib = _proc_status_kib("VmRSS")
    yield result
    peak_kib = _proc_status_kib("VmHWM")
    result.peak_mb, result.over_base_mb = peak_kib / 1024, (peak_kib - base_kib) / 1024


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


@contextmanager
def _decode_exactly(model: torch.nn.Module, tokens: int | None) -> Iterator[None]:
    """Mask end-of-sequence for ``tokens`` decode steps (``None``: leave generation as is)."""
    config = model.generation_config
    saved = config.min_new_tokens
    if tokens is not None:
        config.min_new_tokens = tokens
    try:
        yield
    finally:
        config.min_new_tokens = saved


def time_request(
    vlm: HiredVLM, images: Sequence[Image.Image], prompt: str, drop: DropConfig, options: GenerateOptions
) -> RequestTiming:
    """Run one request (preprocess, encode, generate) and time its steps.

    Args:
        images: ``B`` decoded RGB images; prompt: the instruction for each.

    The encode step ends with its features on the host (``EncodedImage`` holds numpy), so its
    timer stops after the device finished; generate returns token ids on the host likewise.
    """
    start = time.perf_counter()
    pixels = vlm.preprocess(list(images))
    preprocessed = time.perf_counter()
    encoded = vlm.encode(pixels, drop)
    encoded_at = time.perf_counter()
    generations = vlm.generate(encoded, [prompt] * len(images), options)
    done = time.perf_counter()
    count = len(images)
    return RequestTiming(
        preprocess_s=preprocessed - start,
        encode_s=encoded_at - preprocessed,
        generate_s=done - encoded_at,
        # every image of a batch gets its first token from the same prefill
        ttft_s=encoded_at - start + generations[0].ttft_s,
        generated_tokens=sum(g.generated_tokens for g in generations),
        visual_tokens=sum(e.num_tokens for e in encoded) / count,
        prompt_tokens=sum(g.prompt_tokens for g in generations) / count,
    )


def load_images(
    uri: str, storage_options: Mapping[str, Any] | None = None, count: int | None = None
) -> list[Image.Image]:
    """The first ``count`` images of ``uri`` (all when ``None``), decoded to RGB."""
    options = dict(storage_options) if storage_options else None
    rows = list_inputs(uri, options, limit=count)
    return [
        decode_image(row.image_bytes if row.image_bytes is not None else read_bytes(row.path, options), row.path)
        for row in rows
    ]


def batch_of(images: Sequence[Image.Image], size: int) -> list[Image.Image]:
    """``size`` images: the first ones, cycling through the list when it is shorter."""
    return [images[i % len(images)] for i in range(size)]


def measure(
    vlm: HiredVLM, images: Sequence[Image.Image], config: BenchConfig, setting: Setting, batch_size: int
) -> BenchResult:
    """Warm-up, then the timed repeats of one setting at one batch size, with their peak memory."""
    drop = config.drop_config(setting)
    options = config.generate_options()
    batch = batch_of(images, batch_size)
    result = BenchResult(setting, batch_size, memory_kind="cuda" if vlm.device.type == "cuda" else "host")
    try:
        with _decode_exactly(vlm.model, config.max_new_tokens if config.ignore_eos else None):
            for _ in range(config.warmup):
                time_request(vlm, batch, config.prompt, drop, options)
            with peak_memory(vlm.device) as peak:
                result.timings = [time_request(vlm, batch, config.prompt, drop, options) for _ in range(config.repeats)]
    except torch.OutOfMemoryError:
        # the paper's Table 4 has such cells too (full at batch 4): a finding, not a failure
        logger.warning("%s at batch %d ran out of memory", setting.name, batch_size)
        result.timings, result.out_of_memory = [], True
        gc.collect()
        if vlm.device.type == "cuda":
            torch.cuda.empty_cache()
        return result
    result.peak_memory_mb, result.mem_over_base_mb = peak.peak_mb, peak.over_base_mb
    return result


# --------------------------------------------------------------------------------------------
# The sweep and its tables
# --------------------------------------------------------------------------------------------


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
                f"Model `{c.model}` on {self.device} ({self.dtype}); {self.machine}. "
                f"{c.max_new_tokens} new tokens per image ({decoding}), "
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


def run_benchmark(
    config: BenchConfig,
    tracking: TrackingConfig,
    on_result: Callable[[BenchResult], None] | None = None,
) -> BenchReport:
    """Load the model once, measure every setting at every batch size, log and return them.

    Args:
        config: the sweep.
        tracking: where the runs go (``run_name`` names the parent); system metrics are turned off.
        on_result: called after each measurement, e.g. to print progress.
    """
    model, processor = load_model(config.model, device=config.device, dtype=config.dtype, seed=config.seed)
    vlm = HiredVLM(model, processor)  # every request passes its setting's DropConfig
    images = load_images(config.input, config.storage_options, count=max(config.batch_sizes))
    dtype = str(vlm.dtype).removeprefix("torch.")
    report = BenchReport(config, machine_description(vlm.device), str(vlm.device), dtype, [])
    quiet = dataclasses.replace(tracking, log_system_metrics=False)
    common = {
        "model": config.model,
        "device": report.device,
        "dtype": report.dtype,
        "machine": report.machine,
        "dataset": config.input,
        "max_new_tokens": config.max_new_tokens,
        "ignore_eos": config.ignore_eos,
        "repeats": config.repeats,
        "warmup": config.warmup,
        "prompt": config.prompt,
    }
    parent_params = {
        **common,
        "methods": ",".join(dict.fromkeys(s.method for s in config.settings)),
        "budgets": ",".join(dict.fromkeys(s.budget for s in config.settings if s.budget is not None)),
        "batch_sizes": ",".join(map(str, config.batch_sizes)),
        "timers": TIMERS,
    }
    parent_tracking = dataclasses.replace(
        quiet, run_name=tracking.run_name or "benchmark", tags={**tracking.tags, KIND_TAG: SWEEP_KIND}
    )
    with start_job_run(parent_tracking, parent_params) as parent:
        for setting in config.settings:
            drop = config.drop_config(setting)
            for batch_size in config.batch_sizes:
                child_tracking = dataclasses.replace(
                    quiet, run_name=f"{setting.name}-b{batch_size}", tags={**tracking.tags, KIND_TAG: SETTING_KIND}
                )
                params = {
                    **common,
                    "method": setting.method,
                    "budget": setting.budget,
                    "batch_size": batch_size,
                    "alpha": drop.alpha,
                    "l_init": drop.l_init,
                    "l_final": drop.l_final,
                    "newlines": drop.newlines,
                }
                with start_job_run(child_tracking, params, parent_run_id=parent.run_id) as run:
                    result = measure(vlm, images, config, setting, batch_size)
                    result.run_id = run.run_id
                    run.log_metrics(result.metrics())
                report.results.append(result)
                if on_result is not None:
                    on_result(result)
        report.parent_run_id = parent.run_id
        parent.log_text(report.to_csv(), TABLE_CSV)
        parent.log_text(report.markdown() + "\n", TABLE_MARKDOWN)
    return report
