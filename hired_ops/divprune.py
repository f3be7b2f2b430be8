"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175): keep a max-min diverse subset.

DivPrune casts pruning as the Max-Min Diversity Problem: among the candidate tokens, choose
``k`` whose smallest pairwise distance is as large as possible, with the cosine distance
``d(u, v) = 1 - cos(x_u, x_v)`` between token features. The problem is NP-hard; the paper solves
it greedily, and so do we:

1. the first token is the most isolated one: the candidate whose nearest other candidate is
   farthest away, ``argmax_v min_{u != v} d(u, v)``;
2. every later step adds the candidate farthest from the kept set,
   ``argmax_v min_{s in S} d(v, s)`` (farthest-point sampling).

Ties go to the lower patch index. The paper measures distance on the visual tokens entering the
LLM; here the features are the pre-projector ones (the projector runs in the LLM stage, after
the drop), which is what the vision stage has.
"""

from __future__ import annotations

import torch


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """``(G, M, M)`` float32 cosine distances ``1 - cos`` between the tokens of each pool ``(G, M, D)``."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    return 1.0 - unit @ unit.transpose(1, 2)


def select(features: torch.Tensor, candidates: torch.Tensor, budgets: torch.Tensor) -> list[torch.Tensor]:
    """Greedy max-min diverse subsets, all pools at once.

    Args:
        features: ``(G, M, D)`` token features per pool.
        candidates: ``(G, M)`` bool, tokens that may be kept.
        budgets: ``(G,)`` long, tokens to keep per pool (at most its candidates).

    Returns:
        Per pool, ``(budgets[g],)`` long kept indices, ascending, on the CPU.
    """
    num_pools, width = candidates.shape
    device = features.device
    candidates = candidates.to(device)
    distance = cosine_distance(features)  # (G, M, M)
    pools = torch.arange(num_pools, device=device)
    steps = int(budgets.max()) if num_pools else 0
    picks = torch.zeros(num_pools, max(steps, 1), dtype=torch.long, device=device)
    if steps:
        # step 1: nearest *other* candidate of each candidate; a lone candidate's is +inf
        eye = torch.eye(width, dtype=torch.bool, device=device)
        to_others = distance.masked_fill(eye | ~candidates[:, None, :], float("inf"))
        isolation = to_others.min(dim=2).values.masked_fill(~candidates, float("-inf"))
        picks[:, 0] = isolation.argmax(dim=1)
        open_ = candidates.clone()
        open_[pools, picks[:, 0]] = False
        nearest_kept = distance[pools, picks[:, 0]]  # (G, M): distance to the kept set so far
        for step in range(1, steps):
            pick = nearest_kept.masked_fill(~open_, float("-inf")).argmax(dim=1)
            picks[:, step] = pick
            # pools that reached their budget keep picking, but only the first budgets[g] count
            open_[pools, pick] = False
            nearest_kept = torch.minimum(nearest_kept, distance[pools, pick])
    picks = picks.cpu()
    return [picks[g, : int(budgets[g])].sort().values for g in range(num_pools)]
