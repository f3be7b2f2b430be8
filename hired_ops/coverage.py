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
        if int(budgets[g]) >= pool.numel():
            kept.append(pool)  # the only subset of that size: no need to order it
            continue
        chosen = greedy(features[g][pool.to(features.device)], saliency[g][pool], int(budgets[g]), power)
        kept.append(pool[chosen].sort().values)
    return kept


def greedy(features: torch.Tensor, saliency: torch.Tensor, budget: int, power: float = SALIENCY_POWER) -> torch.Tensor:
    """The greedy picks, in pick order, among ``m`` candidates.

    Lazy evaluation: ``Cov`` is submodular, so a token's score can only fall as the kept set
    grows, and a score computed at an earlier step bounds it from above. Each step re-scores
    just the tokens with the highest bounds, a block at a time, until the best fresh score beats
    every bound outside the block; that token is the one plain greedy would pick, for a fraction
    of the ``m x m`` work per step.

    Args:
        features: ``(m, D)``; saliency: ``(m,)``; budget: picks to make (at most ``m``).

    Returns:
        ``(budget,)`` long positions into the ``m`` candidates, on the CPU.
    """
    device = features.device
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    similarity = (unit @ unit.T).clamp(min=0)  # (m, m), symmetric
    count = similarity.shape[0]
    weight = saliency.to(device).double().clamp(min=0) ** power
    covered = torch.zeros(count, device=device)  # cov_S(u), S empty
    bound = weight * similarity.sum(dim=1, dtype=torch.float64)  # exact scores for S empty
    picks = torch.zeros(budget, dtype=torch.long, device=device)
    for step in range(budget):
        block = 32
        while True:
            rows = bound.topk(min(block, count - step)).indices
            fresh = weight[rows] * (similarity[rows] - covered).clamp(min=0).sum(dim=1, dtype=torch.float64)
            bound[rows] = fresh
            best = fresh.max()
            outside = bound.index_fill(0, rows, float("-inf")).max()
            # on a tie with a bound outside, widen the block: ties go to the lower index
            if best > outside or rows.numel() == count - step:
                pick = rows[fresh == best].min()
                break
            block *= 2
        picks[step] = pick
        bound[pick] = float("-inf")
        covered = torch.maximum(covered, similarity[pick])
    return picks.cpu()
