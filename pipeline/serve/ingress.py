"""The HTTP ingress of the endpoint (FastAPI inside a Serve deployment).

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
``import_path`` is ``pipeline.serve.app:build_app`` and whose ``args`` are :class:`ServeConfig`
fields (see ``cluster/serve/serve_config.yaml``).
"""

# No ``from __future__ import annotations`` here: Serve re-wraps the ingress methods, and FastAPI
# must see real ``Request`` annotations on them, not strings it resolves in the wrong module.
import asyncio
import hmac
import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.data.images import ImageDecodeError, decode_image

from .config import ServeConfig
from .errors import ApiError, bad_request
from .images import check_remote_url, decode_data_url, fetch_remote_image
from .protocol import ChatRequest, completion_body, parse_chat_request, stream_events

logger = logging.getLogger("ray.serve")


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
        self._decode_limits = config.decode_limits
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
            raise bad_request(f"the request body is not valid JSON ({error})", None, "invalid_json") from None

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
            raise bad_request(str(error), param, "invalid_image") from None

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
