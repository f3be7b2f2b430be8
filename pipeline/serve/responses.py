"""The answer bodies: a ``chat.completion`` for a finished answer, and the server-sent events of
``chat.completion.chunk`` objects for a streamed one (the models are in ``protocol``)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from hired_ops import BUDGETED

from .errors import ApiError
from .protocol import (
    AnswerMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChoiceLogprobs,
    Delta,
    StreamChoice,
    Usage,
)

logger = logging.getLogger("ray.serve")


def usage(answer: dict[str, Any]) -> Usage:
    """Counts of an answer dict (``HiredLLM.generate``)."""
    return Usage(
        prompt_tokens=answer["prompt_tokens"],
        completion_tokens=answer["generated_tokens"],
        total_tokens=answer["prompt_tokens"] + answer["generated_tokens"],
        visual_tokens=answer["visual_tokens"],
    )


def hired_block(parsed: ChatRequest, answer: dict[str, Any]) -> dict[str, Any]:
    """The top-level ``hired`` extension of an answer: method, budget, kept tokens, timings."""
    return {
        "method": parsed.drop.method,
        "budget": str(parsed.drop.budget) if parsed.drop.method in BUDGETED else None,
        "images": len(parsed.images),
        "visual_tokens": answer["visual_tokens"],
        "ttft_s": round(answer["ttft_s"], 4),
        "generate_s": round(answer["generate_s"], 4),
    }


def completion(request_id: str, model: str, parsed: ChatRequest, answer: dict[str, Any]) -> ChatCompletion:
    """The ``chat.completion`` object for a finished answer."""
    logprobs = answer.get("logprobs")
    return ChatCompletion(
        id=request_id,
        model=model,
        choices=[
            Choice(
                message=AnswerMessage(content=answer["text"]),
                logprobs=ChoiceLogprobs.model_validate(logprobs) if logprobs is not None else None,
                finish_reason=answer["finish_reason"],
            )
        ],
        usage=usage(answer),
        hired=hired_block(parsed, answer),
    )


async def stream_events(
    request_id: str,
    model: str,
    parsed: ChatRequest,
    first: dict[str, Any],
    rest: AsyncIterator[dict[str, Any]],
    on_end: Callable[[dict[str, Any] | None], None],
) -> AsyncIterator[str]:
    """Server-sent events for events of ``HiredLLM.generate_stream``.

    ``first`` is the stream's first event, awaited before the response started so that a failure
    up to there is still an HTTP error; a failure after it becomes an error event. ``on_end`` is
    called once with the answer, or None when the stream failed or the client went away (it
    cancels the model's work then).
    """
    created = int(time.time())

    def event(chunk: ChatCompletionChunk) -> str:
        return f"data: {chunk.model_dump_json()}\n\n"

    def chunk(delta: Delta, finish: str | None = None) -> str:
        choice = StreamChoice(delta=delta, finish_reason=finish)
        return event(ChatCompletionChunk(id=request_id, created=created, model=model, choices=[choice]))

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield first
        async for item in rest:
            yield item

    answer: dict[str, Any] | None = None
    try:
        yield chunk(Delta(role="assistant", content=""))
        async for item in events():
            if item["delta"]:
                yield chunk(Delta(content=item["delta"]))
            answer = item.get("answer")
            if answer is not None:
                break
        if answer is None:
            raise RuntimeError("the LLM stream ended without an answer")
        yield chunk(Delta(), answer["finish_reason"])
        if parsed.include_usage:
            yield event(ChatCompletionChunk(
                id=request_id, created=created, model=model, choices=[], usage=usage(answer),
                hired=hired_block(parsed, answer),
            ))
        yield "data: [DONE]\n\n"
    except Exception as error:  # noqa: BLE001 - the status is sent already; tell the client in-band
        logger.exception("streamed chat completion failed")
        answer = None
        failure = ApiError(500, f"the model failed on this request ({type(error).__name__}); see the server log", code="internal_error")
        yield f"data: {failure.body_json()}\n\n"
    finally:
        on_end(answer)
