"""Allocation policies: how an image's token budget is split over its partitions.

A dropping method is an allocation policy composed with a selection (``hired_ops.selectors``).
Three policies split the budget up front, then each partition selects inside its share:

* ``hired``: HiRED phase 1, ``alpha`` of the budget to the full image, the rest to the
  sub-images by their layer-``l_init`` visual content score (:func:`hired_ops.budget.allocate`).
* ``proportional``: in proportion to each partition's candidate (non-padding) patches; what the
  spatial and random baselines have always used.
* ``even``: the same share for every partition that has candidates.

The fourth, ``global``, splits nothing in advance: every candidate of every partition goes into
one pool and the selector picks from it, so the per-partition budgets are whatever it picked.

All policies are exact: the shares sum to ``min(total, available.sum())`` and no partition gets
more than its candidates (``capped_proportional`` re-spreads what a full partition cannot take).
"""

from __future__ import annotations

import torch

from .budget import allocate, capped_proportional

ALLOCATIONS: tuple[str, ...] = ("hired", "proportional", "even", "global")
# policies whose split reads the full image's CLS attention at l_init
NEEDS_INIT: frozenset[str] = frozenset({"hired"})


def split_budget(
    policy: str,
    total: int,
    available: torch.Tensor,
    alpha: float = 0.5,
    subimage_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-partition budgets for one image under an up-front policy.

    Args:
        policy: "hired", "proportional" or "even" ("global" has no up-front split).
        total: the image's budget, already resolved to a token count.
        available: ``(P,)`` candidate patches per partition (the caps).
        alpha: the full image's share ("hired").
        subimage_scores: ``(P-1,)`` visual content score of each sub-image ("hired").

    Returns:
        ``(P,)`` long, summing to ``min(total, available.sum())``, each at most its cap.
    """
    if policy == "hired":
        if subimage_scores is None:
            raise ValueError("the hired allocation needs the sub-images' content scores (init CLS attention)")
        return allocate(total, alpha, subimage_scores, available)
    if policy == "proportional":
        return capped_proportional(total, available.double(), available)
    if policy == "even":
        return capped_proportional(total, torch.ones(available.numel(), dtype=torch.float64), available)
    raise ValueError(f"no up-front split for allocation {policy!r}: choose one of hired, proportional, even")
