"""Which checkpoint to run, where, and in what precision: one config for the Ray actors, the
Serve replicas and in-process benchmarks alike."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from hired_ops import BUDGETED, DropConfig

from .encoded import check_transfer_dtype
from .loading import DEFAULT_MODEL

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    """The model and its placement. Validated at construction.

    Attributes:
        name: built-in name (hired/testbed-llava-next, trained here; hired/tiny-llava-next and the
            other hired/* models have random weights), checkpoint directory or hub id.
        device: auto (CUDA when present, else the CPU), cpu, cuda, cuda:1, ...
        dtype: auto (fp32 for a checkpoint saved in fp32, such as the testbed; otherwise bf16 or
            fp16 on GPUs, bf16 on CPUs with native bf16 (AMX or AVX512-BF16), else fp32),
            float32, float16 or bfloat16.
        transfer_dtype: dtype of the kept features handed from the vision half to the LLM half
            (float16 halves the bytes; float32 keeps them exact).
        torch_threads: intra-op threads per actor or replica (default: its CPUs, at least one).
    """

    name: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    transfer_dtype: Literal["float16", "float32"] = "float16"
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model must be a built-in name, a checkpoint directory or a hub id")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_transfer_dtype(self.transfer_dtype)
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")

    def to_params(self) -> dict[str, Any]:
        """MLflow params under the names runs have always used (``model``, not ``name``)."""
        return {
            "model": self.name,
            "device": self.device,
            "dtype": self.dtype,
            "transfer_dtype": self.transfer_dtype,
            "torch_threads": self.torch_threads,
        }


def canonical_drop(drop: DropConfig) -> DropConfig:
    """``drop`` without a budget when its method chooses its own token count, so that equal
    settings compare, batch and log as equal."""
    if drop.budget is not None and drop.method not in BUDGETED:
        return replace(drop, budget=None)
    return drop
