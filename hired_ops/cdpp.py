"""Conditional-DPP selection, as CDPruner defines it (Zhang et al., arXiv 2506.10967): keep a
subset that is diverse *given the instruction*.

Our exact definition, on one pool of candidate tokens ``C``:

* similarity ``S = U U^T`` with ``U`` the L2-normalised token features, so ``S_uv = cos(x_u, x_v)``
  and ``S`` is a PSD Gram matrix with unit diagonal;
* relevance ``r_u`` in ``[0, 1]`` of each token to the instruction
  (:func:`hired_ops.relevance.instruction_relevance`);
* the conditional kernel ``L = diag(r) S diag(r)``, i.e. ``L_uv = r_u r_v cos(x_u, x_v)``, still PSD;
  ``det(L_Y) = prod_{u in Y} r_u^2 * det(S_Y)`` rewards relevant tokens *and* diverse ones;
* the kept set is the MAP of the DPP with kernel ``L`` at size ``k``, ``argmax_{|Y|=k} det(L_Y)``,
  found greedily with the incremental Cholesky of Chen, Zhang & Zhou (NeurIPS 2018): keep
  ``d_u^2 = L_uu``; each step keeps the open candidate ``j = argmax d_u^2`` (the one that
  multiplies ``det(L_Y)`` most), then for every ``u``: ``e_u = (L_ju - <c_j, c_u>) / d_j``,
  append ``e_u`` to ``c_u`` and set ``d_u^2 -= e_u^2``. Ties go to the lower index.

Fill rule: once every open candidate's ``d_u^2`` is numerically zero, at most ``EPS`` times the
pool's largest ``L_uu`` (the kernel's rank is spent: fewer independent directions than the
budget, duplicates, or zero relevance), no pick can raise ``det(L_Y)``; the rest of the budget
goes to the open candidates of highest relevance, ties to the lower index. So every pool keeps
exactly its budget. The threshold is relative, so scaling every relevance by one factor does not
change the pick. With uniform relevance ``L = S``: plain DPP diversity, the first pick being the
lowest index.

Features are the pre-projector ones the vision stage has (the projector runs in the LLM stage,
after the drop), while the relevance is measured in the LLM's input space: the candidates after
the projector against the instruction's token embeddings. That split of spaces is ours.
"""

from __future__ import annotations

import torch

# d^2 at or below EPS * max_u L_uu counts as zero: float64 rounding of a spent rank is ~1e-15
EPS = 1e-10


def kernel(features: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """``(G, M, M)`` float64 kernels ``diag(r) S diag(r)`` of ``(G, M, D)`` features, ``(G, M)`` relevance."""
    unit = torch.nn.functional.normalize(features.double(), dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    # the exact unit diagonal (0 for a zero feature): a rounded |u|^2 would break ties in d^2 = r^2
    similarity.diagonal(dim1=1, dim2=2).copy_((features != 0).any(dim=-1))
    r = relevance.to(features.device, torch.float64)
    return r[:, :, None] * similarity * r[:, None, :]


def select(
    features: torch.Tensor, relevance: torch.Tensor, candidates: torch.Tensor, budgets: torch.Tensor
) -> list[torch.Tensor]:
    """Greedy conditional-DPP MAP subsets, all pools at once (``max(budgets)`` steps).

    Args:
        features: ``(G, M, D)`` token features per pool.
        relevance: ``(G, M)`` instruction relevance in ``[0, 1]``; padding's is ignored.
        candidates: ``(G, M)`` bool, tokens that may be kept.
        budgets: ``(G,)`` long, tokens to keep per pool (at most its candidates).

    Returns:
        Per pool, ``(budgets[g],)`` long kept indices, ascending, on the CPU.
    """
    num_pools, width = candidates.shape
    device = features.device
    candidates = candidates.to(device)
    relevance = relevance.to(device, torch.float64).masked_fill(~candidates, 0.0)
    budgets = budgets.cpu()
    # a pool kept whole has one subset of its size: the greedy runs only as far as the others need
    whole = budgets >= candidates.sum(dim=1).cpu()
    steps = int(budgets[~whole].max()) if bool((~whole).any()) else 0
    picks = torch.zeros(num_pools, max(steps, 1), dtype=torch.long, device=device)
    if steps:
        L = kernel(features, relevance)
        pools = torch.arange(num_pools, device=device)
        d2 = L.diagonal(dim1=1, dim2=2).clone()  # (G, M): residual gain of each token
        floor = EPS * d2.masked_fill(~candidates, 0.0).amax(dim=1)  # (G,) per-pool "numerically zero"
        c = torch.zeros(num_pools, steps, width, dtype=torch.float64, device=device)  # Cholesky rows
        open_ = candidates.clone()
        for step in range(steps):
            picks[:, step] = _step(L, relevance, d2, floor, c, open_, pools, step)
    picks = picks.cpu()
    return [
        candidates[g].nonzero().flatten().cpu() if whole[g] else picks[g, : int(budgets[g])].sort().values
        for g in range(num_pools)
    ]


def _step(
    L: torch.Tensor,
    relevance: torch.Tensor,
    d2: torch.Tensor,
    floor: torch.Tensor,
    c: torch.Tensor,
    open_: torch.Tensor,
    pools: torch.Tensor,
    step: int,
) -> torch.Tensor:
    """One greedy step on every pool, updating ``d2``, ``c`` and ``open_`` in place.

    Shapes: L ``(G, M, M)``, relevance/d2/open_ ``(G, M)``, floor/pools ``(G,)``, c ``(G, steps, M)``.

    Returns:
        ``(G,)`` the pick of each pool. A pool past its budget or its candidates keeps picking
        (index 0 once nothing is open); only the first ``budgets[g]`` picks count.
    """
    best = d2.masked_fill(~open_, float("-inf")).argmax(dim=1)
    gain = d2[pools, best]
    greedy = gain > floor  # False once the pool's rank is spent: fill by relevance instead
    by_relevance = relevance.masked_fill(~open_, float("-inf")).argmax(dim=1)
    pick = torch.where(greedy, best, by_relevance)
    # e_u = (L_ju - <c_j, c_u>) / d_j; a filling pool adds a zero row and leaves d2 as it is
    c_j = c[pools, :step, pick]  # (G, step)
    dot = (c_j[:, None, :] @ c[:, :step, :]).squeeze(1)  # (G, M)
    d_j = torch.where(greedy, gain, torch.ones_like(gain)).sqrt()
    e = ((L[pools, pick] - dot) / d_j[:, None]).masked_fill(~greedy[:, None], 0.0)
    c[:, step] = e
    d2.sub_(e * e)
    open_[pools, pick] = False
    return pick
