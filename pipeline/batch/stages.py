"""The Ray Data stages of a job: decode (CPU tasks) -> vision (actor pool) -> LLM (actor pool).

Batches are dicts of numpy columns. A row that fails anywhere keeps flowing with its ``error``
set and empty arrays, so the writer sees every input exactly once. Between the vision and LLM
pools travel only the kept pre-projector features (``enc_*`` columns).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from pipeline.data.images import DecodeLimits, decode_image
from pipeline.data.rows import row_bytes
from pipeline.model.encoded import TRANSFER_DTYPES, EncodedImage
from pipeline.model.engine import Engine, EngineRequest
from pipeline.model.generation import Generation
from pipeline.model.pixels import uint8_tiles
from pipeline.model.replica import load_half
from pipeline.tracking.memory import peak_memory_stats

from .config import JobConfig

logger = logging.getLogger(__name__)


def describe_error(error: BaseException) -> str:
    """One line for the ``error`` column: the exception type and its message."""
    return f"{type(error).__name__}: {error}"


def decode_batch(
    batch: dict[str, np.ndarray],
    image_processor: Any,
    limits: DecodeLimits,
    storage_options: dict | None,
) -> dict[str, np.ndarray]:
    """Read, decode and partition images (CPU). Adds ``pixel_values`` ``(P, 3, H, W)`` uint8 per
    row (normalised later, on the tower's device), ``pixel_bytes``, ``image_size`` ``(2,)``
    (height, width), ``error`` and ``decode_s``."""
    count = len(batch["id"])
    pixels, sizes, errors, seconds = [], [], [], []
    tile = None
    for i in range(count):
        start = time.perf_counter()
        path = str(batch["path"][i])
        try:
            inline = batch["image_bytes"][i] if "image_bytes" in batch else None
            if isinstance(inline, float) and np.isnan(inline):  # Arrow hands back a null as NaN
                inline = None
            image = decode_image(row_bytes(path, inline, storage_options), source=path, limits=limits)
            values = uint8_tiles(image_processor, image)
            tile = values.shape[-1]
            pixels.append(values)
            sizes.append(np.array([image.height, image.width], dtype=np.int32))
            errors.append(None)
        except Exception as error:  # one bad input must not stop the job
            pixels.append(None)
            sizes.append(np.zeros(2, dtype=np.int32))
            errors.append(describe_error(error))
        seconds.append(time.perf_counter() - start)
    # failed rows carry an empty tile stack of the same rank, so the column stays one tensor type
    tile = tile or 1
    empty = np.zeros((0, 3, tile, tile), dtype=np.uint8)
    out = {k: v for k, v in batch.items() if k != "image_bytes"}
    out["pixel_values"] = _column([p if p is not None else empty for p in pixels])
    out["pixel_bytes"] = np.array([p.nbytes if p is not None else 0 for p in pixels], dtype=np.int64)
    out["image_size"] = np.stack(sizes)
    out["error"] = np.array(errors, dtype=object)
    out["decode_s"] = np.array(seconds, dtype=np.float32)
    return out


def _errors(batch: dict[str, np.ndarray]) -> list[str | None]:
    """The batch's error column as str-or-None (Arrow may hand nulls back as None or NaN)."""
    return [value if isinstance(value, str) and value else None for value in batch["error"]]


def _column(arrays: list[np.ndarray]) -> np.ndarray:
    """An object column of per-row arrays (Ray stores ragged ones as variable-shaped tensors)."""
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def _isolating(run: Callable[[list[int]], list[Any]], indices: list[int]) -> dict[int, Any]:
    """Run a batch; if it fails, run its rows one by one so only the bad row fails.

    Returns per index either the result or the exception it raised.
    """
    try:
        return dict(zip(indices, run(indices)))
    except Exception as error:
        if len(indices) == 1:
            return {indices[0]: error}
        logger.warning("batch of %d failed (%s); retrying row by row", len(indices), describe_error(error))
        results: dict[int, Any] = {}
        for index in indices:
            results.update(_isolating(run, [index]))
        return results


class _ModelActor:
    """Shared set-up of the two actor stages: threads, model, and memory reporting."""

    role: str  # "vision" or "llm": names the actor and its bookkeeping columns
    half: str  # the part of the model the actor runs, for keep_half

    def __init__(self, config: JobConfig, threads: int) -> None:
        self.config = config
        self.vlm = load_half(config.model, config.drop, self.half, threads)
        self.name = f"{self.role}-{os.getpid()}"

    def bookkeeping_columns(self, count: int, started: float) -> dict[str, np.ndarray]:
        """Actor name, its peak memory so far, and the wall-clock span of this call (for the
        driver's memory metrics and pool-overlap accounting; not written to the output)."""
        stats = peak_memory_stats(self.name)
        return {
            f"{self.role}_span": np.tile(np.array([started, time.time()]), (count, 1)),
            f"{self.role}_actor": np.array([self.name] * count, dtype=object),
            f"{self.role}_peak_accel": np.full(count, stats["peak_accelerator_bytes"], dtype=np.int64),
            f"{self.role}_peak_host": np.full(count, stats["peak_host_bytes"], dtype=np.int64),
        }


class VisionStage(_ModelActor):
    """Vision tower + token dropping. Adds the ``enc_*`` columns and ``vision_s``."""

    role = "vision"
    half = "vision"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        called = time.time()
        count = len(batch["id"])
        errors = _errors(batch)
        ok = [i for i in range(count) if errors[i] is None]

        def encode(indices: list[int]) -> list[EncodedImage]:
            pixels = {
                "pixel_values": [torch.from_numpy(np.asarray(batch["pixel_values"][i])) for i in indices],
                "image_sizes": torch.from_numpy(np.stack([batch["image_size"][i] for i in indices])),
            }
            return self.vlm.encode(pixels)

        start = time.perf_counter()
        results = _isolating(encode, ok) if ok else {}
        share = (time.perf_counter() - start) / max(1, len(ok))
        encoded: list[EncodedImage | None] = [None] * count
        for i, result in results.items():
            if isinstance(result, Exception):
                errors[i] = describe_error(result)
            else:
                encoded[i] = result
        out = {k: v for k, v in batch.items() if k != "pixel_values"}
        out.update(self.encoded_columns(encoded))
        out["error"] = np.array(errors, dtype=object)
        out["vision_s"] = np.array([share if e is not None else 0.0 for e in encoded], dtype=np.float32)
        out.update(self.bookkeeping_columns(count, called))
        return out

    def encoded_columns(self, encoded: list[EncodedImage | None]) -> dict[str, np.ndarray]:
        """``enc_*`` columns; failed rows get empty arrays of the same rank and dtype."""
        width = next((e.features.shape[1] for e in encoded if e is not None), 1)
        dtype = TRANSFER_DTYPES[self.config.model.transfer_dtype]
        blank = EncodedImage(
            features=np.zeros((0, width), dtype=dtype),
            partition=np.zeros(0, np.int16),
            patch=np.zeros(0, np.int16),
            newline_after=np.zeros(0, bool),
            budgets=np.zeros(0, np.int32),
            available=np.zeros(0, np.int32),
            image_size=(0, 0),
            grid=(0, 0),
        )
        rows = [(e or blank).to_row() for e in encoded]
        return {key: _column([r[key] for r in rows]) for key in rows[0]}


class LLMStage(_ModelActor):
    """Projector, prompt assembly and generation with continuous batching: the call's rows go
    through one :class:`~pipeline.model.engine.Engine`, at most ``max_num_seqs`` at a time, and
    a row whose caption ends frees its slot for the next row at the next step."""

    role = "llm"
    half = "language"

    def __init__(self, config: JobConfig, threads: int) -> None:
        super().__init__(config, threads)
        self.options = config.generate
        self.engine = Engine(self.vlm, config.engine_limits)
        self.prompt_ids: dict[str, list[int]] = {}

    def ids(self, prompt: str) -> list[int]:
        """Token ids of a formatted prompt with its one image slot (cached per prompt)."""
        if prompt not in self.prompt_ids:
            self.prompt_ids[prompt] = self.vlm.prompt_ids(prompt)
        return self.prompt_ids[prompt]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        called = time.time()
        count = len(batch["id"])
        errors = _errors(batch)
        prompts = [str(p) for p in batch["prompt"]]
        # failed rows carry empty arrays, so every row has an EncodedImage to count from
        kept = [EncodedImage.from_row({k: batch[k][i] for k in batch if k.startswith("enc_")}) for i in range(count)]
        results: dict[int, Generation | BaseException] = {}
        requests = {}
        for i in range(count):
            if errors[i] is None:
                try:
                    requests[i] = EngineRequest(self.ids(prompts[i]), [kept[i]], self.options, partial(results.__setitem__, i))
                except Exception as error:  # noqa: BLE001 - a prompt that cannot be formatted fails its row
                    results[i] = error
        # shortest first: rows admitted together have similar lengths, so prefills carry little padding
        for i in sorted(requests, key=lambda i: (self.vlm.input_length(requests[i].ids, requests[i].images), i)):
            self.engine.submit(requests[i])
        self.engine.run()
        text: list[str | None] = [None] * count
        numbers = {name: np.zeros(count, dtype=np.float32) for name in ("ttft_s", "generate_s", "padding_fraction")}
        generated = np.zeros(count, dtype=np.int32)
        prompt_tokens = np.zeros(count, dtype=np.int32)
        for i, result in results.items():
            if isinstance(result, BaseException):
                errors[i] = describe_error(result)
                continue
            text[i] = result.text
            generated[i] = result.generated_tokens
            prompt_tokens[i] = result.prompt_tokens
            numbers["ttft_s"][i] = result.ttft_s
            numbers["generate_s"][i] = result.generate_s
            numbers["padding_fraction"][i] = result.padding_fraction
        # the features stay behind; the small index columns go on to the driver for figures
        out = {k: v for k, v in batch.items() if k != "enc_features"}
        out["text"] = np.array(text, dtype=object)
        out["error"] = np.array(errors, dtype=object)
        out["generated_tokens"] = generated
        out["prompt_tokens"] = prompt_tokens
        out.update(numbers)
        out["visual_tokens"] = np.array([e.num_tokens for e in kept], dtype=np.int32)
        out["sequence_tokens"] = np.array([e.sequence_length for e in kept], dtype=np.int32)
        out["available_tokens"] = np.array([e.available_tokens for e in kept], dtype=np.int32)
        out["partition_budgets"] = _column([e.budgets for e in kept])
        out["feature_bytes"] = np.array([e.features.nbytes for e in kept], dtype=np.int64)
        out.update(self.bookkeeping_columns(count, called))
        return out
