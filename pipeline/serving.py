"""Ray Serve application: OpenAI-compatible chat completions with HiRED token dropping, batched.

Deployments (one application, three deployments that scale apart)::

    HTTP -> HiredIngress (FastAPI)       auth, JSON parsing and validation, image decoding
              |  PIL image + DropConfig
              v
            HiredVision  (@serve.batch)  vision tower + dropping -> EncodedImage rows (numpy)
              |  kept pre-projector features, (K, D) float16, passed straight to the LLM
              v
            HiredLLM     (@serve.batch)  projector + batched prefill/decode -> text

The split is the only mode. Each of the two model deployments loads the checkpoint and then
releases the half it never runs (the vision replica drops the language model and LM head, the LLM
replica drops the vision tower), so scaling them apart does not duplicate the big weights.
Requests are batched on both sides; within a batch, requests that share a drop configuration
(vision) or decoding options (LLM) run as one batched call. With a fixed budget every image
yields the same number of visual tokens, so LLM batches are the same length and need no padding
beyond the prompt text.

HTTP contract (``route_prefix`` is ``/``):

* ``POST /v1/chat/completions``: OpenAI chat schema. ``messages`` holds one ``user`` message with
  exactly one ``image_url`` part (the model's prompt has one image slot) and any ``text`` parts;
  optional ``system``/``developer`` messages are prepended to the prompt text (joined by
  newlines); earlier assistant turns are refused. ``max_tokens`` (or ``max_completion_tokens``),
  ``temperature``, ``top_p``, ``stop``, ``seed``, ``n`` (must be 1), ``stream`` and
  ``stream_options.include_usage`` are honoured; other OpenAI fields are ignored.
* Budget/method override, an extension field: ``"hired": {"method": "spatial", "budget": 0.4}``
  (the ``openai`` client sends it with ``extra_body``). Either key may be left out and defaults to
  the server's. The method must be in the operator's ``allowed_methods``; a budget (a fraction of
  the model's maximum, ``"20%"``, or a token count) must resolve to ``[min_budget, max_budget]``
  tokens and is refused for methods that choose their own count (``full``, ``prumerge``,
  ``prumerge+``). ``full`` keeps every token, so it is refused unless ``max_budget`` covers the
  model's maximum.
* ``stream: true`` answers with server-sent events: ``data: {chat.completion.chunk}`` events as
  tokens are generated (the first carries ``role``, the last content-free one ``finish_reason``),
  the usage chunk if asked for, and a final ``data: [DONE]``. Streaming requests are batched too
  (``HiredLLM.generate_stream``): every decoding step of the batch hands each request its new
  token, which is detokenised incrementally, so the concatenated deltas equal the non-streamed
  answer exactly. Text that a later token could still change waits: an incomplete UTF-8
  character, whitespace at either end, a possible start of a stop string. A stop string ends that
  request's stream at once (its usage counts the tokens up to the stop). A failure after the
  first event is sent as an ``{"error": ...}`` event and ends the stream without ``[DONE]``.
* ``GET /v1/models`` lists the served model; ``GET /v1/stats`` gives batch-size counts of the
  vision and LLM replicas that answer it; ``GET /health`` (no auth) checks both model
  deployments answer.
* The response's ``usage`` adds ``visual_tokens`` (tokens kept for the image) to the OpenAI
  counts, and a top-level ``hired`` block gives method, budget and timings.

Errors use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``:

====  ================================================================================
400   malformed JSON, missing or mistyped fields, bad base64, bytes that are not an image
      (or declare more than ``max_image_pixels``), no image or more than one, a remote
      ``http(s)`` image whose host is not allowlisted, a budget or method out of range
401   ``api_key`` set and the ``Authorization: Bearer`` token missing or wrong
404   ``model`` is not the served model name (``model_not_found``), unknown route
413   an image over ``max_image_bytes`` or a request body over the matching limit
500   an unexpected failure inside the model deployments (logged; the server keeps serving)
====  ================================================================================

Remote image URLs are refused unless their host (``name`` or ``name:port``) is in
``allowed_image_hosts``: fetching arbitrary URLs from inside a cluster is a server-side request
forgery hole. Allowed fetches do not follow redirects (a redirect could leave the allowlist).

Deploy with :func:`start` (used by ``hired serve``), or from a Serve config YAML whose
``import_path`` is ``pipeline.serving:build_app`` and whose ``args`` are :class:`ServeConfig`
fields (see ``cluster/serve/serve_config.yaml``).
"""

# No ``from __future__ import annotations`` here: Serve re-wraps the ingress methods, and FastAPI
# must see real ``Request`` annotations on them, not strings it resolves in the wrong module.
import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from hired_ops import BUDGETED, METHODS, Budget, DropConfig

from .engine import EncodedImage, GenerateOptions, HiredVLM
from .text_stream import TextStream, truncate_at_stop
from .images import DecodeLimits, ImageDecodeError, decode_image
from .loading import DEFAULT_MODEL

logger = logging.getLogger("ray.serve")

API_KEY_ENV = "HIRED_API_KEY"
# The engine builds one image slot per prompt (``HiredVLM.prompt_ids``), so a request carries
# exactly one image; more is a client error, not something to truncate silently.
MAX_IMAGES_PER_REQUEST = 1
# Text, JSON framing and base64 overhead on top of the image bytes a request may carry.
_BODY_SLACK_BYTES = 1 << 20
_REMOTE_FETCH_TIMEOUT_S = 10.0
_OVERRIDE_KEYS = ("method", "budget")
_STOP_MAX = 4  # as in OpenAI's API


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentResources:
    """Replicas and per-replica resources of one deployment. Validated at construction.

    Fractional CPUs matter on small machines: three deployments at one CPU each do not fit on a
    two-core node and Serve waits for resources forever.
    """

    num_replicas: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.num_replicas, bool) or not isinstance(self.num_replicas, int) or self.num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, got {self.num_replicas!r}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"num_cpus and num_gpus must be >= 0, got {self.num_cpus} and {self.num_gpus}")

    def actor_options(self) -> dict[str, float]:
        return {"num_cpus": float(self.num_cpus), "num_gpus": float(self.num_gpus)}


@dataclass(frozen=True)
class ServeConfig:
    """What the operator sets for the endpoint. Validated at construction (raises ValueError).

    Attributes:
        model: built-in name, local checkpoint directory or hub id (see ``load_model``).
        served_model_name: the name clients pass as ``model``; defaults to ``model``.
        method, budget, alpha: the default drop configuration (budget as in ``Budget.parse``).
        allowed_methods: methods a request may pick with the ``hired`` override; defaults to all.
        min_budget, max_budget: the range a budget must resolve into, each a token count or a
            fraction of the model's maximum visual tokens; ``max_budget=None`` is the maximum.
        default_max_tokens, max_tokens_limit: completion length when a request gives none, and
            the most it may ask for.
        max_image_bytes: encoded size limit of the image (413 above it).
        max_image_pixels: decoded size limit, checked from the header before decoding.
        max_batch_size, batch_wait_timeout_s: ``@serve.batch`` settings of both model deployments.
        max_ongoing_requests: per replica; must exceed ``max_batch_size`` or batches never fill.
        allowed_image_hosts: hosts (``name`` or ``name:port``) remote image URLs may point at.
        api_key: bearer token clients must send; ``None`` means no authentication.
        device, dtype, transfer_dtype: model placement and the dtype of features handed from
            the vision to the LLM deployment ("float16" halves the bytes).
        torch_threads: intra-op threads per model replica; ``None`` is the replica's whole CPUs
            (at least one).
        ingress, vision, llm: replicas and resources of each deployment.
    """

    model: str = DEFAULT_MODEL
    served_model_name: str | None = None
    method: str = "hired"
    budget: Budget | str | float | int = "0.2"
    alpha: float = 0.5
    allowed_methods: tuple[str, ...] = METHODS
    min_budget: Budget | str | float | int = 1
    max_budget: Budget | str | float | int | None = None
    default_max_tokens: int = 64
    max_tokens_limit: int = 512
    max_image_bytes: int = 20 * 2**20
    max_image_pixels: int = 36_000_000
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    max_ongoing_requests: int = 64
    allowed_image_hosts: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    device: str | None = None
    dtype: str | None = None
    transfer_dtype: str = "float16"
    torch_threads: int | None = None
    ingress: DeploymentResources = DeploymentResources(num_cpus=0.25)
    vision: DeploymentResources = DeploymentResources()
    llm: DeploymentResources = DeploymentResources()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising fields of a frozen dataclass

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a model name or path")
        self._set("served_model_name", self.served_model_name or self.model)
        self._set("allowed_methods", _names(self.allowed_methods))
        unknown = [m for m in (self.method, *self.allowed_methods) if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}: choose from {', '.join(METHODS)}")
        if self.method not in self.allowed_methods:
            raise ValueError(f"the default method {self.method!r} must be in allowed_methods {self.allowed_methods}")
        self._set("budget", Budget.parse(self.budget))
        self._set("min_budget", Budget.parse(self.min_budget))
        if self.max_budget is not None:
            self._set("max_budget", Budget.parse(self.max_budget))
        self.default_drop()  # raises on a bad alpha
        for name in ("default_max_tokens", "max_tokens_limit", "max_image_bytes", "max_image_pixels",
                     "max_batch_size", "max_ongoing_requests"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens {self.default_max_tokens} exceeds max_tokens_limit {self.max_tokens_limit}")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                f"({self.max_batch_size}), or a replica never receives enough requests to fill a batch"
            )
        if not 0 <= self.batch_wait_timeout_s <= 10:
            raise ValueError(f"batch_wait_timeout_s must be in [0, 10] seconds, got {self.batch_wait_timeout_s}")
        self._set("allowed_image_hosts", tuple(h.lower() for h in _names(self.allowed_image_hosts)))
        if any("/" in h for h in self.allowed_image_hosts):
            raise ValueError(f"allowed_image_hosts holds host names like 'images.example.com[:port]', got {self.allowed_image_hosts}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty: leave it unset to serve without authentication")
        if self.transfer_dtype not in ("float16", "float32"):
            raise ValueError(f"transfer_dtype must be float16 or float32, got {self.transfer_dtype!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")
        for name in ("ingress", "vision", "llm"):
            value = getattr(self, name)
            if isinstance(value, dict):
                try:
                    self._set(name, DeploymentResources(**value))
                except TypeError as error:
                    raise ValueError(f"{name}: {error}; use num_replicas, num_cpus and num_gpus") from None
            elif not isinstance(value, DeploymentResources):
                raise ValueError(f"{name} must be a mapping of num_replicas/num_cpus/num_gpus, got {value!r}")

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> "ServeConfig":
        """Build from plain data (a Serve config YAML's ``args``); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - names)
        if unknown:
            raise ValueError(f"unknown ServeConfig field(s) {unknown}; valid fields: {', '.join(sorted(names))}")
        return cls(**args)

    def default_drop(self) -> DropConfig:
        # no budget on methods that choose their own count, so this equals the override's config
        # for the same method and both land in one batch group
        budget = self.budget if self.method in BUDGETED else None
        return DropConfig(method=self.method, budget=budget, alpha=self.alpha)

    def budget_range(self, max_visual_tokens: int) -> tuple[int, int]:
        """``[min, max]`` budget in tokens for a model yielding at most ``max_visual_tokens``."""
        low = self.min_budget.resolve(max_visual_tokens)
        high = self.max_budget.resolve(max_visual_tokens) if self.max_budget is not None else max_visual_tokens
        if low > high:
            raise ValueError(f"min_budget {self.min_budget} ({low} tokens) is above max_budget {self.max_budget} ({high} tokens)")
        if self.method == "full" and high < max_visual_tokens:
            raise ValueError(f"the default method 'full' keeps {max_visual_tokens} tokens, above max_budget ({high} tokens)")
        if self.method in BUDGETED and not low <= self.budget.resolve(max_visual_tokens) <= high:
            raise ValueError(
                f"the default budget {self.budget} ({self.budget.resolve(max_visual_tokens)} tokens) is outside "
                f"[min_budget, max_budget] = [{low}, {high}] tokens"
            )
        return low, high

    @property
    def max_request_bytes(self) -> int:
        """Largest request body read: one base64 image at the byte limit plus the text around it."""
        return math.ceil(self.max_image_bytes * 4 / 3) * MAX_IMAGES_PER_REQUEST + _BODY_SLACK_BYTES


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    """A list of names as a tuple; a single string may hold several, comma-separated."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())


# -- errors --------------------------------------------------------------------------------------


class ApiError(Exception):
    """A failure with an HTTP status and an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,  # noqa: A002 - OpenAI's field name
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


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
        raise _bad(f"'{param or name}' must be {wanted}, got {json.dumps(value)[:80]}", param or name, "invalid_type")
    return value


def parse_chat_request(body: Any, config: ServeConfig, max_visual_tokens: int) -> ChatRequest:
    """Validate an OpenAI chat completion body against the server's limits.

    Raises:
        ApiError: 400 for a malformed or out-of-range request, 404 for an unknown model.
    """
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    for name in ("model", "messages"):
        if name not in body:
            raise _bad(f"missing required field '{name}'", name, "missing_field")
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
        raise _bad("'messages' must be a non-empty list of {role, content} objects", "messages", "invalid_type")
    texts: list[str] = []
    images: list[tuple[str, str]] = []
    users = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise _bad(f"{where} must be an object with 'role' and 'content'", where, "missing_field")
        role = message["role"]
        if role in ("assistant", "tool", "function"):
            raise _bad(
                f"{where} has role {role!r}: multi-turn conversations are not supported; send one user "
                "message holding the image and the question",
                f"{where}.role",
                "unsupported_value",
            )
        if role not in ("system", "developer", "user"):
            raise _bad(f"{where}.role must be 'system', 'developer' or 'user', got {role!r}", f"{where}.role")
        if role == "user":
            users += 1
            if users > 1:
                raise _bad(
                    "only one user message is supported: put the image and all text in one message",
                    f"{where}.role",
                    "unsupported_value",
                )
        content = message["content"]
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list):
            raise _bad(f"{where}.content must be a string or a list of parts", f"{where}.content", "invalid_type")
        for j, part in enumerate(content):
            pwhere = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise _bad(f"{pwhere}.text must be a string", f"{pwhere}.text", "invalid_type")
                texts.append(text)
            elif kind == "image_url":
                if role != "user":
                    raise _bad(f"{pwhere}: images belong in the user message", pwhere, "unsupported_value")
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str) or not url:
                    raise _bad(f"{pwhere}.image_url.url must be a data: or http(s) URL string", f"{pwhere}.image_url.url", "missing_field")
                images.append((url, f"{pwhere}.image_url.url"))
            else:
                raise _bad(
                    f"{pwhere} has type {kind!r}: only 'text' and 'image_url' parts are supported",
                    f"{pwhere}.type",
                    "unsupported_value",
                )
    if users == 0:
        raise _bad("'messages' needs a user message", "messages", "missing_field")
    if not images:
        raise _bad(
            "the request has no image: add one {'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}} "
            "part to the user message",
            "messages",
            "missing_image",
        )
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise _bad(
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
        raise _bad(f"'{name}' must be in [1, {config.max_tokens_limit}], got {max_tokens}", name)
    temperature = float(_field(body, "temperature", (int, float), 0.0))
    if not 0.0 <= temperature <= 2.0:
        raise _bad(f"'temperature' must be in [0, 2], got {temperature}", "temperature")
    top_p = float(_field(body, "top_p", (int, float), 1.0))
    if not 0.0 < top_p <= 1.0:
        raise _bad(f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    if _field(body, "n", int, 1) != 1:
        raise _bad("'n' must be 1: send several requests for several answers", "n", "unsupported_value")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > _STOP_MAX or not all(isinstance(s, str) and s for s in stops):
        raise _bad(f"'stop' must be a non-empty string or a list of up to {_STOP_MAX} of them", "stop", "invalid_type")
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
        return config.default_drop()
    if not isinstance(override, dict):
        raise _bad("'hired' must be an object like {\"method\": \"hired\", \"budget\": 0.2}", "hired", "invalid_type")
    unknown = sorted(set(override) - set(_OVERRIDE_KEYS))
    if unknown:
        raise _bad(f"unknown key(s) {unknown} in 'hired'; it takes {list(_OVERRIDE_KEYS)}", f"hired.{unknown[0]}")
    method = override.get("method", config.method)
    if method not in config.allowed_methods:
        raise _bad(
            f"method {method!r} is not allowed on this server; allowed: {', '.join(config.allowed_methods)}",
            "hired.method",
            "method_not_allowed",
        )
    low, high = config.budget_range(max_visual_tokens)
    if method not in BUDGETED:
        if "budget" in override:
            raise _bad(f"method {method!r} chooses its own token count and takes no budget", "hired.budget")
        if method == "full" and high < max_visual_tokens:
            raise _bad(
                f"method 'full' keeps all {max_visual_tokens} visual tokens, above this server's max_budget of {high}",
                "hired.method",
                "budget_out_of_range",
            )
        return DropConfig(method=method, budget=None, alpha=config.alpha)
    raw = override.get("budget", config.budget)
    try:
        budget = Budget.parse(raw)
    except ValueError as error:
        raise _bad(f"invalid 'hired.budget': {error}", "hired.budget", "invalid_budget") from None
    tokens = budget.resolve(max_visual_tokens)
    if not low <= tokens <= high:
        raise _bad(
            f"budget {raw!r} is {tokens} visual tokens, outside this server's range [{low}, {high}] "
            f"(the model's maximum is {max_visual_tokens})",
            "hired.budget",
            "budget_out_of_range",
        )
    return DropConfig(method=method, budget=budget, alpha=config.alpha)


def decode_data_url(url: str, param: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:[<media type>];base64,<payload>`` URL.

    Raises:
        ApiError: 400 for a URL that is not base64 ``data:``, 413 above ``max_bytes``.
    """
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise _bad(f"{param} must be a base64 data URL like 'data:image/png;base64,...'", param, "invalid_image_url")
    # Refuse before decoding: base64 carries 3 bytes per 4 characters.
    if len(payload) * 3 // 4 - payload.count("=", -2) > max_bytes:
        raise ApiError(413, f"{param}: the image is larger than this server's limit of {max_bytes} bytes", param=param, code="image_too_large")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _bad(f"{param}: the data URL payload is not valid base64 ({error})", param, "invalid_base64") from None


def check_remote_url(url: str, param: str, allowed_hosts: Sequence[str]) -> None:
    """Refuse a remote URL unless its host is allowlisted (server-side request forgery).

    Raises:
        ApiError: 400 for a non-http(s) scheme or a host not in ``allowed_hosts``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _bad(f"{param}: unsupported URL scheme {parts.scheme!r}; send a data: URL", param, "invalid_image_url")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        raise _bad(f"{param}: the URL has an invalid port", param, "invalid_image_url") from None
    candidates = {host} | ({f"{host}:{port}"} if port else set())
    if not candidates & set(allowed_hosts):
        raise _bad(
            f"{param}: remote image URLs are disabled on this server (host {host!r} is not allowlisted); send the "
            "image inline as a data: URL, or have the operator allow the host (hired serve --allow-image-host "
            "HOST, ServeConfig.allowed_image_hosts)",
            param,
            "remote_image_disabled",
        )


async def fetch_remote_image(url: str, param: str, max_bytes: int) -> bytes:
    """GET an allowlisted image URL: no redirects, no proxies from the environment, size-capped."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=_REMOTE_FETCH_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            async with session.get(url, allow_redirects=False) as reply:
                if reply.status != 200:
                    raise _bad(f"{param}: fetching the image returned HTTP {reply.status}", param, "image_fetch_failed")
                if (reply.content_length or 0) > max_bytes:
                    raise ApiError(413, f"{param}: the image is larger than {max_bytes} bytes", param=param, code="image_too_large")
                data = bytearray()
                async for chunk in reply.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > max_bytes:
                        raise ApiError(413, f"{param}: the image is larger than {max_bytes} bytes", param=param, code="image_too_large")
                return bytes(data)
    except (aiohttp.ClientError, asyncio.TimeoutError) as error:
        raise _bad(f"{param}: could not fetch the image ({type(error).__name__}: {error})", param, "image_fetch_failed") from None


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


# -- model deployments ---------------------------------------------------------------------------


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

    def __init__(self, config: ServeConfig, resources: DeploymentResources, half: str) -> None:
        import torch

        # Ray sets OMP threads from num_cpus (at least 1) and reuses workers: set them here.
        threads = config.torch_threads or max(1, int(resources.num_cpus))
        torch.set_num_threads(threads)
        device = "cuda" if resources.num_gpus > 0 else config.device
        self.config = config
        self.vlm = HiredVLM.from_pretrained(
            config.model, drop=config.default_drop(), device=device, dtype=config.dtype,
            transfer_dtype=config.transfer_dtype, half=half,
        )
        self.max_visual_tokens = self.vlm.geometry.max_tokens
        config.budget_range(self.max_visual_tokens)  # a bad operator range fails the deployment
        # The model is not thread-safe: one thread runs every batch, so the event loop stays free
        # to queue the next batch while this one computes.
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"hired-{self.role}")
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()
        logger.info("%s replica ready: %s on %s, %d torch threads", self.role, config.model, self.vlm.device, threads)

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

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config, config.vision, "vision")
        self._encode_batch.set_max_batch_size(config.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    async def encode(self, image: Image.Image, drop: DropConfig) -> dict[str, Any]:
        """One image's kept tokens; ``features`` is ``(K, D)`` in the transfer dtype."""
        return _raise_if_error(await self._encode_batch(image, drop))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
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

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config, config.llm, "language")
        for batched in (self._generate_batch, self._stream_batch):
            batched.set_max_batch_size(config.max_batch_size)
            batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    async def generate(self, row: dict[str, Any], prompt: str, options: GenerateOptions) -> dict[str, Any]:
        """The answer for one encoded image: text, token counts, whether a stop string cut it, timings."""
        return _raise_if_error(await self._generate_batch(row, prompt, options))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
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

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
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


# -- HTTP ingress --------------------------------------------------------------------------------

api = FastAPI(title="HiRED chat completions", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(ApiError)
async def _on_api_error(request: Request, error: ApiError) -> JSONResponse:
    return error.response()


@api.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    # unknown routes and wrong methods get OpenAI's error body too
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
    return ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}", code=code).response()


@serve.deployment
@serve.ingress(api)
class HiredIngress:
    """HTTP front: authenticates, validates and decodes, then calls the vision and LLM deployments."""

    def __init__(self, config: ServeConfig, vision: DeploymentHandle, llm: DeploymentHandle) -> None:
        self.config = config
        self.vision = vision
        self.llm = llm
        self.created = int(time.time())
        self._decode_limits = DecodeLimits(max_pixels=config.max_image_pixels, max_bytes=config.max_image_bytes)
        self._max_visual_tokens: int | None = None

    def _authorize(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "no API key provided: send the header 'Authorization: Bearer <key>'", code="invalid_api_key")
        # constant-time comparison: response timing must not reveal how much of a key matched
        if not hmac.compare_digest(token.strip().encode(), self.config.api_key.encode()):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    async def _max_tokens(self) -> int:
        """The model's maximum visual tokens per image, asked of the vision deployment once."""
        if self._max_visual_tokens is None:
            self._max_visual_tokens = int((await self.vision.describe.remote())["max_visual_tokens"])
        return self._max_visual_tokens

    async def _read_json(self, request: Request) -> Any:
        """The body as JSON, read no further than the size limit."""
        limit = self.config.max_request_bytes
        too_large = ApiError(413, f"the request body is larger than this server's limit of {limit} bytes", code="request_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _bad(f"the request body is not valid JSON ({error})", None, "invalid_json") from None

    async def _load_image(self, parsed: ChatRequest) -> Image.Image:
        url, param = parsed.image_url, parsed.image_param
        if url[:5].lower() == "data:":
            data = decode_data_url(url, param, self.config.max_image_bytes)
        else:
            check_remote_url(url, param, self.config.allowed_image_hosts)
            data = await fetch_remote_image(url, param, self.config.max_image_bytes)
        try:
            # decoding is CPU work: keep the event loop answering other requests meanwhile
            return await asyncio.to_thread(decode_image, data, param, self._decode_limits)
        except ImageDecodeError as error:
            raise _bad(str(error), param, "invalid_image") from None

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(self, request: Request) -> JSONResponse | StreamingResponse:
        self._authorize(request)
        parsed = parse_chat_request(await self._read_json(request), self.config, await self._max_tokens())
        image = await self._load_image(parsed)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        model = self.config.served_model_name
        try:
            # the vision response is handed to the LLM unresolved: Serve passes the kept features
            # from one deployment to the other without routing them through this replica
            encoded = self.vision.encode.remote(image, parsed.drop)
            if parsed.stream:
                events = self.llm.options(stream=True).generate_stream.remote(encoded, parsed.prompt, parsed.options)
                # the first event (first text or the whole answer) before the 200: failures of
                # vision, batching or prefill still get a 500 with an error body
                first = await anext(events)
                return StreamingResponse(
                    stream_events(request_id, model, parsed, first, events),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            answer = await self.llm.generate.remote(encoded, parsed.prompt, parsed.options)
        except Exception as error:  # noqa: BLE001 - the server keeps serving; the client gets a 500
            logger.exception("chat completion failed")
            raise ApiError(500, f"the model failed on this request ({type(error).__name__}); see the server log", code="internal_error") from None
        return JSONResponse(completion_body(request_id, model, parsed, answer))

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        entry = {"id": self.config.served_model_name, "object": "model", "created": self.created, "owned_by": "hired"}
        return JSONResponse({"object": "list", "data": [entry]})

    @api.get("/v1/stats")
    async def stats(self, request: Request) -> JSONResponse:
        """Batch-size counts of the vision and LLM replicas that answer this call."""
        self._authorize(request)
        vision, llm = await asyncio.gather(self.vision.describe.remote(), self.llm.describe.remote())
        return JSONResponse({"vision": vision["batches"], "llm": llm["batches"]})

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 when both model deployments answer within seconds, else 503. No auth (for probes)."""
        try:
            vision, _ = await asyncio.wait_for(
                asyncio.gather(self.vision.describe.remote(), self.llm.describe.remote()), timeout=10.0
            )
        except Exception as error:  # noqa: BLE001 - any failure means not healthy
            raise ApiError(503, f"model deployments are not answering ({type(error).__name__})", code="unavailable") from None
        return JSONResponse(
            {"status": "ok", "model": self.config.served_model_name, "max_visual_tokens": vision["max_visual_tokens"]}
        )


# -- building and starting -----------------------------------------------------------------------


def build_application(config: ServeConfig) -> serve.Application:
    """The three deployments bound into one Serve application."""
    common = {"max_ongoing_requests": config.max_ongoing_requests}
    vision = HiredVision.options(
        name="HiredVision", num_replicas=config.vision.num_replicas, ray_actor_options=config.vision.actor_options(), **common
    ).bind(config)
    llm = HiredLLM.options(
        name="HiredLLM", num_replicas=config.llm.num_replicas, ray_actor_options=config.llm.actor_options(), **common
    ).bind(config)
    return HiredIngress.options(
        name="HiredIngress", num_replicas=config.ingress.num_replicas, ray_actor_options=config.ingress.actor_options(),
        **common,
    ).bind(config, vision, llm)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for a Serve config YAML (``import_path: pipeline.serving:build_app``).

    ``args`` are :class:`ServeConfig` fields (``ingress``/``vision``/``llm`` as mappings). Without
    an ``api_key`` arg the key comes from ``$HIRED_API_KEY`` where the application is built, so
    it can stay out of the YAML (set it in the cluster's environment or the app's runtime_env).
    """
    args = dict(args)
    if args.get("api_key") is None and os.environ.get(API_KEY_ENV):
        args["api_key"] = os.environ[API_KEY_ENV]
    return build_application(ServeConfig.from_dict(args))


def wait_until_healthy(url: str, timeout_s: float = 120.0) -> None:
    """Poll ``{url}/health`` until it answers 200; raise RuntimeError after ``timeout_s``."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last: str = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=15) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} did not become healthy within {timeout_s:.0f} s (last: {last})")


def start(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, name: str = "hired") -> str:
    """Deploy the application on the connected Ray cluster (starting Serve's HTTP proxy on
    ``host:port``), wait until it answers, and return its base URL (without ``/v1``)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_application(config), name=name, route_prefix="/", blocking=False)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_until_healthy(url)
    return url
