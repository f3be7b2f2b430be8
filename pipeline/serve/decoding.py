"""One LLM batch of the endpoint, on the replica's compute thread: requests grouped by decoding
options, each row detokenised as it decodes (stop strings end that row, in both response modes),
rows of clients that went away finished at the next step, and a group that fails before its
first token retried row by row, so that one request fails alone."""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from pipeline.model.encoded import EncodedImage
from pipeline.model.generation import GenerateOptions, Generation, TokenLogprob
from pipeline.model.vlm import HiredVLM

T = TypeVar("T")
logger = logging.getLogger("ray.serve")

_MIN_LOGPROB = -9999.0  # JSON has no -inf; vLLM clamps the same way


class Cancelled(Exception):
    """The client went away before its request started decoding."""


@dataclass(frozen=True)
class LLMJob:
    """What the ingress sends the LLM deployment for one request, besides the encoded images.

    Attributes:
        ids: the conversation's prompt ids (``HiredVLM.chat_ids``), one image token per image.
        options: decoding settings.
        top_logprobs: alternatives per token when logprobs are wanted, else None.
    """

    ids: tuple[int, ...]
    options: GenerateOptions
    top_logprobs: int | None = None

    @property
    def group_key(self) -> tuple[GenerateOptions, int | None]:
        """Requests with equal keys share one ``generate`` call (stop strings are per row)."""
        return dataclasses.replace(self.options, stop=()), self.top_logprobs


@dataclass
class BatchItem:
    """One request inside a batch: its job, its images, and the flag its caller sets on leaving."""

    job: LLMJob
    images: list[EncodedImage]
    cancel: threading.Event = field(default_factory=threading.Event)


def group(keys: Sequence[T]) -> dict[T, list[int]]:
    """Indices of equal keys, first-seen order: requests that can share one batched call."""
    groups: dict[T, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


class BatchDecoder:
    """Decodes one batch; ``on_delta(i, text)`` and ``on_answer(i, answer | exception)`` are called
    on this thread as row ``i`` produces text and as it ends. Each row is answered exactly once.

    An answer is a dict: ``text`` (the concatenated deltas), ``finish_reason``,
    ``generated_tokens`` (tokens up to and including the one that completed a stop string, the
    same count in both response modes), ``prompt_tokens``, ``visual_tokens``, ``ttft_s``,
    ``generate_s``. :attr:`generations` holds each decoded row's :class:`Generation` afterwards.
    """

    def __init__(
        self,
        vlm: HiredVLM,
        items: list[BatchItem],
        on_delta: Callable[[int, str], None],
        on_answer: Callable[[int, dict[str, Any] | BaseException], None],
    ) -> None:
        self.vlm = vlm
        self.items = items
        self.on_delta = on_delta
        self.on_answer = on_answer
        self.generations: dict[int, Generation] = {}

    def run(self) -> None:
        live = []
        for i, item in enumerate(self.items):
            if item.cancel.is_set():  # left while queued: never starts
                self.on_answer(i, Cancelled())
            else:
                live.append(i)
        for key, members in group([self.items[i].job.group_key for i in live]).items():
            self._group([live[m] for m in members], *key)

    def _group(self, indices: list[int], options: GenerateOptions, top_logprobs: int | None) -> None:
        items = self.items
        streams = {i: self.vlm.text_stream(items[i].job.options.stop) for i in indices}
        first: dict[int, float] = {}
        began = time.perf_counter()

        def answer(i: int, now: float) -> dict[str, Any]:
            stream = streams[i]
            length = "length" if len(stream.ids) >= options.max_new_tokens and not stream.stopped else "stop"
            return {
                "text": stream.sent,
                "finish_reason": length,
                "generated_tokens": len(stream.ids),
                "prompt_tokens": self.vlm.input_length(list(items[i].job.ids), items[i].images),
                "visual_tokens": sum(e.num_tokens for e in items[i].images),
                "ttft_s": first.get(i, now),
                "generate_s": now,
            }

        def on_tokens(tokens: list[int]) -> None:
            now = time.perf_counter() - began
            for i, token in zip(indices, tokens):
                stream = streams[i]
                if stream.done:
                    continue
                first.setdefault(i, now)
                delta = stream.push(token)
                if delta:
                    self.on_delta(i, delta)
                if stream.done:
                    self.on_answer(i, answer(i, now))

        def finished() -> list[bool]:
            return [streams[i].done or items[i].cancel.is_set() for i in indices]

        try:
            generations = self.vlm.generate_chats(
                [(list(items[i].job.ids), items[i].images) for i in indices], options,
                on_tokens=on_tokens, finished=finished, top_logprobs=top_logprobs,
            )
        except Exception as error:  # noqa: BLE001 - reported per request below
            if len(indices) > 1 and not first:
                # failed before any token (prefill): run each request alone, so the one that
                # cannot run fails and its batch-mates answer
                logger.warning("llm group of %d failed (%s: %s); retrying its requests one by one",
                               len(indices), type(error).__name__, error)
                for i in indices:
                    self._group([i], options, top_logprobs)
                return
            logger.exception("llm group failed (%s)", options)
            for i in indices:
                if not streams[i].done:
                    self.on_answer(i, error)
            return
        now = time.perf_counter() - began
        for i, generation in zip(indices, generations):
            self.generations[i] = generation
            stream = streams[i]
            if not stream.done:  # EOS or the token limit: the row ran to the end of the group
                delta = stream.finish()
                if delta:
                    self.on_delta(i, delta)
                self.on_answer(i, answer(i, now))


def logprobs_body(vlm: HiredVLM, logprobs: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs`` object for an answer's tokens."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = vlm.tokenizer.decode([token_id])
        return {"token": text, "logprob": max(logprob, _MIN_LOGPROB), "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            entry(lp.token_id, lp.logprob) | {"top_logprobs": [entry(t, v) for t, v in lp.top]} for lp in logprobs
        ]
    }


def release_memory(device: torch.device) -> None:
    """Give freed memory back: the CUDA caching allocator's blocks, or glibc's free heap pages
    (a large prefill leaves the process's resident size high long after its tensors are gone)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
