"""Typed configuration of a dataset job, validated at construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hired_ops import BUDGETED, METHODS, Budget, DropConfig

from .engine import GenerateOptions
from .images import DecodeLimits
from .loading import DEFAULT_MODEL

DEFAULT_PROMPT = "Describe the image in one sentence."
# Unset pools on a GPU cluster: one vision and one LLM actor share each GPU.
AUTO_GPUS_PER_ACTOR = 0.5


@dataclass(frozen=True)
class PoolConfig:
    """One Ray actor pool: how many actors, what each holds, how many rows per call.

    ``num_gpus`` may be a fraction so the vision and LLM pools share one GPU; ``None`` means
    :data:`AUTO_GPUS_PER_ACTOR` when the Ray cluster has GPUs and 0 otherwise (Ray hides GPUs from
    actors that reserve none, so "CUDA when present" needs a reservation).
    """

    size: int = 1
    batch_size: int = 8
    num_gpus: float | None = None
    num_cpus: float = 0.5

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"pool size must be >= 1, got {self.size}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if (self.num_gpus is not None and self.num_gpus < 0) or self.num_cpus < 0:
            raise ValueError("num_gpus and num_cpus must be >= 0")

    def gpus(self, cluster_gpus: float) -> float:
        """GPUs each actor reserves on a cluster with ``cluster_gpus`` GPUs."""
        if self.num_gpus is not None:
            return self.num_gpus
        return AUTO_GPUS_PER_ACTOR if cluster_gpus > 0 else 0.0


@dataclass(frozen=True)
class JobConfig:
    """A captioning / question-answering job over a dataset.

    Attributes:
        input: a folder, glob, image, or Parquet/JSONL manifest (local or any fsspec URL).
        output: a folder (local or object store) that receives Parquet files.
        model: built-in name (``hired/tiny-llava-next``), local directory, or hub id.
        method, budget, alpha, l_init, l_final, newlines: the dropping, as in ``DropConfig``.
        prompt: instruction for rows whose manifest gives none.
        vision, llm: the two actor pools. decode_batch_size: rows per decode task.
        max_new_tokens, temperature: decoding.
        device, dtype: "auto" picks CUDA and bf16/fp16 when present, else CPU and fp32.
        transfer_dtype: features between the pools ("float16" halves the bytes).
        resume: skip ids already in ``output``.
        limit: process at most this many inputs (after resume filtering).
        max_padding: padding share the LLM stage accepts before it splits a batch by length.
    """

    input: str
    output: str
    model: str = DEFAULT_MODEL
    method: str = "hired"
    budget: str | None = "0.2"
    alpha: float = 0.5
    l_init: int = 0
    l_final: int | None = None
    newlines: str = "auto"
    prompt: str = DEFAULT_PROMPT
    vision: PoolConfig = field(default_factory=PoolConfig)
    llm: PoolConfig = field(default_factory=PoolConfig)
    decode_batch_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 0.0
    device: str = "auto"
    dtype: str = "auto"
    transfer_dtype: str = "float16"
    resume: bool = True
    limit: int | None = None
    max_padding: float = 0.1
    max_image_pixels: int = DecodeLimits().max_pixels
    storage_options: dict[str, Any] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.input:
            raise ValueError("input is required: a folder, glob, image file or manifest")
        if not self.output:
            raise ValueError("output is required: a folder for the Parquet files")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.budget is not None:
            object.__setattr__(self, "budget", str(Budget.parse(self.budget)))
        elif self.method in BUDGETED:
            raise ValueError(f"method {self.method!r} needs --budget (e.g. 0.2 or 576)")
        if self.decode_batch_size < 1:
            raise ValueError("decode_batch_size must be >= 1")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")
        if not 0.0 <= self.max_padding < 1.0:
            raise ValueError("max_padding must be in [0, 1)")
        if self.transfer_dtype not in ("float16", "float32"):
            raise ValueError("transfer_dtype must be float16 or float32")
        self.drop_config()  # validates alpha, newlines, ...
        self.generate_options()

    def drop_config(self) -> DropConfig:
        return DropConfig(
            method=self.method,
            budget=Budget.parse(self.budget) if self.budget is not None else None,
            alpha=self.alpha,
            l_init=self.l_init,
            l_final=self.l_final,
            newlines=self.newlines,
            seed=self.seed,
        )

    def generate_options(self) -> GenerateOptions:
        return GenerateOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed)

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(max_pixels=self.max_image_pixels)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dict (for MLflow params and the resolved-config artifact)."""
        values = asdict(self)
        if values.get("storage_options"):
            values["storage_options"] = {k: "***" for k in values["storage_options"]}  # may hold secrets
        return values
