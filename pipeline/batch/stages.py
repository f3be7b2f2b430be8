"""The Ray Data stages of a processor and a job: decode (CPU tasks) -> vision (actor pool) -> LLM
(actor pool).

Decode takes the user's rows as Arrow (``image``, ``prompt``, anything else packed untouched:
:mod:`.columns`); after it, batches are dicts of numpy columns. A row that fails anywhere keeps
flowing with its ``error`` set and empty arrays, so every input yields exactly one output row.
Between the vision and LLM pools travel only the kept pre-projector features (``enc_*`` columns).
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.data.image_values import image_source, load_image
from pipeline.model.encoded import TRANSFER_DTYPES, EncodedImage
from pipeline.model.engine import Engine, EngineRequest
from pipeline.model.generation import Generation
from pipeline.model.pixels import uint8_tiles
from pipeline.model.replica import load_half
from pipeline.tracking.memory import peak_memory_stats

from .columns import CARRY_COLUMN, pack_columns
from .config import HiredProcessorConfig

logger = logging.getLogger(__name__)

# the input columns the stages read: the image in any form, and the instruction
IMAGE_COLUMN = "image"
PROMPT_COLUMN = "prompt"


def describe_error(error: BaseException) -> str:
    """One line for the ``error`` column: the exception type and its message."""
    return f"{type(error).__name__}: {error}"


def _numpy_column(table: pa.Table, name: str) -> np.ndarray | None:
    """One column as Ray hands it to a numpy stage (tensors as arrays, structs as dicts)."""
    if name not in table.column_names:
        return None
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(table.select([name])).to_numpy(name)


def decode_batch(table: pa.Table, image_processor: Any, config: HiredProcessorConfig) -> dict[str, np.ndarray]:
    """Read, decode and partition images (CPU), from a batch of the user's rows.

    Reads the ``image`` column (its forms: :func:`pipeline.data.image_values.load_image`) and
    the ``prompt`` column (missing or empty: ``config.prompt``). Returns ``prompt``,
    ``pixel_values`` ``(P, 3, H, W)`` uint8 per row (normalised later, on the tower's device),
    ``pixel_bytes``, ``image_size`` ``(2,)`` (height, width), ``error``, ``decode_s``, and every
    other column packed untouched (:mod:`.columns`; ``image`` only if ``config.keep_image``).
    """
    count = table.num_rows
    images = _numpy_column(table, IMAGE_COLUMN)
    names = next((table.column(c).to_pylist() for c in ("id", "path") if c in table.column_names), None)
    pixels, sizes, errors, seconds = [], [], [], []
    tile = None
    for i in range(count):
        start = time.perf_counter()
        value = None if images is None else images[i]
        source = image_source(value, str(names[i]) if names is not None else f"row {i}")
        try:
            image = load_image(value, source, config.storage_options, config.decode)
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
    prompts = table.column(PROMPT_COLUMN).to_pylist() if PROMPT_COLUMN in table.column_names else [None] * count
    carried = [n for n in table.column_names if n != PROMPT_COLUMN and (n != IMAGE_COLUMN or config.keep_image)]
    out: dict[str, np.ndarray] = {CARRY_COLUMN: pack_columns(table.select(carried))} if carried else {}
    out[PROMPT_COLUMN] = np.array([p if isinstance(p, str) and p else config.prompt for p in prompts], dtype=object)
    out["pixel_values"] = _column([p if p is not None else empty for p in pixels])
    out["pixel_bytes"] = np.array([p.nbytes if p is not None else 0 for p in pixels], dtype=np.int64)
    out["image_size"] = np.stack(sizes) if sizes else np.zeros((0, 2), np.int32)
    out["error"] = np.array(errors, dtype=object)
    out["decode_s"] = np.array(seconds, dtype=np.float32)
    return out


def batch_rows(batch: dict[str, np.ndarray]) -> int:
    """Rows in a numpy batch of the stages (every one has ``error``)."""
    return len(batch["error"])


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
    """Shared set-up of the two actor stages: threads, model, and the actor's name."""

    role: str  # "vision" or "llm": names the actor and its bookkeeping columns
    half: str  # the part of the model the actor runs, for keep_half

    def __init__(self, config: HiredProcessorConfig, threads: int) -> None:
        self.config = config
        self.vlm = load_half(config.model, config.drop, self.half, threads)
        self.name = f"{self.role}-{os.getpid()}"


class VisionStage(_ModelActor):
    """Vision tower + token dropping. Adds the ``enc_*`` columns and ``vision_s``."""

    role = "vision"
    half = "vision"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        called = time.time()
        count = batch_rows(batch)
        errors = _errors(batch)
        ok = [i for i in range(count) if errors[i] is None]

        def encode(indices: list[int]) -> list[EncodedImage]:
            pixels = {
                "pixel_values": [torch.from_numpy(np.asarray(batch["pixel_values"][i])) for i in indices],
                "image_sizes": torch.from_numpy(np.stack([batch["image_size"][i] for i in indices])),
            }
            # each row's own prompt: an instruction-aware selection keeps that row's tokens
            return self.vlm.encode(pixels, prompts=[str(batch[PROMPT_COLUMN][i]) for i in indices])

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

    def bookkeeping_columns(self, count: int, started: float) -> dict[str, np.ndarray]:
        """Actor name, its peak memory so far, and the wall-clock span of this call, per row, for
        the LLM stage's report (a job's memory metrics and pool-overlap accounting)."""
        stats = peak_memory_stats(self.name)
        return {
            f"{self.role}_span": np.tile(np.array([started, time.time()]), (count, 1)),
            f"{self.role}_actor": np.array([self.name] * count, dtype=object),
            f"{self.role}_peak_accel": np.full(count, stats["peak_accelerator_bytes"], dtype=np.int64),
            f"{self.role}_peak_host": np.full(count, stats["peak_host_bytes"], dtype=np.int64),
        }

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

    def __init__(self, config: HiredProcessorConfig, threads: int, figures: int | None = None) -> None:
        """``figures``: add a job's ``report`` column (see :meth:`report`) with up to this many
        figure rows per batch; None, as in a processor, adds none."""
        super().__init__(config, threads)
        self.figures = figures
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
        count = batch_rows(batch)
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
        out = {k: batch[k] for k in (CARRY_COLUMN, "prompt", "pixel_bytes", "decode_s", "vision_s") if k in batch}
        out["generated_text"] = np.array(text, dtype=object)
        out["error"] = np.array(errors, dtype=object)
        out["generated_tokens"] = generated
        out["prompt_tokens"] = prompt_tokens
        out.update(numbers)
        out.update(self.accounting_columns(kept, np.asarray([np.asarray(s) for s in batch["image_size"]]).reshape(count, 2)))
        if self.figures is not None:
            out["report"] = self.report(batch, errors, called)
        return out

    def accounting_columns(self, kept: list[EncodedImage], sizes: np.ndarray) -> dict[str, np.ndarray]:
        """What each row cost and kept: the setting, visual token counts, feature bytes, size."""
        count = len(kept)
        budget = None if self.config.drop.budget is None else str(self.config.drop.budget)
        return {
            "method": np.array([self.config.drop.method] * count, dtype=object),
            "budget": np.array([budget] * count, dtype=object),
            "visual_tokens": np.array([e.num_tokens for e in kept], dtype=np.int32),
            "sequence_tokens": np.array([e.sequence_length for e in kept], dtype=np.int32),
            "available_tokens": np.array([e.available_tokens for e in kept], dtype=np.int32),
            "partition_budgets": _column([np.asarray(e.budgets, dtype=np.int32) for e in kept]),
            "feature_bytes": np.array([e.features.nbytes for e in kept], dtype=np.int64),
            "image_height": sizes[:, 0].astype(np.int32),
            "image_width": sizes[:, 1].astype(np.int32),
        }

    def report(self, batch: dict[str, np.ndarray], errors: list[str | None], called: float) -> np.ndarray:
        """The batch's bookkeeping for a job's driver, pickled on its first row (None on the
        others): both pools' call spans and actor peak memory, and up to ``figures`` successful
        rows as (carried columns, their ``enc_*`` index columns) for kept-patch figures."""
        spans = {"vision": sorted({tuple(s) for s in np.asarray(batch["vision_span"]).tolist()}), "llm": [(called, time.time())]}
        peaks: dict[str, list[int]] = {}
        for name, accel, host in zip(batch["vision_actor"], batch["vision_peak_accel"], batch["vision_peak_host"]):
            old = peaks.setdefault(str(name), [0, 0])
            peaks[str(name)] = [max(old[0], int(accel)), max(old[1], int(host))]
        stats = peak_memory_stats(self.name)
        peaks[self.name] = [stats["peak_accelerator_bytes"], stats["peak_host_bytes"]]
        ok = [i for i, error in enumerate(errors) if error is None][: self.figures]
        figures = [
            (batch[CARRY_COLUMN][i] if CARRY_COLUMN in batch else None,
             {k: np.asarray(batch[k][i]) for k in batch if k.startswith("enc_") and k != "enc_features"})
            for i in ok
        ]
        column = np.empty(len(errors), dtype=object)
        if len(column):
            column[0] = pickle.dumps({"spans": spans, "peaks": peaks, "figures": figures})
        return column
