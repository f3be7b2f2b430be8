"""Measuring one request: peak host and accelerator memory, time to first token, throughput."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from hired_ops import DropConfig
from pipeline.data.images import decode_image
from pipeline.data.rows import row_bytes
from pipeline.data.sources import list_inputs
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM

logger = logging.getLogger(__name__)

_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
MIB = 2**20
_RESET_PEAK_RSS = "5"  # proc(5): writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS


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
def decode_exactly(model: torch.nn.Module, tokens: int | None) -> Iterator[None]:
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
    encoded = vlm.encode(pixels, drop, [prompt] * len(images))
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
decode_image(row_bytes(row.path, row.image_bytes, options), row.path) for row in rows
    ]


def batch_of(images: Sequence[Image.Image], size: int) -> list[Image.Image]:
    """``size`` images: the first ones, cycling through the list when it is shorter."""
    return [images[i % len(images)] for i in range(size)]

