"""What the operator sets for the endpoint: the served model, default dropping and decoding,
limits on requests, and each deployment's replicas and resources."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hired_ops import BUDGETED, METHODS, Budget, DropConfig, parse_method
from pipeline.configs import from_mapping
from pipeline.data.images import DecodeLimits
from pipeline.model.config import ModelConfig, canonical_drop
from pipeline.model.engine import EngineLimits

logger = logging.getLogger("ray.serve")

# where the bearer key comes from when the operator gives none (keeps it out of configs and YAML)
API_KEY_ENV = "HIRED_API_KEY"

# Text, JSON framing and base64 overhead on top of the image bytes a request may carry.
_BODY_SLACK_BYTES = 1 << 20


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
        model: the checkpoint, its placement and the replicas' torch threads.
        drop: the default dropping (a request may change method and budget within the limits).
        decode: limits on decoded images (max_pixels is checked from the header first).
        served_model_name: the name clients pass as model (default: the model's name).
        allowed_methods: methods a request may pick with the hired override (default: all).
        min_budget: smallest budget a request may ask for, tokens or a fraction of the model's
            maximum visual tokens.
        max_budget: largest budget a request may ask for (default: the model's maximum).
        default_max_tokens: completion length when a request sets none.
        max_tokens_limit: most completion tokens a request may ask for.
        max_image_bytes: encoded size limit of one image (413 above it).
        max_images_per_request: images one request may carry; each gets the full budget.
        max_model_len: most positions a request may take, prompt + visual tokens + max_tokens
            (default: the language model's ``max_position_embeddings``; 400 above it).
        max_batch_size: images per @serve.batch batch of the vision deployment.
        batch_wait_timeout_s: how long a vision batch waits to fill.
        max_num_seqs: requests the LLM replica decodes at once (continuous batching: a request
            joins the running batch at the next decoding step with a free row, and leaves it the
            step it ends).
        max_num_batched_tokens: most tokens one decoding step of the LLM replica feeds the model
            (one per running request plus the prompts it admits); a longer prompt is admitted alone.
        max_ongoing_requests: per replica; must be at least max_batch_size and max_num_seqs, or
            batches never fill.
        allowed_image_hosts: hosts (name or name:port) remote image URLs may point at.
        api_key: bearer token clients must send (default: no authentication).
        ingress, vision, llm: replicas and resources of each deployment.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    drop: DropConfig = field(default_factory=DropConfig)
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    served_model_name: str | None = None
    allowed_methods: tuple[str, ...] = METHODS
    min_budget: Budget | str | float | int = 1
    max_budget: Budget | str | float | int | None = None
    default_max_tokens: int = 64
    max_tokens_limit: int = 512
    max_image_bytes: int = 20 * 2**20
    max_images_per_request: int = 4
    max_model_len: int | None = None
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05
    max_num_seqs: int = 8
    max_num_batched_tokens: int = 8192
    max_ongoing_requests: int = 64
    allowed_image_hosts: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    ingress: DeploymentResources = DeploymentResources(num_cpus=0.25)
    vision: DeploymentResources = DeploymentResources()
    llm: DeploymentResources = DeploymentResources()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising fields of a frozen dataclass

    def __post_init__(self) -> None:
        self._set("served_model_name", self.served_model_name or self.model.name)
        self._set("drop", canonical_drop(self.drop))
        self._set("allowed_methods", _names(self.allowed_methods))
        for method in self.allowed_methods:
            parse_method(method)  # a preset or "allocation+selection"; the error lists them
        if self.drop.method not in self.allowed_methods:
            raise ValueError(f"the default method {self.drop.method!r} must be in allowed_methods {self.allowed_methods}")
        self._set("min_budget", Budget.parse(self.min_budget))
        if self.max_budget is not None:
            self._set("max_budget", Budget.parse(self.max_budget))
        for name in (
            "default_max_tokens", "max_tokens_limit", "max_image_bytes", "max_images_per_request", "max_batch_size",
            "max_ongoing_requests",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_model_len is not None and (isinstance(self.max_model_len, bool) or self.max_model_len < 2):
            raise ValueError(f"max_model_len must be an integer >= 2 (or unset for the model's), got {self.max_model_len!r}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens {self.default_max_tokens} exceeds max_tokens_limit {self.max_tokens_limit}")
        self.engine_limits  # validates max_num_seqs and max_num_batched_tokens
        for name in ("max_batch_size", "max_num_seqs"):
            if self.max_ongoing_requests < getattr(self, name):
                raise ValueError(
                    f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= {name} "
                    f"({getattr(self, name)}), or a replica never receives enough requests to fill a batch"
                )
        if not 0 <= self.batch_wait_timeout_s <= 10:
            raise ValueError(f"batch_wait_timeout_s must be in [0, 10] seconds, got {self.batch_wait_timeout_s}")
        self._set("allowed_image_hosts", tuple(h.lower() for h in _names(self.allowed_image_hosts)))
        if any("/" in h for h in self.allowed_image_hosts):
            raise ValueError(f"allowed_image_hosts holds host names like 'images.example.com[:port]', got {self.allowed_image_hosts}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty: leave it unset to serve without authentication")
        for name in ("ingress", "vision", "llm"):
            if not isinstance(getattr(self, name), DeploymentResources):
                raise ValueError(f"{name} must be a mapping of num_replicas/num_cpus/num_gpus, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> "ServeConfig":
        """Build from plain data (a Serve config YAML's ``args``): nested mappings for ``model``,
        ``drop``, ``decode`` and the deployments; unknown keys are an error."""
        try:
            return from_mapping(cls, args)
        except TypeError as error:
            raise ValueError(f"bad Serve config args: {error}") from None

    @property
    def engine_limits(self) -> EngineLimits:
        """The LLM replica's continuous-batching limits."""
        return EngineLimits(self.max_num_seqs, self.max_num_batched_tokens)

    @property
    def decode_limits(self) -> DecodeLimits:
        """The image limits the ingress checks: the decode limits, bytes capped per request."""
        return dataclasses.replace(self.decode, max_bytes=min(self.decode.max_bytes, self.max_image_bytes))

    def budget_range(self, max_visual_tokens: int) -> tuple[int, int]:
        """``[min, max]`` budget in tokens for a model yielding at most ``max_visual_tokens``."""
        low = self.min_budget.resolve(max_visual_tokens)
        high = self.max_budget.resolve(max_visual_tokens) if self.max_budget is not None else max_visual_tokens
        if low > high:
            raise ValueError(f"min_budget {self.min_budget} ({low} tokens) is above max_budget {self.max_budget} ({high} tokens)")
        if self.drop.method == "full" and high < max_visual_tokens:
            raise ValueError(f"the default method 'full' keeps {max_visual_tokens} tokens, above max_budget ({high} tokens)")
        if self.drop.method in BUDGETED and not low <= self.drop.budget.resolve(max_visual_tokens) <= high:
            raise ValueError(
                f"the default budget {self.drop.budget} ({self.drop.budget.resolve(max_visual_tokens)} tokens) is outside "
                f"[min_budget, max_budget] = [{low}, {high}] tokens"
            )
        return low, high

    @property
    def max_request_bytes(self) -> int:
        """Largest request body read: base64 images at the byte limit plus the text around them."""
        return math.ceil(self.max_image_bytes * 4 / 3) * self.max_images_per_request + _BODY_SLACK_BYTES


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    """A list of names as a tuple; a single string may hold several, comma-separated."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())
