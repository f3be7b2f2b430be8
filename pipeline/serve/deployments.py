"""The two model deployments, each holding one half of the model: ``HiredVision`` (tower +
dropping, batched with ``@serve.batch``) and ``HiredLLM`` (projector + generation, continuous
batching: requests join and leave the running batch at every decoding step)."""

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
from pipeline.model.engine import Engine
from pipeline.model.replica import load_half, torch_threads

from .config import DeploymentResources, ServeConfig
from .decoding import LLMItem, LLMJob, engine_request, group, release_memory
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

    def _record(self, size: int, detail: str | None = None) -> None:
        """Count a batch (for the LLM: one decoding step's rows); log it if ``detail`` is given."""
        with self._stats_lock:
            self.stats.record(size)
        self.metrics.batch_size.observe(size, tags={"side": self.role})
        if detail is not None:
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

    async def encode(self, image: Image.Image, drop: DropConfig, instruction: str | None = None) -> dict[str, Any]:
        """One image's kept tokens; ``features`` is ``(K, D)`` in the transfer dtype.
        ``instruction`` (the request's text about the image) reaches a selection that reads it."""
        return _raise_if_error(await self._encode_batch(image, drop, instruction))

    @serve.batch()  # sized from the ServeConfig in _ModelReplica.__init__
    async def _encode_batch(
        self, images: list[Image.Image], drops: list[DropConfig], instructions: list[str | None]
    ) -> list[dict[str, Any] | BaseException]:
        groups = group(drops)
        self._record(len(images), f"{len(groups)} drop config(s)")
        return await self._run(lambda: self._encode_groups(images, groups, instructions))

    def _encode_groups(
        self, images: list[Image.Image], groups: dict[DropConfig, list[int]], instructions: list[str | None]
    ) -> list[dict[str, Any] | BaseException]:
        results: list[dict[str, Any] | BaseException] = [None] * len(images)  # type: ignore[list-item]
        for drop, indices in groups.items():
            try:
                encoded = self.vlm.encode([images[i] for i in indices], drop, [instructions[i] for i in indices])
                for i, enc in zip(indices, encoded):
                    results[i] = enc.to_row()
            except Exception as error:  # noqa: BLE001 - reported to the callers below
                if len(indices) > 1:  # one image must not fail its batch-mates: each alone
                    for i in indices:
                        results[i] = self._encode_groups(images, {drop: [i]}, instructions)[i]
                    continue
                logger.exception("vision request failed (%s)", drop)
                results[indices[0]] = error
        release_memory(self.vlm.device)
        return results


@serve.deployment
class HiredLLM(_ModelReplica):
    """Projector + generation from encoded images, on one continuous-batching
    :class:`~pipeline.model.engine.Engine` that the compute thread steps while requests wait or run.

    A caller that goes away (its HTTP client disconnected, so Serve cancelled the call) sets its
    request's flag; the engine ends that row at the next step, or never admits it.
    """

    role = "llm"

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config, config.llm, "language")
        positions = int(self.vlm.model.config.get_text_config().max_position_embeddings)
        if config.max_model_len is not None and config.max_model_len > positions:
            raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's {positions} positions")
        self.max_model_len = config.max_model_len or positions
        self.engine = Engine(self.vlm, config.engine_limits)
        self._stepping = False  # whether a stepping loop is queued or running on the compute thread
        self._stepping_lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"max_model_len": self.max_model_len}

    async def tokenize(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt ids of a conversation (chat template applied), off the compute thread."""
        return await asyncio.to_thread(self.vlm.chat_ids, messages)

    def _submit(self, item: LLMItem, on_delta: Callable[[str], None], on_answer: Callable[[Any], None]) -> None:
        """Queue a request in the engine and make sure the compute thread is stepping."""
        with self._stepping_lock:
            self.engine.submit(engine_request(self.vlm, item, on_delta, on_answer))
            if self._stepping:
                return
            self._stepping = True
        self._compute.submit(self._step_until_idle)

    def _step_until_idle(self) -> None:
        """Step the engine while requests wait or run (on the compute thread), then give memory back."""
        while True:
            with self._stepping_lock:
                if not self.engine.has_work:
                    self._stepping = False
                    break
            try:
                size = self.engine.step()
            except Exception as error:  # noqa: BLE001 - a bug here must not leave callers waiting
                logger.exception("engine step failed")
                self.engine.fail_all(error)
                continue
            if size:
                self._record(size)
        release_memory(self.vlm.device)

    async def generate(self, job: LLMJob, *rows: dict[str, Any]) -> dict[str, Any]:
        """The answer for one request (``rows``: its encoded images): text, counts, timings."""
        item = LLMItem(job, [EncodedImage.from_row(r) for r in rows])
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()
        self._submit(item, lambda text: None, lambda result: loop.call_soon_threadsafe(_settle, answer, result))
        try:
            return _raise_if_error(await answer)
        except asyncio.CancelledError:
            item.cancel.set()
            self._cancelled()
            raise

    async def generate_stream(self, job: LLMJob, *rows: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The answer for one request as it is generated (call with ``.options(stream=True)``).

        Yields ``{"delta": str}`` events with new text, the last one also holding ``"answer"``:
        the dict :meth:`generate` returns, for a text that is the concatenation of the deltas.
        """
        item = LLMItem(job, [EncodedImage.from_row(r) for r in rows])
        loop = asyncio.get_running_loop()
        # new text, then the answer or the failure, from the compute thread
        steps: asyncio.Queue[str | dict[str, Any] | BaseException] = asyncio.Queue()

        def post(payload: str | dict[str, Any] | BaseException) -> None:
            loop.call_soon_threadsafe(steps.put_nowait, payload)

        self._submit(item, post, post)
        try:
            while True:
                # every step waiting goes into one event: when the replica falls behind the
                # model, messages per request stay one per event instead of one per token
                arrived = [await steps.get()]
                while not steps.empty():
                    arrived.append(steps.get_nowait())
                event: dict[str, Any] = {"delta": ""}
                for payload in arrived:
                    if isinstance(payload, BaseException):
                        raise payload
                    if isinstance(payload, str):
                        event["delta"] += payload
                    else:
                        event["answer"] = payload
                yield event
                if "answer" in event:
                    return
        except (asyncio.CancelledError, GeneratorExit):  # cancelled, or the consumer closed the stream
            item.cancel.set()
            self._cancelled()
            raise


def _settle(future: asyncio.Future, result: Any) -> None:
    """Resolve ``future`` unless its caller already went away (a cancelled future)."""
    if not future.done():
        future.set_result(result)
