"""The OpenAI chat-completions protocol as typed pydantic models (as vLLM's server protocol module
does it): the request with strict types, its conversion to our ``DropConfig`` /
``GenerateOptions`` and a model conversation, and the completion and chunk bodies of the answers.

Validation errors become 400 bodies whose ``param`` names the field (``messages[0].content``).
What pydantic cannot know (the served model name, the operator's limits, the ``hired`` extension's
allow-list) is checked in :meth:`ChatCompletionRequest.to_chat`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from hired_ops import BUDGETED, Budget, DropConfig
from pipeline.model.generation import SEED_RANGE, GenerateOptions

from .config import ServeConfig
from .errors import ApiError, bad_request

_STOP_MAX = 4  # as in OpenAI's API
_TOP_LOGPROBS_MAX = 20  # as in OpenAI's API
# loc entries pydantic adds for discriminator tags and union members, not field names
_TAGS = frozenset({"system", "developer", "user", "assistant", "tool", "function", "text", "image_url"})
_MEMBERS = frozenset({"str", "int", "float", "bool"})


class _Strict(BaseModel):
    # strict: no "8" for 8, no true for 1; no NaN or Infinity where a number goes; unknown fields
    # are refused rather than silently ignored
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def _refuse(param: str, message: str, code: str = "unsupported_value") -> PydanticCustomError:
    """An error of a whole-model check, naming the field it is about (its ``loc`` is empty)."""
    return PydanticCustomError(code, message, {"param": param})


# -- request --------------------------------------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: Annotated[str, Field(min_length=1)]
    detail: Literal["auto", "low", "high"] = "auto"


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class SystemMessage(_Strict):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]]
    name: str | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None

    @model_validator(mode="after")
    def _no_tools(self) -> AssistantMessage:
        if self.tool_calls:
            raise _refuse("tool_calls", "tool calls are not supported by this server")
        return self


class ToolMessage(BaseModel):
    role: Literal["tool", "function"]

    @model_validator(mode="after")
    def _refuse(self) -> ToolMessage:
        raise _refuse("role", "tool and function messages are not supported by this server")


Message = Annotated[Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage], Field(discriminator="role")]


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: str

    @model_validator(mode="after")
    def _text_only(self) -> ResponseFormat:
        if self.type != "text":
            raise _refuse("type", f"response_format {self.type!r} is not supported: this server answers in plain text")
        return self


class HiredOverride(_Strict):
    """The ``hired`` extension: dropping method and budget for this request."""

    method: str | None = None
    budget: str | int | float | None = None


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``: the OpenAI fields this server honours, strictly typed, and
    the ones it cannot honour refused unless left at their default."""

    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=_STOP_MAX)] | None = None
    seed: Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=_TOP_LOGPROBS_MAX)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    user: str | None = None
    hired: HiredOverride | None = None

    @model_validator(mode="after")
    def _refuse_unimplemented(self) -> ChatCompletionRequest:
        if self.n not in (None, 1):
            raise _refuse("n", "'n' must be 1: send several requests for several answers")
        if self.tools or self.tool_choice not in (None, "none"):
            raise _refuse("tools" if self.tools else "tool_choice", "tools are not supported by this server")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise _refuse(name, f"'{name}' is not supported by this server: leave it out or at 0")
        if self.top_logprobs is not None and not self.logprobs:
            raise _refuse("top_logprobs", "'top_logprobs' needs 'logprobs': true", "invalid_value")
        if self.logprobs and self.stream:
            raise _refuse("logprobs", "logprobs are returned for non-streamed requests only: drop 'stream' or 'logprobs'")
        if not isinstance(self.messages[-1], UserMessage):
            raise _refuse(f"messages[{len(self.messages) - 1}].role", "the last message must be the user's", "invalid_value")
        return self

    @classmethod
    def parse(cls, body: Any) -> ChatCompletionRequest:
        """Validate a decoded JSON body.

        Raises:
            ApiError: 400 naming the first offending field.
        """
        try:
            return cls.model_validate(body)
        except ValidationError as error:
            raise validation_error(error.errors()) from None

    def to_chat(self, config: ServeConfig, max_visual_tokens: int) -> ChatRequest:
        """The request in our terms, checked against the operator's limits.

        Raises:
            ApiError: 404 for another model name, 400 for a value outside the server's limits.
        """
        if self.model != config.served_model_name:
            raise ApiError(
                404, f"the model {self.model!r} does not exist on this server; it serves {config.served_model_name!r}",
                param="model", code="model_not_found",
            )
        messages, images = _conversation(self.messages)
        if len(images) > config.max_images_per_request:
            raise bad_request(
                f"the request has {len(images)} images; this server accepts at most {config.max_images_per_request}",
                images[config.max_images_per_request][1], "too_many_images",
            )
        return ChatRequest(
            messages=messages,
            images=tuple(images),
            drop=_drop_config(self.hired, config, max_visual_tokens),
            options=self._options(config),
            stream=self.stream,
            include_usage=bool(self.stream_options and self.stream_options.include_usage),
            top_logprobs=(self.top_logprobs or 0) if self.logprobs else None,
        )

    def _options(self, config: ServeConfig) -> GenerateOptions:
        name, max_tokens = (
            ("max_tokens", self.max_tokens) if self.max_tokens is not None
            else ("max_completion_tokens", self.max_completion_tokens)
        )
        max_tokens = config.default_max_tokens if max_tokens is None else max_tokens
        if max_tokens > config.max_tokens_limit:
            raise bad_request(f"'{name}' must be in [1, {config.max_tokens_limit}], got {max_tokens}", name)
        return GenerateOptions(
            max_new_tokens=max_tokens,
            temperature=0.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=(self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ()),
            seed=self.seed,
        )


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A validated request in our terms.

    Attributes:
        messages: chat-template messages (``HiredVLM.chat_ids``), one ``{"type": "image"}`` slot
            per image.
        images: ``(url, param)`` of each image in slot order; ``param`` names its request field.
        drop: the drop configuration after the ``hired`` override (every image gets its budget).
        options: decoding settings.
        stream, include_usage: SSE response, and a usage chunk at its end.
        top_logprobs: alternatives per token when logprobs were asked for, else None.
    """

    messages: list[dict[str, Any]]
    images: tuple[tuple[str, str], ...]
    drop: DropConfig
    options: GenerateOptions
    stream: bool = False
    include_usage: bool = False
    top_logprobs: int | None = None

    @property
    def instructions(self) -> tuple[str, ...]:
        """Per image, in slot order, the text an instruction-aware selection scores against: the
        text of the user turn that holds the image (the question asked of it, as a job row's
        prompt is), or the last user turn's for an image sent without text."""
        users = [m for m in self.messages if m["role"] == "user"]
        texts = [next(p["text"] for p in m["content"] if p["type"] == "text") for m in users]
        last = texts[-1] if texts else ""
        return tuple(text or last for m, text in zip(users, texts) for p in m["content"] if p["type"] == "image")


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """A 400 for pydantic's errors: the deepest one, whose ``loc`` is the most precise."""
    first = max(errors, key=lambda e: len(e["loc"]))
    param = _param(first["loc"])
    named = (first.get("ctx") or {}).get("param")
    if named:  # a whole-model check inside the object at loc
        param = f"{param}.{named}" if param else named
    kind = first["type"]
    code = {"missing": "missing_field", "extra_forbidden": "unknown_field", "unsupported_value": "unsupported_value"}.get(
        kind, "invalid_type" if kind.endswith("_type") or kind.startswith("union_tag") else "invalid_value"
    )
    # a value that fits no member of a union (str | int | float) fails once per member: say all
    details = dict.fromkeys(e["msg"] for e in errors if _param(e["loc"]) == _param(first["loc"]))
    detail = ", or ".join(details)
    if kind == "extra_forbidden":
        detail = "unknown field: this server does not support it"
    elif kind == "missing":
        detail = "missing required field"
    return bad_request(f"{param or 'body'}: {detail}" if param else detail, param or None, code)


def _param(loc: tuple[Any, ...]) -> str:
    """``messages[0].content[1].image_url.url`` from pydantic's ``loc``, less union and tag entries."""
    out = ""
    previous: Any = None
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif not (item in _MEMBERS or "[" in item or "-" in item or (isinstance(previous, int) and item in _TAGS)):
            out += f".{item}" if out else item
        previous = item
    return out


def _text(content: str | list[TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(part.text for part in content)


def _conversation(messages: list[Any]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Chat-template messages and the image URLs, from OpenAI messages.

    System and developer text goes in front of the next user turn's text (LLaVA templates have no
    system turn); in each user turn its images come first, then its text parts joined by
    newlines, as LLaVA was trained (the image before the question).
    """
    out: list[dict[str, Any]] = []
    images: list[tuple[str, str]] = []
    preamble: list[str] = []
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage):
            preamble.append(_text(message.content))
        elif isinstance(message, AssistantMessage):
            out.append({"role": "assistant", "content": [{"type": "text", "text": _text(message.content)}]})
        else:
            parts = [message.content] if isinstance(message.content, str) else message.content
            texts = [*preamble, *(p if isinstance(p, str) else p.text for p in parts if not isinstance(p, ImagePart))]
            preamble = []
            slots = []
            for j, part in enumerate(parts):
                if isinstance(part, ImagePart):
                    images.append((part.image_url.url, f"messages[{i}].content[{j}].image_url.url"))
                    slots.append({"type": "image"})
            out.append({"role": "user", "content": [*slots, {"type": "text", "text": "\n".join(texts)}]})
    return out, images


def _drop_config(override: HiredOverride | None, config: ServeConfig, max_visual_tokens: int) -> DropConfig:
    """The ``hired`` extension: method and budget within the operator's limits."""
    if override is None:
        return config.drop
    method = override.method or config.drop.method
    if method not in config.allowed_methods:
        raise bad_request(
            f"method {method!r} is not allowed on this server; allowed: {', '.join(config.allowed_methods)}",
            "hired.method", "method_not_allowed",
        )
    low, high = config.budget_range(max_visual_tokens)
    if method not in BUDGETED:
        if override.budget is not None:
            raise bad_request(f"method {method!r} chooses its own token count and takes no budget", "hired.budget")
        if method == "full" and high < max_visual_tokens:
            raise bad_request(
                f"method 'full' keeps all {max_visual_tokens} visual tokens, above this server's max_budget of {high}",
                "hired.method", "budget_out_of_range",
            )
        return dataclasses.replace(config.drop, method=method, budget=None)
    raw = config.drop.budget if override.budget is None else override.budget
    try:
        tokens = Budget.parse(raw).resolve(max_visual_tokens)
    except (ValueError, OverflowError) as error:
        raise bad_request(f"invalid 'hired.budget': {error}", "hired.budget", "invalid_budget") from None
    if not low <= tokens <= high:
        raise bad_request(
            f"budget {raw!r} is {tokens} visual tokens, outside this server's range [{low}, {high}] "
            f"(the model's maximum is {max_visual_tokens})",
            "hired.budget", "budget_out_of_range",
        )
    return dataclasses.replace(config.drop, method=method, budget=Budget.parse(raw))


# -- responses ------------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobBody(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobBody] | None = None


class Usage(BaseModel):
    """OpenAI's counts plus ``visual_tokens``: tokens kept over all images of the request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    visual_tokens: int


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AnswerMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    hired: dict[str, Any]


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class StreamChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = None
    hired: dict[str, Any] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hired"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
