"""Peak memory of this process, reported by each actor or replica (MLflow's system metrics watch
only the driver). Imports neither MLflow nor matplotlib: every actor imports it."""

from __future__ import annotations

import logging
import resource
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:


    pass

logger = logging.getLogger(__name__)


def peak_memory_stats(actor_name: str) -> dict[str, Any]:
    """This process's peak memory, for an actor to report (MLflow only watches the driver).

    Returns:
        ``{"actor": actor_name, "peak_accelerator_bytes": int, "peak_host_bytes": int}``: the most
        memory torch allocated on the process's CUDA devices (summed over devices; 0 without CUDA)
        and the process's peak resident set size.
    """
    accelerator = 0
    torch = sys.modules.get("torch")  # an actor that never imported torch used no accelerator
    if torch is not None and torch.cuda.is_available():
        accelerator = sum(torch.cuda.max_memory_allocated(device) for device in range(torch.cuda.device_count()))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    host = peak_rss if sys.platform == "darwin" else peak_rss * 1024  # Linux reports KiB, macOS bytes
    return {"actor": actor_name, "peak_accelerator_bytes": int(accelerator), "peak_host_bytes": int(host)}
