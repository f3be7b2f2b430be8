"""PruMerge and PruMerge+ baselines (Shang et al., 2024), applied per partition as the HiRED
paper does for LLaVA-NeXT. They choose their own token count, so callers report what they kept.

* PruMerge keeps the outliers of the CLS attention distribution (above Q3 + 1.5 IQR) and folds
  the pruned tokens into them: each kept token becomes the attention-weighted mean of itself and
  its ``neighbours`` most key-similar pruned tokens.
* PruMerge+ adds a spatially uniform sample (every ``stride``-th row and column) to the outliers
  before merging, to keep coverage of the whole image.
"""

from __future__ import annotations

import torch


def iqr_outliers(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: candidates whose score lies above Q3 + 1.5 IQR of the candidates' scores.

    At least one token (the highest) is kept, so no partition with content ends up empty.
    """
    values = scores[candidates].float()
    if values.numel() == 0:
        return torch.zeros_like(candidates)
    q1, q3 = torch.quantile(values, torch.tensor([0.25, 0.75]))
    keep = candidates & (scores.float() > q3 + 1.5 * (q3 - q1))
    if not keep.any():
        keep = keep.clone()
        keep[torch.where(candidates, scores.float(), torch.tensor(float("-inf"))).argmax()] = True
    return keep


def spatial_grid(side: int, stride: int) -> torch.Tensor:
    """``(side*side,)`` bool: every ``stride``-th row and column of a ``side x side`` patch grid."""
    lines = torch.zeros(side, dtype=torch.bool)
    lines[::stride] = True
    return (lines[:, None] & lines[None, :]).flatten()


def select(scores: torch.Tensor, candidates: torch.Tensor, plus: bool, stride: int = 2) -> torch.Tensor:
    """Kept patch indices ``(K,)`` ascending, for one partition's ``(N,)`` scores."""
    keep = iqr_outliers(scores, candidates)
    if plus:
        side = int(round(scores.numel() ** 0.5))
        keep = keep | (spatial_grid(side, stride) & candidates)
    return keep.nonzero().flatten()


def merge(
    features: torch.Tensor,
    keys: torch.Tensor,
    scores: torch.Tensor,
    candidates: torch.Tensor,
    kept: torch.Tensor,
    neighbours: int = 32,
) -> torch.Tensor:
    """Fold pruned tokens into kept ones.

    Args:
        features: ``(N, D)`` partition features; keys: ``(N, Dk)``; scores: ``(N,)`` CLS attention.
        candidates: ``(N,)`` bool; kept: ``(K,)`` long.

    Returns:
        ``(K, D)``: each kept token's attention-weighted mean with its most key-similar pruned
        candidates (cosine similarity of keys).
    """
    pruned = candidates.clone()
    pruned[kept] = False
    pruned_idx = pruned.nonzero().flatten()
    kept_features = features[kept].float()
    if pruned_idx.numel() == 0 or neighbours <= 0:
        return kept_features.to(features.dtype)
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)
    similarity = unit[kept] @ unit[pruned_idx].T  # (K, M)
    nearest = similarity.topk(min(neighbours, pruned_idx.numel()), dim=-1).indices  # (K, n)
    members = torch.cat([kept[:, None], pruned_idx[nearest]], dim=1)  # (K, 1+n)
    weights = scores.float()[members].clamp(min=0)  # (K, 1+n)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    # scores and indices live on the CPU; the features may be on an accelerator
    merged = (weights.to(features.device)[..., None] * features.float()[members.to(features.device)]).sum(dim=1)
    return merged.to(features.dtype)
