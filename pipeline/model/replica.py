"""The one set-up every model-holding process runs (Ray Data actors and Serve replicas): set the
torch threads, load only the half it runs, wrap it in a :class:`HiredVLM`."""

from __future__ import annotations

import torch

from hired_ops import DropConfig

from .config import ModelConfig
from .vlm import HiredVLM

HALVES = ("vision", "language")


def torch_threads(model: ModelConfig, num_cpus: float) -> int:
    """Threads for a process that Ray gave ``num_cpus``: the config's, else its whole CPUs."""
    return model.torch_threads or max(1, round(num_cpus))


def load_half(model: ModelConfig, drop: DropConfig, half: str, threads: int) -> HiredVLM:
    """Load ``half`` ("vision" or "language") of ``model`` on ``threads`` torch threads, ready to
    encode or generate with ``drop`` as its default.

    Ray sets OMP threads from a process's CPUs (at least one) and reuses worker processes, so the
    thread count is set here explicitly: a job's pools plan it (pipeline/batch/resources.py), a
    Serve replica takes :func:`torch_threads`. Device "auto" finds the GPU Ray gave the process,
    if any (Ray hides GPUs from processes that reserved none).
    """
    if half not in HALVES:
        raise ValueError(f"half must be one of {HALVES}, got {half!r}")
    torch.set_num_threads(threads)
    return HiredVLM.from_pretrained(
        model.name, drop=drop, device=model.device, dtype=model.dtype, transfer_dtype=model.transfer_dtype, half=half
    )
