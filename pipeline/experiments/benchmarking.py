"""The efficiency sweep behind ``hired benchmark``: throughput, time to first token and peak
memory for methods x budgets x batch sizes on one model, like the paper's Table 4.

Everything runs in this process on one :class:`pipeline.model.vlm.HiredVLM` (no Ray: a scheduler
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

import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from hired_ops import DropConfig
from pipeline.model.config import ModelConfig
from pipeline.model.generation import DEFAULT_PROMPT, GenerateOptions
from pipeline.model.loading import load_model
from pipeline.model.vlm import HiredVLM
from pipeline.tracking.live import sweep_label
from pipeline.tracking.naming import run_name
from pipeline.tracking.runs import KIND_TAG, TrackingConfig, start_job_run

from .bench_report import TIMERS, BenchReport, BenchResult, machine_description
from .measure import batch_of, decode_exactly, load_images, peak_memory, time_request
from .settings import TABLE_CSV, TABLE_MARKDOWN, Setting

logger = logging.getLogger(__name__)

SWEEP_KIND = "benchmark-sweep"
SETTING_KIND = "benchmark"


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark sweep. Validated at construction.

    Attributes:
        input: the images (a folder, glob, image or manifest, as ``hired caption`` takes); a
            batch of ``b`` takes the first ``b``, repeating them when there are fewer.
        settings: methods and budgets, e.g. from :func:`pipeline.experiments.settings.sweep`.
        batch_sizes: images per request.
        model: what to load, where, in what dtype.
        drop: the dropping every setting starts from (each replaces its method and budget).
        generate: decoding; ``max_new_tokens`` decode steps per request.
        repeats: timed requests per setting (the median is reported).
        warmup: untimed requests per setting first.
        ignore_eos: decode all max_new_tokens steps, so cells do equal work (see module doc).
        prompt: the instruction for every image.
        storage_options: passed to fsspec to read the input.
    """

    input: str
    settings: tuple[Setting, ...]
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    model: ModelConfig = field(default_factory=ModelConfig)
    drop: DropConfig = field(default_factory=DropConfig)
    generate: GenerateOptions = field(default_factory=lambda: GenerateOptions(max_new_tokens=16))
    repeats: int = 3
    warmup: int = 1
    ignore_eos: bool = True
    prompt: str = DEFAULT_PROMPT
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
        for setting in self.settings:
            setting.apply(self.drop)  # a setting the dropping refuses fails here, before any work


def run_benchmark(
    config: BenchConfig,
    tracking: TrackingConfig,
    on_result: Callable[[BenchResult], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> BenchReport:
    """Load the model once, measure every setting at every batch size, log and return them.

    Args:
        config: the sweep.
        tracking: where the runs go (``run_name`` names the parent); system metrics are turned off.
        on_result: called after each measurement, e.g. to print its numbers.
        on_start: called before each measurement with a label saying which of how many it is
            and the sweep's time left (see :func:`pipeline.tracking.live.sweep_label`).
    """
    model, processor = load_model(config.model.name, device=config.model.device, dtype=config.model.dtype)
    vlm = HiredVLM(model, processor)  # every request passes its setting's DropConfig
    images = load_images(config.input, config.storage_options, count=max(config.batch_sizes))
    dtype = str(vlm.dtype).removeprefix("torch.")
    report = BenchReport(config, machine_description(vlm.device), str(vlm.device), dtype, [])
    quiet = dataclasses.replace(tracking, log_system_metrics=False)
    common = {
        "model": config.model.name,
        "device": report.device,
        "dtype": report.dtype,
        "machine": report.machine,
        "dataset": config.input,
        "max_new_tokens": config.generate.max_new_tokens,
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
        quiet,
        run_name=tracking.run_name or run_name("benchmark sweep", None, None, config.model.name),
        tags={**tracking.tags, KIND_TAG: SWEEP_KIND},
    )
    cells = [(setting, batch_size) for setting in config.settings for batch_size in config.batch_sizes]
    started = time.monotonic()
    with start_job_run(parent_tracking, parent_params) as parent:
        for index, (setting, batch_size) in enumerate(cells):
            drop = setting.apply(config.drop)
            if on_start is not None:
                cell = f"{setting.name} b{batch_size}"
                on_start(sweep_label(index, len(cells), cell, started, time.monotonic()))
            child_tracking = dataclasses.replace(
                quiet,
                run_name=run_name("benchmark", setting.method, setting.budget, config.model.name, f"b{batch_size}"),
                tags={**tracking.tags, KIND_TAG: SETTING_KIND},
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



def measure(
    vlm: HiredVLM, images: Sequence[Image.Image], config: BenchConfig, setting: Setting, batch_size: int
) -> BenchResult:
    """Warm-up, then the timed repeats of one setting at one batch size, with their peak memory."""
    drop = setting.apply(config.drop)
    options = config.generate
    batch = batch_of(images, batch_size)
    result = BenchResult(setting, batch_size, memory_kind="cuda" if vlm.device.type == "cuda" else "host")
    try:
        with decode_exactly(vlm.model, config.generate.max_new_tokens if config.ignore_eos else None):
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
