"""Saliency-weighted coverage selection, in the spirit of SCOPE (Deng et al., NeurIPS 2025,
arXiv 2510.24214): keep tokens that are salient *and* cover what the others show.

Our exact definition, on one pool of candidate tokens ``C``:

* similarity ``s(u, v) = max(0, cos(x_u, x_v))`` of the token features (clamped at zero so that
  an opposite token covers nothing rather than something negative);
* a kept set ``S`` covers token ``u`` as much as its most similar member,
  ``cov_S(u) = max_{v in S} s(u, v)`` (0 for the empty set), and the set coverage is
  ``Cov(S) = sum_{u in C} cov_S(u)``, a monotone submodular (facility-location) function;
* the coverage gain of a candidate ``v`` is ``g(v | S) = Cov(S + v) - Cov(S)
  = sum_{u in C} max(0, s(u, v) - cov_S(u))``;
* saliency ``a(v)`` is the CLS attention at ``l_final`` summed over heads, and the score of ``v``
  is ``a(v) ** power * g(v | S)``.

Greedy: start from the empty set and add, ``k`` times, the unkept candidate with the highest
score (ties to the lower index). ``power = 0`` is pure coverage; larger values lean on saliency.
Padding is neither picked nor counted as to be covered: pools are reduced to their candidates.
"""

from __future__ import annotations

import torch

SALIENCY_POWER = 1.0


def select(
    features: torch.Tensor,
    saliency: torch.Tensor,
    candidates: torch.Tensor,
    budgets: torch.Tensor,
    power: float = SALIENCY_POWER,
) -> list[torch.Tensor]:
    """Greedy saliency-weighted coverage, pool by pool.

    Args:
        features: ``(G, M, D)`` token features per pool.
        saliency: ``(G, M)`` non-negative saliency (CLS attention).
        candidates: ``(G, M)`` bool, tokens that may be kept (and that count as to be covered).
        budgets: ``(G,)`` long, tokens to keep per pool (at most its candidates).

    Returns:
        Per pool, ``(budgets[g],)`` long kept indices, ascending, on the CPU.
    """
    kept = []
    for g in range(candidates.shape[0]):
        pool = candidates[g].nonzero().flatten()
        chosen = greedy(features[g][pool.to(features.device)], saliency[g][pool], int(budgets[g]), power)
        kept.append(pool[chosen].sort().values)
    return kept


def greedy(features: torch.Tensor, saliency: torch.Tensor, budget: int, power: float = SALIENCY_POWER) -> torch.Tensor:
    """The greedy picks, in pick order, among ``m`` candidates.

    Args:
        features: ``(m, D)``; saliency: ``(m,)``; budget: picks to make (at most ``m``).

    Returns:
        ``(budget,)`` long positions into the ``m`` candidates, on the CPU.
    """
    device = features.device
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    similarity = (unit @ unit.T).clamp(min=0)  # (m, m), symmetric
    weight = saliency.to(device).double().clamp(min=0) ** power
    covered = torch.zeros(similarity.shape[0], device=device)  # cov_S(u)
    # g(v | {}) = sum_u s(u, v); float64 so that the running updates below do not drift
    gain = similarity.sum(dim=0, dtype=torch.float64)
    open_ = torch.ones(similarity.shape[0], dtype=torch.bool, device=device)
    picks = torch.zeros(budget, dtype=torch.long, device=device)
    for step in range(budget):
        pick = (weight * gain).masked_fill(~open_, float("-inf")).argmax()
        picks[step] = pick
        open_[pick] = False
        reach = similarity[pick]
        # only tokens the pick covers better than before change anyone's gain, and each later
        # step changes fewer of them: update the gains on those columns instead of recomputing
        changed = (reach > covered).nonzero().flatten()
        columns = similarity[:, changed]  # (m, C)
        before = (columns - covered[changed]).clamp(min=0).sum(dim=1, dtype=torch.float64)
        after = (columns - reach[changed]).clamp(min=0).sum(dim=1, dtype=torch.float64)
        gain -= before - after
        covered[changed] = reach[changed]
    return picks.cpu()
