"""The two model deployments, each holding one half of the model and batching with
``@serve.batch``: ``HiredVision`` (tower + dropping) and ``HiredLLM`` (projector + generation)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from PIL import Image
from ray import serve

from hired_ops import DropConfig
from pipeline.model.encoded import EncodedImage
from pipeline.model.generation import GenerateOptions
from pipeline.model.replica import load_half, torch_threads
from pipeline.model.text_stream import TextStream, truncate_at_stop

from .config import DeploymentResources, ServeConfig

T = TypeVar("T")


logger = logging.getLogger("ray.serve")


class BatchStats:
    """Counts of batches by size, for logs and ``/v1/stats``."""

    def __init__(self) -> None:
        self.by_size: Counter[int] = Counter()

    def record(self, size: int) -> None:
        self.by_size[size] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "batches": sum(self.by_size.values()),
            "requests": sum(size * n for size, n in self.by_size.items()),
            "max_batch_size": max(self.by_size, default=0),
            "by_size": {str(size): n for size, n in sorted(self.by_size.items())},
        }


def _group(keys: Sequence[T]) -> dict[T, list[int]]:
    """Indices of equal keys, first-seen order: requests that can share one batched call."""
    groups: dict[T, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


class _ModelReplica:
    """Shared set-up of the two model deployments: one model, one compute thread, batch stats."""

    role = ""
    batched: tuple[str, ...] = ()  # the @serve.batch methods, sized from the config

    def __init__(self, config: ServeConfig, resources: DeploymentResources, half: str) -> None:
        self.config = config
        self.vlm = load_half(config.model, config.drop, half, resources.num_cpus)
        self.max_visual_tokens = self.vlm.geometry.max_tokens
        config.budget_range(self.max_visual_tokens)  # a bad operator range fails the deployment
        # The model is not thread-safe: one thread runs every batch, so the event loop stays free
        # to queue the next batch while this one computes.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hired-{self.role}")
        for name in self.batched:
            getattr(self, name).set_max_batch_size(config.max_batch_size)
            getattr(self, name).set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()
        logger.info(
            "%s replica ready: %s on %s, %d torch threads",
            self.role, config.model.name, self.vlm.device, torch_threads(config.model, resources.num_cpus),
        )

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._compute, fn)

    def _record(self, size: int, detail: str) -> None:
        with self._stats_lock:
            self.stats.record(size)
        logger.info("%s batch of %d request(s): %s", self.role, size, detail)

    def describe(self) -> dict[str, Any]:
        """Model facts the ingress validates against, plus this replica's batch stats."""
        return {"max_visual_tokens": self.max_visual_tokens, "batches": self.stats.snapshot()}


def _raise_if_error(value: T | BaseException) -> T:
    if isinstance(value, BaseException):
        raise value
    return value


@serve.deployment
class HiredVision(_ModelReplica):
    """Vision tower + token dropping, batched. Returns ``EncodedImage.to_row()`` dicts (numpy)."""

    role = "vision"
    batched = ("_encode_batch",)

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config, config.vision, "vision")

    async def encode(self, image: Image.Image, drop: DropConfig) -> dict[str, Any]:
        """One image's kept tokens; ``features`` is ``(K, D)`` in the transfer dtype."""
        return _raise_if_error(await self._encode_batch(image, drop))

    @serve.batch()  # sized from the ServeConfig in _ModelReplica.__init__
    async def _encode_batch(self, images: list[Image.Image], drops: list[DropConfig]) -> list[dict[str, Any] | BaseException]:
        groups = _group(drops)
        self._record(len(images), f"{len(groups)} drop config(s)")
        results: list[dict[str, Any] | BaseException] = [None] * len(images)  # type: ignore[list-item]
        for drop, indices in groups.items():
            # A failure fails its own group only; the other requests in the batch still answer.
            try:
                encoded = await self._run(lambda: self.vlm.encode([images[i] for i in indices], drop))
                for i, enc in zip(indices, encoded):
                    results[i] = enc.to_row()
            except Exception as error:  # noqa: BLE001 - reported to each caller of the group
                logger.exception("vision group failed (%s)", drop)
                for i in indices:
                    results[i] = error
        return results


@serve.deployment
class HiredLLM(_ModelReplica):
    """Projector + batched generation from encoded images."""

    role = "llm"
    batched = ("_generate_batch", "_stream_batch")

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config, config.llm, "language")

    async def generate(self, row: dict[str, Any], prompt: str, options: GenerateOptions) -> dict[str, Any]:
        """The answer for one encoded image: text, token counts, whether a stop string cut it, timings."""
        return _raise_if_error(await self._generate_batch(row, prompt, options))

    @serve.batch()  # sized from the ServeConfig in _ModelReplica.__init__
    async def _generate_batch(
        self, rows: list[dict[str, Any]], prompts: list[str], options: list[GenerateOptions]
    ) -> list[dict[str, Any] | BaseException]:
        encoded = [EncodedImage.from_row(r) for r in rows]
        # Stop strings are applied here, after decoding, so requests that differ only in them
        # share a batched call and the answer can tell a stop-string cut from running out of tokens.
        groups = _group([dataclasses.replace(o, stop=()) for o in options])
        lengths = sorted({e.sequence_length for e in encoded})
        self._record(len(rows), f"{len(groups)} option group(s), visual lengths {lengths}")
        results: list[dict[str, Any] | BaseException] = [None] * len(rows)  # type: ignore[list-item]
        for opts, indices in groups.items():
            try:
                outputs = await self._run(
                    lambda: self.vlm.generate([encoded[i] for i in indices], [prompts[i] for i in indices], opts)
                )
            except Exception as error:  # noqa: BLE001 - reported to each caller of the group
                logger.exception("llm group failed (%s)", opts)
                for i in indices:
                    results[i] = error
                continue
            for i, out in zip(indices, outputs):
                text = truncate_at_stop(out.text, options[i].stop).strip()
                results[i] = {
                    "text": text,
                    "stopped": text != out.text,
                    "generated_tokens": out.generated_tokens,
                    "prompt_tokens": out.prompt_tokens,
                    "visual_tokens": encoded[i].num_tokens,
                    "ttft_s": out.ttft_s,
                    "generate_s": out.generate_s,
                }
        return results

    async def generate_stream(
        self, row: dict[str, Any], prompt: str, options: GenerateOptions
    ) -> AsyncIterator[dict[str, Any]]:
        """The answer for one encoded image as it is generated (call with ``.options(stream=True)``).

        Yields ``{"delta": str}`` events with new text, the last one also holding ``"answer"``:
        the dict :meth:`generate` returns, for a text that is the concatenation of the deltas.
        """
        async for event in self._stream_batch(row, prompt, options):
            if isinstance(event, BaseException):
                raise event
            if event["delta"] or "answer" in event:  # steps that add no text stay in this replica
                yield event

    @serve.batch()  # sized from the ServeConfig in _ModelReplica.__init__
    async def _stream_batch(
        self, rows: list[dict[str, Any]], prompts: list[str], options: list[GenerateOptions]
    ) -> AsyncIterator[list[dict[str, Any] | BaseException | type[StopIteration]]]:
        """Per decoding step, one item per request: an event, a failure, or ``StopIteration`` once
        its answer was sent (which ends that request's stream while the batch goes on)."""
        encoded = [EncodedImage.from_row(r) for r in rows]
        # grouped as in _generate_batch: stop strings are applied per request, by its TextStream
        groups = _group([dataclasses.replace(o, stop=()) for o in options])
        self._record(len(rows), f"streaming, {len(groups)} option group(s)")
        streams = [self.vlm.text_stream(o.stop) for o in options]
        loop = asyncio.get_running_loop()
        # (request indices, new tokens | None when the group is done | its failure, seconds since the group began)
        steps: asyncio.Queue[tuple[list[int], list[int] | BaseException | None, float]] = asyncio.Queue()

        def run_groups() -> None:
            # One job on the compute thread for the whole batch, the groups one after another:
            # the model stays on one thread, and the callbacks only hand tokens to the event loop.
            for opts, indices in groups.items():
                began = time.perf_counter()

                def post(payload: list[int] | BaseException | None, indices: list[int] = indices, began: float = began) -> None:
                    loop.call_soon_threadsafe(steps.put_nowait, (indices, payload, time.perf_counter() - began))

                try:
                    self.vlm.generate([encoded[i] for i in indices], [prompts[i] for i in indices], opts, on_tokens=post)
                except Exception as error:  # noqa: BLE001 - reported to each caller of the group
                    logger.exception("llm streaming group failed (%s)", opts)
                    post(error)
                else:
                    post(None)

        work = loop.run_in_executor(self._compute, run_groups)
        first_token_s: list[float | None] = [None] * len(rows)
        answered = [False] * len(rows)
        pending_groups = len(groups)
        while pending_groups:
            items: list[dict[str, Any] | BaseException | type[StopIteration]] = [
                StopIteration if answered[i] else {"delta": ""} for i in range(len(rows))
            ]
            # Every step that is waiting goes into one yield: when the replica falls behind the
            # model, messages per request stay one per yield instead of one per token.
            arrived = [await steps.get()]
            while not steps.empty():
                arrived.append(steps.get_nowait())
            for indices, payload, elapsed in arrived:
                if payload is None or isinstance(payload, BaseException):
                    pending_groups -= 1
                for position, i in enumerate(indices):
                    item = items[i]
                    if answered[i] or not isinstance(item, dict):
                        continue
                    stream = streams[i]
                    if isinstance(payload, BaseException):
                        items[i], answered[i] = payload, True
                        continue
                    if payload is None:  # the group ended: EOS or the token limit
                        item["delta"] += stream.finish()
                    else:
                        if first_token_s[i] is None:
                            first_token_s[i] = elapsed
                        item["delta"] += stream.push(payload[position])
                    if stream.done:
                        item["answer"] = self._streamed_answer(encoded[i], prompts[i], stream, first_token_s[i], elapsed)
                        answered[i] = True
            yield items
        # returns at once (posting the last group's end was the job's last act); awaiting it
        # retrieves the job's outcome so that nothing is left unobserved
        await work

    def _streamed_answer(
        self, encoded: EncodedImage, prompt: str, stream: TextStream, ttft_s: float | None, elapsed_s: float
    ) -> dict[str, Any]:
        """The :meth:`generate` answer dict for a finished stream."""
        return {
            "text": stream.sent,
            "stopped": stream.stopped,
            "generated_tokens": len(stream.ids),
            "prompt_tokens": self.vlm.prompt_tokens(encoded, prompt),
            "visual_tokens": encoded.num_tokens,
            "ttft_s": ttft_s if ttft_s is not None else elapsed_s,
            "generate_s": elapsed_s,
        }
