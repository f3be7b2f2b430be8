"""Which patches a partition keeps, given its budget: HiRED's phase 2 and the simple baselines.

Every selector takes a partition's candidate mask and budget and returns kept patch indices in
ascending (raster) order, so the LLM sees kept tokens in their original spatial order.
"""

from __future__ import annotations

import torch


def top_k(scores: torch.Tensor, candidates: torch.Tensor, budget: int) -> torch.Tensor:
    """HiRED phase 2: the ``budget`` candidates with the highest score, in raster order.

    Args:
        scores: ``(N,)`` feature importance (l_final CLS attention summed over heads).
        candidates: ``(N,)`` bool, patches that may be kept.
        budget: how many to keep (at most the number of candidates).

    Returns:
        ``(budget,)`` long, ascending.
    """
    masked = torch.where(candidates, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float32))
    # stable sort: equal scores resolve to the lower index, so results are reproducible
    order = torch.sort(-masked, stable=True).indices[:budget]
    return order.sort().values


def uniform(candidates: torch.Tensor, budget: int) -> torch.Tensor:
    """Spatial baseline: ``budget`` candidates at a uniform stride through the raster order."""
    pool = candidates.nonzero().flatten()
    if budget >= pool.numel():
        return pool
    picks = ((torch.arange(budget, dtype=torch.float64) + 0.5) * pool.numel() / budget).long()
    return pool[picks]


def random_subset(candidates: torch.Tensor, budget: int, generator: torch.Generator) -> torch.Tensor:
    """Random baseline: ``budget`` candidates drawn without replacement, in raster order."""
    pool = candidates.nonzero().flatten()
    picks = torch.randperm(pool.numel(), generator=generator)[:budget]
    return pool[picks].sort().values
