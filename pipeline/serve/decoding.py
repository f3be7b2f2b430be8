"""The endpoint's requests as engine requests, on the replica's compute thread: each request
detokenised as it decodes (stop strings end that row, in both response modes), its answer built
with the same counts in both modes, and a client that went away ending its row at the next step
(:mod:`pipeline.model.engine` admits, decodes and retires the rows)."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from pipeline.model.encoded import EncodedImage
from pipeline.model.engine import Cancelled, EngineRequest
from pipeline.model.generation import GenerateOptions, Generation, TokenLogprob
from pipeline.model.vlm import HiredVLM

__all__ = ["Cancelled", "LLMJob", "LLMItem", "engine_request", "group", "logprobs_body", "release_memory"]

T = TypeVar("T")
logger = logging.getLogger("ray.serve")

_MIN_LOGPROB = -9999.0  # JSON has no -inf; vLLM clamps the same way


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


@dataclass
class LLMItem:
    """One request on the LLM replica: its job, its images, and the flag its caller sets on leaving."""

    job: LLMJob
    images: list[EncodedImage]
    cancel: threading.Event = field(default_factory=threading.Event)


def group(keys: Sequence[T]) -> dict[T, list[int]]:
    """Indices of equal keys, first-seen order: requests that can share one batched call."""
    groups: dict[T, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def engine_request(
    vlm: HiredVLM,
    item: LLMItem,
    on_delta: Callable[[str], None],
    on_answer: Callable[[dict[str, Any] | BaseException], None],
) -> EngineRequest:
    """The engine request for ``item``: ``on_delta(text)`` is called as the answer's text grows,
    then ``on_answer`` once, with the answer dict or the exception that ended the request.

    The answer dict holds ``text`` (the concatenated deltas), ``finish_reason``,
    ``generated_tokens`` (tokens up to and including the one that completed a stop string, the
    same count in both response modes), ``prompt_tokens``, ``visual_tokens``, ``ttft_s``,
    ``generate_s``, and ``logprobs`` (OpenAI's object) when the job asked for them.
    """
    job = item.job
    stream = vlm.text_stream(job.options.stop)

    def on_token(token: int) -> bool:
        delta = stream.push(token)
        if delta:
            on_delta(delta)
        return stream.done  # a stop string ends the row here

    def on_done(result: Generation | BaseException) -> None:
        if isinstance(result, BaseException):
            on_answer(result)
            return
        if not stream.done:  # an end token or the token limit: the rest of the text
            delta = stream.finish()
            if delta:
                on_delta(delta)
        count = len(stream.ids)
        answer: dict[str, Any] = {
            "text": stream.sent,
            "finish_reason": "length" if count >= job.options.max_new_tokens and not stream.stopped else "stop",
            "generated_tokens": count,
            "prompt_tokens": result.prompt_tokens,
            "visual_tokens": sum(e.num_tokens for e in item.images),
            "ttft_s": result.ttft_s,
            "generate_s": result.generate_s,
        }
        if job.top_logprobs is not None and result.logprobs is not None:
            answer["logprobs"] = logprobs_body(vlm, result.logprobs[:count])
        on_answer(answer)

    return EngineRequest(
        list(job.ids), item.images, job.options, on_done, job.top_logprobs, on_token=on_token, cancelled=item.cancel.is_set
    )


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
