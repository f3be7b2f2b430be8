"""The two model deployments, each holding one half of the model and batching with
``@serve.batch``: ``HiredVision`` (tower + dropping) and ``HiredLLM`` (projector + generation)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from PIL import Image
from ray import serve

from hired_ops import DropConfig
from pipeline.model.encoded import EncodedImage
from pipeline.model.replica import load_half, torch_threads

from .config import DeploymentResources, ServeConfig
from .decoding import (
    BatchDecoder,
    BatchItem,
    Cancelled,
    LLMJob,
    group,
    logprobs_body,
    release_memory,
)
from .metrics import ServeMetrics

T = TypeVar("T")


logger = logging.getLogger("ray.serve")


class BatchStats:
    """Counts of batches by size, for logs and ``/v1/stats``."""

    def __init__(self) -> None:
        self.by_size: Counter[int] = Counter()
        self.cancelled = 0

    def record(self, size: int) -> None:
        self.by_size[size] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "batches": sum(self.by_size.values()),
            "requests": sum(size * n for size, n in self.by_size.items()),
            "max_batch_size": max(self.by_size, default=0),
            "by_size": {str(size): n for size, n in sorted(self.by_size.items())},
            "cancelled": self.cancelled,
        }


class _ModelReplica:
    """Shared set-up of the two model deployments: one model, one compute thread, batch stats."""

    role = ""
    batched: tuple[str, ...] = ()  # the @serve.batch methods, sized from the config

    def __init__(self, config: ServeConfig, resources: DeploymentResources, half: str) -> None:
        self.config = config
        threads = torch_threads(config.model, resources.num_cpus)
        self.vlm = load_half(config.model, config.drop, half, threads)
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
        self.metrics = ServeMetrics()
        logger.info(
            "%s replica ready: %s on %s, %d torch threads",
            self.role, config.model.name, self.vlm.device, threads,
        )

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._compute, fn)

    def _record(self, size: int, detail: str) -> None:
        with self._stats_lock:
            self.stats.record(size)
        self.metrics.batch_size.observe(size, tags={"side": self.role})
        logger.info("%s batch of %d request(s): %s", self.role, size, detail)

    def _cancelled(self) -> None:
        """Count a request whose caller went away."""
        with self._stats_lock:
            self.stats.cancelled += 1
        self.metrics.cancelled.inc()

    def describe(self) -> dict[str, Any]:
        """Model facts the ingress validates against, this replica's batch stats and its process
        id (for memory checks from outside)."""
        return {
            "max_visual_tokens": self.max_visual_tokens,
            "geometry": self.vlm.geometry,
            "batches": self.stats.snapshot(),
            "pid": os.getpid(),
        }


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
        groups = group(drops)
        self._record(len(images), f"{len(groups)} drop config(s)")
        return await self._run(lambda: self._encode_groups(images, groups))

    def _encode_groups(self, images: list[Image.Image], groups: dict[DropConfig, list[int]]) -> list[dict[str, Any] | BaseException]:
        results: list[dict[str, Any] | BaseException] = [None] * len(images)  # type: ignore[list-item]
        for drop, indices in groups.items():
            try:
                for i, enc in zip(indices, self.vlm.encode([images[i] for i in indices], drop)):
                    results[i] = enc.to_row()
            except Exception as error:  # noqa: BLE001 - reported to the callers below
                if len(indices) > 1:  # one image must not fail its batch-mates: each alone
                    for i in indices:
                        results[i] = self._encode_groups(images, {drop: [i]})[i]
                    continue
                logger.exception("vision request failed (%s)", drop)
                results[indices[0]] = error
        release_memory(self.vlm.device)
        return results


@serve.deployment
class HiredLLM(_ModelReplica):
    """Projector + batched generation from encoded images.

    A caller that goes away (its HTTP client disconnected, so Serve cancelled the call) sets its
    request's flag; the decoder finishes that row at the next step, or never starts it.
    """

    role = "llm"
    batched = ("_generate_batch", "_stream_batch")

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config, config.llm, "language")
        positions = int(self.vlm.model.config.get_text_config().max_position_embeddings)
        if config.max_model_len is not None and config.max_model_len > positions:
            raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's {positions} positions")
        self.max_model_len = config.max_model_len or positions

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"max_model_len": self.max_model_len}

    async def tokenize(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt ids of a conversation (chat template applied), off the compute thread."""
        return await asyncio.to_thread(self.vlm.chat_ids, messages)

    async def generate(self, job: LLMJob, *rows: dict[str, Any]) -> dict[str, Any]:
        """The answer for one request (``rows``: its encoded images): text, counts, timings."""
        item = BatchItem(job, [EncodedImage.from_row(r) for r in rows])
        try:
            return _raise_if_error(await self._generate_batch(item))
        except asyncio.CancelledError:
            item.cancel.set()
            self._cancelled()
            raise

    @serve.batch()  # sized from the ServeConfig in _ModelReplica.__init__
    async def _generate_batch(self, items: list[BatchItem]) -> list[dict[str, Any] | BaseException]:
        self._record(len(items), f"{len(group([i.job.group_key for i in items]))} option group(s)")
        answers: list[dict[str, Any] | BaseException] = [Cancelled()] * len(items)

        def decode() -> BatchDecoder:
            decoder = BatchDecoder(self.vlm, items, lambda i, text: None, answers.__setitem__)
            decoder.run()
            release_memory(self.vlm.device)
            return decoder

        decoder = await self._run(decode)
        for i, answer in enumerate(answers):
            wanted = items[i].job.top_logprobs is not None
            if wanted and isinstance(answer, dict) and i in decoder.generations:
                tokens = decoder.generations[i].logprobs[: answer["generated_tokens"]]
                answer["logprobs"] = logprobs_body(self.vlm, tokens)
        return answers

    async def generate_stream(self, job: LLMJob, *rows: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The answer for one request as it is generated (call with ``.options(stream=True)``).

        Yields ``{"delta": str}`` events with new text, the last one also holding ``"answer"``:
        the dict :meth:`generate` returns, for a text that is the concatenation of the deltas.
        """
        item = BatchItem(job, [EncodedImage.from_row(r) for r in rows])
        try:
            async for event in self._stream_batch(item):
                if isinstance(event, BaseException):
                    raise event
                if event["delta"] or "answer" in event:  # steps that add no text stay in this replica
                    yield event
        except (asyncio.CancelledError, GeneratorExit):  # cancelled, or the consumer closed the stream
            item.cancel.set()
            self._cancelled()
            raise

    @serve.batch()  # sized from the ServeConfig in _ModelReplica.__init__
    async def _stream_batch(
        self, items: list[BatchItem]
    ) -> AsyncIterator[list[dict[str, Any] | BaseException | type[StopIteration]]]:
        """Per decoding step, one item per request: an event, a failure, or ``StopIteration`` once
        its answer was sent (which ends that request's stream while the batch goes on)."""
        self._record(len(items), f"streaming, {len(group([i.job.group_key for i in items]))} option group(s)")
        loop = asyncio.get_running_loop()
        # (request index, new text | its answer | its failure), from the compute thread
        steps: asyncio.Queue[tuple[int, str | dict[str, Any] | BaseException]] = asyncio.Queue()

        def post(i: int, payload: str | dict[str, Any] | BaseException) -> None:
            loop.call_soon_threadsafe(steps.put_nowait, (i, payload))

        def decode() -> None:
            BatchDecoder(self.vlm, items, post, post).run()
            release_memory(self.vlm.device)

        work = loop.run_in_executor(self._compute, decode)
        answered = [False] * len(items)
        while not all(answered):
            events: list[dict[str, Any] | BaseException | type[StopIteration]] = [
                StopIteration if done else {"delta": ""} for done in answered
            ]
            # every step waiting goes into one yield: when the replica falls behind the model,
            # messages per request stay one per yield instead of one per token
            arrived = [await steps.get()]
            while not steps.empty():
                arrived.append(steps.get_nowait())
            for i, payload in arrived:
                event = events[i]
                if isinstance(payload, str) and isinstance(event, dict):
                    event["delta"] += payload
                elif isinstance(payload, BaseException):
                    events[i], answered[i] = payload, True
                elif isinstance(event, dict):
                    event["answer"], answered[i] = payload, True
            yield events
        await work  # retrieves the job's outcome, so that nothing is left unobserved
