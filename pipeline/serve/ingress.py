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

* ``POST /v1/chat/completions``: OpenAI chat schema, typed in ``protocol.ChatCompletionRequest``.
  ``messages`` is a conversation (``system``/``developer``, ``user`` and earlier ``assistant``
  turns, the last one the user's) rendered with the model's chat template; user turns may carry
  ``image_url`` parts (up to ``max_images_per_request`` per request, each with the full budget,
  placed before that turn's text) or none (text-only). ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature``, ``top_p``, ``stop``, ``seed``, ``logprobs`` and
  ``top_logprobs`` (non-streamed), ``stream`` and ``stream_options.include_usage`` are honoured;
  ``n`` other than 1, ``tools``, ``response_format`` other than text and penalties are refused
  with 400, and so is any field the schema does not know.
* Context length: prompt + visual tokens (an upper bound from the budget and the image's size,
  ``context.visual_bound``) + ``max_tokens`` must fit ``max_model_len``, else 400
  ``context_length_exceeded`` before any model work.
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
  request's decoding at once, streamed or not, and usage counts the tokens up to the one that
  completed it in both modes. A failure after the first event is sent as an ``{"error": ...}``
  event and ends the stream without ``[DONE]``.
* A client that disconnects cancels its request: Serve cancels the calls, the LLM replica
  finishes that row at its next decoding step (or drops it before it starts), and a request that
  fails in a prefill fails alone (the requests prefilled with it are retried one by one).
* ``GET /v1/models`` and ``GET /v1/models/{id}`` describe the served model; ``GET /v1/stats``
  gives batch-size counts of the vision and LLM replicas that answer it (LLM: rows per decoding
  step); ``GET|HEAD /health`` (no auth) checks both model deployments answer; ``/docs`` and ``/openapi.json`` describe the API.
  Metrics go to Prometheus through Ray Serve's metrics (``metrics.ServeMetrics``).
* The response's ``usage`` adds ``visual_tokens`` (tokens kept for the image) to the OpenAI
  counts, and a top-level ``hired`` block gives method, budget and timings.

Errors use OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``:

====  ================================================================================
400   malformed or too deeply nested JSON, NaN/Infinity, missing, unknown or mistyped fields,
      unsupported features, bad base64, bytes that are not an image (or declare more than
      ``max_image_pixels``), too many images, a remote ``http(s)`` image whose host is not
      allowlisted, a budget or method out of range, ``context_length_exceeded``
401   ``api_key`` set and the ``Authorization: Bearer`` token missing or wrong
404   ``model`` is not the served model name (``model_not_found``), unknown route
413   an image over ``max_image_bytes`` or a request body over the matching limit
500   an unexpected failure (logged; the server keeps serving), always as a JSON error body
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

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.data.images import ImageDecodeError, decode_image

from .config import ServeConfig
from .context import check_context, visual_bound
from .decoding import LLMJob
from .errors import ApiError, bad_request
from .images import check_remote_url, decode_data_url, fetch_remote_image
from .metrics import ServeMetrics
from .protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ChatRequest,
    ModelCard,
    ModelList,
    validation_error,
)
from .responses import completion, stream_events

logger = logging.getLogger("ray.serve")


api = FastAPI(title="HiRED chat completions", description="OpenAI-compatible chat completions with visual token dropping.")


def _openapi() -> dict[str, Any]:
    """FastAPI's schema plus the chat request's: the route reads its body itself (size cap and
    JSON checks before parsing), so FastAPI cannot see the model behind it."""
    if api.openapi_schema is None:
        schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        request = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request.pop("$defs", {}))
        components["ChatCompletionRequest"] = request
        schema["paths"]["/v1/chat/completions"]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}},
        }
        api.openapi_schema = schema
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]


@api.exception_handler(ApiError)
async def _on_api_error(request: Request, error: ApiError) -> JSONResponse:
    return error.response()


@api.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    # unknown routes and wrong methods get OpenAI's error body too
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
    return ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}", code=code).response()


@api.exception_handler(RequestValidationError)
async def _on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return validation_error(list(error.errors())).response()


@api.exception_handler(Exception)
async def _on_anything_else(request: Request, error: Exception) -> JSONResponse:
    # whatever raised it, the client gets OpenAI's error body, never a plain-text 500
    logger.exception("unexpected failure on %s %s", request.method, request.url.path)
    return ApiError(500, f"internal error ({type(error).__name__}); see the server log", code="internal_error").response()


def _parse_json(body: bytes) -> Any:
    """JSON as the standard allows it: no NaN or Infinity literals, nesting within the parser's
    recursion limit (a deeper body raises RecursionError, which is the client's fault here)."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(body, parse_constant=no_constants)
    except RecursionError:
        raise bad_request("the request body is nested too deeply", None, "invalid_json") from None
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise bad_request(f"the request body is not valid JSON ({error})", None, "invalid_json") from None


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
        self._facts: dict[str, Any] | None = None
        self.metrics = ServeMetrics()

    def _authorize(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "no API key provided: send the header 'Authorization: Bearer <key>'", code="invalid_api_key")
        # constant-time comparison: response timing must not reveal how much of a key matched
        if not hmac.compare_digest(token.strip().encode(), self.config.api_key.encode()):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    async def _model_facts(self) -> dict[str, Any]:
        """Visual tokens and geometry (vision) and the served context (LLM), asked once."""
        if self._facts is None:
            vision, llm = await asyncio.gather(self.vision.describe.remote(), self.llm.describe.remote())
            self._facts = {
                "max_visual_tokens": int(vision["max_visual_tokens"]),
                "geometry": vision["geometry"],
                "max_model_len": int(llm["max_model_len"]),
            }
        return self._facts

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
        return _parse_json(bytes(body))

    async def _load_image(self, url: str, param: str) -> Image.Image:
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

    async def _prepare(self, request: Request) -> tuple[ChatRequest, list[Image.Image], LLMJob]:
        """Everything checked before model work: body, schema, limits, images, context length."""
        self._authorize(request)
        body = await self._read_json(request)
        facts = await self._model_facts()
        parsed = ChatCompletionRequest.parse(body).to_chat(self.config, facts["max_visual_tokens"])
        images = list(await asyncio.gather(*(self._load_image(url, param) for url, param in parsed.images)))
        ids = await self.llm.tokenize.remote(parsed.messages)
        visual = sum(
            visual_bound(facts["geometry"], (image.height, image.width), parsed.drop, facts["max_visual_tokens"])
            for image in images
        )
        check_context(len(ids) - len(images), visual, parsed.options.max_new_tokens, facts["max_model_len"])
        return parsed, images, LLMJob(tuple(ids), parsed.options, parsed.top_logprobs)

    @api.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(self, request: Request) -> Response:
        """OpenAI chat completions (see ``protocol.ChatCompletionRequest`` for the request schema)."""
        try:
            response = await self._chat(request)
        except ApiError as error:
            self.metrics.answered(error.status)
            raise
        self.metrics.answered(response.status_code)
        return response

    async def _chat(self, request: Request) -> Response:
        parsed, images, job = await self._prepare(request)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        model = self.config.served_model_name
        # the vision responses are handed to the LLM unresolved: Serve passes the kept features
        # from one deployment to the other without routing them through this replica
        encoded = [
            self.vision.encode.remote(image, parsed.drop, instruction)
            for image, instruction in zip(images, parsed.instructions)
        ]
        calls: list[Any] = list(encoded)
        try:
            if parsed.stream:
                events = self.llm.options(stream=True).generate_stream.remote(job, *encoded)
                calls.append(events)
                # the first event (first text or the whole answer) before the 200: failures of
                # vision, batching or prefill still get a 500 with an error body
                first = await anext(events)

                def on_end(answer: dict[str, Any] | None) -> None:
                    if answer is None:  # failed, or the client went away: stop the model's work
                        events.cancel()
                    else:
                        self.metrics.usage(answer["prompt_tokens"], answer["generated_tokens"], answer["visual_tokens"])

                return StreamingResponse(
                    stream_events(request_id, model, parsed, first, events, on_end),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            call = self.llm.generate.remote(job, *encoded)
            calls.append(call)
            answer = await call
        except asyncio.CancelledError:
            # the client disconnected: cancel what was started on its behalf
            for pending in calls:
                pending.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - the server keeps serving; the client gets a 500
            logger.exception("chat completion failed")
            raise ApiError(500, f"the model failed on this request ({type(error).__name__}); see the server log", code="internal_error") from None
        self.metrics.usage(answer["prompt_tokens"], answer["generated_tokens"], answer["visual_tokens"])
        return JSONResponse(completion(request_id, model, parsed, answer).model_dump())

    def _card(self, max_model_len: int) -> ModelCard:
        return ModelCard(id=self.config.served_model_name, created=self.created, max_model_len=max_model_len)

    @api.get("/v1/models", response_model=ModelList)
    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        card = self._card((await self._model_facts())["max_model_len"])
        return JSONResponse(ModelList(data=[card]).model_dump())

    @api.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model(self, model_id: str, request: Request) -> JSONResponse:
        """One model (``client.models.retrieve``); 404 for any other name."""
        self._authorize(request)
        if model_id != self.config.served_model_name:
            raise ApiError(404, f"the model {model_id!r} does not exist on this server", param="model", code="model_not_found")
        return JSONResponse(self._card((await self._model_facts())["max_model_len"]).model_dump())

    @api.get("/v1/stats")
    async def stats(self, request: Request) -> JSONResponse:
        """Batch-size counts of the vision and LLM replicas that answer this call."""
        self._authorize(request)
        vision, llm = await asyncio.gather(self.vision.describe.remote(), self.llm.describe.remote())
        return JSONResponse({"vision": vision["batches"], "llm": llm["batches"]})

    @api.get("/health")
    @api.head("/health")
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
