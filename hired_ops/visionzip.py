"""VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467): dominant tokens plus merged context.

Within a budget of ``k`` tokens for a pool of candidates:

* **Dominant tokens**: the ``round(dominant_share * k)`` candidates with the highest CLS attention
  at the layer the features come from (the paper averages over heads; the sum ranks the same).
* **Contextual tokens**: the other ``c = k - dominant`` slots. The candidates left over are split
  into ``c`` *target* tokens, spaced uniformly through them in raster order, and the rest, each
  of which joins the target whose key is most similar (cosine of the layer's attention keys).
  A contextual token is the plain mean of its target's features and the features of the tokens
  that joined it.

The paper's LLaVA-1.5 settings give the split: 54 dominant + 10 contextual of 64 (also 108 + 20
of 128, 162 + 30 of 192), i.e. a dominant share of 54/64.

A merged token has no patch of its own; it reports its *target's* patch, so it takes the target's
place in the raster order and :class:`~hired_ops.methods.KeptTokens` still lists kept indices.
With the budget at the number of candidates every leftover token is its own target, each group
is one token, and the result is the full set, unchanged.
"""

from __future__ import annotations

import math

import torch

from .selection import top_k, uniform

DOMINANT_SHARE = 54 / 64


def split(budget: int, dominant_share: float) -> tuple[int, int]:
    """``(dominant, contextual)`` token counts of a budget (round half up to the dominant side)."""
    dominant = min(budget, math.floor(dominant_share * budget + 0.5))
    return dominant, budget - dominant


def select(
    features: torch.Tensor,
    scores: torch.Tensor,
    keys: torch.Tensor,
    candidates: torch.Tensor,
    budget: int,
    dominant_share: float = DOMINANT_SHARE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip on one pool.

    Args:
        features: ``(M, D)`` token features; scores: ``(M,)`` CLS attention (summed over heads);
        keys: ``(M, Dk)`` attention keys of the same layer; candidates: ``(M,)`` bool.
        budget: tokens to return (at most the number of candidates).

    Returns:
        ``kept`` ``(budget,)`` long ascending (dominant tokens and targets, on the CPU), and
        ``rows`` ``(budget, D)`` in ``kept`` order: a dominant token's own features, a target's
        group mean. Rows are in the features' dtype and on their device.
    """
    dominant_count, contextual_count = split(budget, dominant_share)
    dominant = top_k(scores, candidates, dominant_count)
    left = candidates.clone()
    left[dominant] = False
    targets = uniform(left, contextual_count)  # (c,) ascending
    members = left.clone()
    members[targets] = False
    member_idx = members.nonzero().flatten()
    kept = torch.cat([dominant, targets]).sort()
    rows = features.float()[kept.values.to(features.device)]  # (K, D)
    if member_idx.numel() and targets.numel():
        unit = torch.nn.functional.normalize(keys.float(), dim=-1)
        home = (unit[member_idx] @ unit[targets].T).argmax(dim=1)  # (R,) index into targets
        # a target's row sits where the target landed in the sorted kept list
        slot = kept.indices.argsort()[dominant.numel() :][home].to(features.device)
        sums = rows.index_add(0, slot, features.float()[member_idx.to(features.device)])
        counts = torch.ones(kept.values.numel(), device=features.device).index_add(
            0, slot, torch.ones(slot.numel(), device=features.device)
        )
        rows = sums / counts[:, None]
    return kept.values, rows.to(features.dtype)
