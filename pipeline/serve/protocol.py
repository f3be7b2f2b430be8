"""The OpenAI chat-completions protocol: parsing and validating requests into our own
``DropConfig`` / ``GenerateOptions``, and the completion and chunk bodies of the answers."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from hired_ops import BUDGETED, Budget, DropConfig
from pipeline.model.generation import GenerateOptions

from .config import MAX_IMAGES_PER_REQUEST, ServeConfig
from .errors import ApiError, bad_request

logger = logging.getLogger("ray.serve")

_OVERRIDE_KEYS = ("method", "budget")
_STOP_MAX = 4  # as in OpenAI's API


# -- request parsing (pure; no Serve needed) ------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion request.

    Attributes:
        prompt: the instruction text for the model's single-image prompt.
        image_url: the ``data:`` or ``http(s):`` URL of the image; ``image_param`` names its field.
        drop: the drop configuration after the ``hired`` override.
        options: decoding settings.
        stream, include_usage: SSE response, and a usage chunk at its end.
    """

    prompt: str
    image_url: str
    image_param: str
    drop: DropConfig
    options: GenerateOptions
    stream: bool = False
    include_usage: bool = False


T = TypeVar("T")
_TYPE_NAMES = {int: "an integer", (int, float): "a number", bool: "true or false", str: "a string", dict: "an object"}


def _field(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: T, param: str | None = None) -> T:
    """``body[name]`` checked against ``kinds`` (bool never passes as a number)."""
    value = body.get(name)
    if value is None:
        return default
    # bool is an int subclass, but `"max_tokens": true` is a client bug, not 1
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
        wanted = _TYPE_NAMES.get(kinds, "of another type")
        raise bad_request(f"'{param or name}' must be {wanted}, got {json.dumps(value)[:80]}", param or name, "invalid_type")
    return value


def parse_chat_request(body: Any, config: ServeConfig, max_visual_tokens: int) -> ChatRequest:
    """Validate an OpenAI chat completion body against the server's limits.

    Raises:
        ApiError: 400 for a malformed or out-of-range request, 404 for an unknown model.
    """
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_type")
    for name in ("model", "messages"):
        if name not in body:
            raise bad_request(f"missing required field '{name}'", name, "missing_field")
    model = _field(body, "model", str, "")
    if model != config.served_model_name:
        raise ApiError(
            404,
            f"the model {model!r} does not exist on this server; it serves {config.served_model_name!r}",
            param="model",
            code="model_not_found",
        )
    prompt, image_url, image_param = _parse_messages(body["messages"])
    return ChatRequest(
        prompt=prompt,
        image_url=image_url,
        image_param=image_param,
        drop=_parse_override(body.get("hired"), config, max_visual_tokens),
        options=_parse_options(body, config),
        stream=_field(body, "stream", bool, False),
        include_usage=_field(_field(body, "stream_options", dict, {}), "include_usage", bool, False, "stream_options.include_usage"),
    )


def _parse_messages(messages: Any) -> tuple[str, str, str]:
    """``(prompt, image_url, image_param)`` from OpenAI ``messages``."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages", "invalid_type")
    texts: list[str] = []
    images: list[tuple[str, str]] = []
    users = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise bad_request(f"{where} must be an object with 'role' and 'content'", where, "missing_field")
        role = message["role"]
        if role in ("assistant", "tool", "function"):
            raise bad_request(
                f"{where} has role {role!r}: multi-turn conversations are not supported; send one user "
                "message holding the image and the question",
                f"{where}.role",
                "unsupported_value",
            )
        if role not in ("system", "developer", "user"):
            raise bad_request(f"{where}.role must be 'system', 'developer' or 'user', got {role!r}", f"{where}.role")
        if role == "user":
            users += 1
            if users > 1:
                raise bad_request(
                    "only one user message is supported: put the image and all text in one message",
                    f"{where}.role",
                    "unsupported_value",
                )
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise bad_request(f"{where}.content must be a string or a list of parts", f"{where}.content", "invalid_type")
        for j, part in enumerate(content):
            pwhere = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise bad_request(f"{pwhere}.text must be a string", f"{pwhere}.text", "invalid_type")
                texts.append(text)
            elif kind == "image_url":
                if role != "user":
                    raise bad_request(f"{pwhere}: images belong in the user message", pwhere, "unsupported_value")
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str) or not url:
                    raise bad_request(f"{pwhere}.image_url.url must be a data: or http(s) URL string", f"{pwhere}.image_url.url", "missing_field")
                images.append((url, f"{pwhere}.image_url.url"))
            else:
                raise bad_request(
                    f"{pwhere} has type {kind!r}: only 'text' and 'image_url' parts are supported",
                    f"{pwhere}.type",
                    "unsupported_value",
                )
    if users == 0:
        raise bad_request("'messages' needs a user message", "messages", "missing_field")
    if not images:
        raise bad_request(
            "the request has no image: add one {'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}} "
            "part to the user message",
            "messages",
            "missing_image",
        )
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise bad_request(
            f"the request has {len(images)} images; this server accepts at most {MAX_IMAGES_PER_REQUEST} per "
            "request (the model's prompt has one image slot): send one request per image",
            images[MAX_IMAGES_PER_REQUEST][1],
            "too_many_images",
        )
    url, param = images[0]
    return "\n".join(texts), url, param


def _parse_options(body: dict[str, Any], config: ServeConfig) -> GenerateOptions:
    if body.get("max_tokens") is not None:
        name, max_tokens = "max_tokens", _field(body, "max_tokens", int, config.default_max_tokens)
    else:
        name, max_tokens = "max_completion_tokens", _field(body, "max_completion_tokens", int, config.default_max_tokens)
    if not 1 <= max_tokens <= config.max_tokens_limit:
        raise bad_request(f"'{name}' must be in [1, {config.max_tokens_limit}], got {max_tokens}", name)
    temperature = float(_field(body, "temperature", (int, float), 0.0))
    if not 0.0 <= temperature <= 2.0:
        raise bad_request(f"'temperature' must be in [0, 2], got {temperature}", "temperature")
    top_p = float(_field(body, "top_p", (int, float), 1.0))
    if not 0.0 < top_p <= 1.0:
        raise bad_request(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    if _field(body, "n", int, 1) != 1:
        raise bad_request("'n' must be 1: send several requests for several answers", "n", "unsupported_value")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > _STOP_MAX or not all(isinstance(s, str) and s for s in stops):
        raise bad_request(f"'stop' must be a non-empty string or a list of up to {_STOP_MAX} of them", "stop", "invalid_type")
    return GenerateOptions(
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=tuple(stops),
        seed=_field(body, "seed", int, None),
    )


def _parse_override(override: Any, config: ServeConfig, max_visual_tokens: int) -> DropConfig:
    """The ``hired`` extension: method and budget within the operator's limits."""
    if override is None:
        return config.drop
    if not isinstance(override, dict):
        raise bad_request("'hired' must be an object like {\"method\": \"hired\", \"budget\": 0.2}", "hired", "invalid_type")
    unknown = sorted(set(override) - set(_OVERRIDE_KEYS))
    if unknown:
        raise bad_request(f"unknown key(s) {unknown} in 'hired'; it takes {list(_OVERRIDE_KEYS)}", f"hired.{unknown[0]}")
    method = override.get("method", config.drop.method)
    if method not in config.allowed_methods:
        raise bad_request(
            f"method {method!r} is not allowed on this server; allowed: {', '.join(config.allowed_methods)}",
            "hired.method",
            "method_not_allowed",
        )
    low, high = config.budget_range(max_visual_tokens)
    if method not in BUDGETED:
        if "budget" in override:
            raise bad_request(f"method {method!r} chooses its own token count and takes no budget", "hired.budget")
        if method == "full" and high < max_visual_tokens:
            raise bad_request(
                f"method 'full' keeps all {max_visual_tokens} visual tokens, above this server's max_budget of {high}",
                "hired.method",
                "budget_out_of_range",
            )
        return dataclasses.replace(config.drop, method=method, budget=None)
    raw = override.get("budget", config.drop.budget)
    try:
        budget = Budget.parse(raw)
    except ValueError as error:
        raise bad_request(f"invalid 'hired.budget': {error}", "hired.budget", "invalid_budget") from None
    tokens = budget.resolve(max_visual_tokens)
    if not low <= tokens <= high:
        raise bad_request(
            f"budget {raw!r} is {tokens} visual tokens, outside this server's range [{low}, {high}] "
            f"(the model's maximum is {max_visual_tokens})",
            "hired.budget",
            "budget_out_of_range",
        )
    return dataclasses.replace(config.drop, method=method, budget=budget)


# -- responses -----------------------------------------------------------------------------------


def _finish_reason(answer: dict[str, Any], options: GenerateOptions) -> str:
    return "length" if answer["generated_tokens"] >= options.max_new_tokens and not answer["stopped"] else "stop"


def completion_body(request_id: str, model: str, parsed: ChatRequest, answer: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` object for a finished answer (see ``HiredLLM.generate``)."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer["text"]},
                "logprobs": None,
                "finish_reason": _finish_reason(answer, parsed.options),
            }
        ],
        "usage": _usage(answer),
        "hired": _hired_block(parsed, answer),
    }


def _usage(answer: dict[str, Any]) -> dict[str, int]:
    return {
        "prompt_tokens": answer["prompt_tokens"],
        "completion_tokens": answer["generated_tokens"],
        "total_tokens": answer["prompt_tokens"] + answer["generated_tokens"],
        "visual_tokens": answer["visual_tokens"],
    }


def _hired_block(parsed: ChatRequest, answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": parsed.drop.method,
        "budget": str(parsed.drop.budget) if parsed.drop.method in BUDGETED else None,
        "visual_tokens": answer["visual_tokens"],
        "ttft_s": round(answer["ttft_s"], 4),
        "generate_s": round(answer["generate_s"], 4),
    }


async def stream_events(
    request_id: str, model: str, parsed: ChatRequest, first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[str]:
    """Server-sent events of ``chat.completion.chunk`` objects for events of ``HiredLLM.generate_stream``.

    ``first`` is the stream's first event, awaited before the response started so that a failure
    up to there is still an HTTP 500; a failure after it becomes an error event.
    """
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        body = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield first
        async for event in rest:
            yield event

    yield chunk({"role": "assistant", "content": ""})
    answer: dict[str, Any] | None = None
    try:
        async for event in events():
            if event["delta"]:
                yield chunk({"content": event["delta"]})
            answer = event.get("answer")
            if answer is not None:
                break
        if answer is None:
            raise RuntimeError("the LLM stream ended without an answer")
    except Exception as error:  # noqa: BLE001 - the status is sent already; tell the client in-band
        logger.exception("streamed chat completion failed")
        failure = ApiError(500, f"the model failed on this request ({type(error).__name__}); see the server log", code="internal_error")
        yield f"data: {json.dumps(failure.body())}\n\n"
        return
    yield chunk({}, _finish_reason(answer, parsed.options))
    if parsed.include_usage:
        usage = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [], "usage": _usage(answer), "hired": _hired_block(parsed, answer)}
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"
