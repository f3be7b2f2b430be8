"""Which patches a partition keeps, given its budget: HiRED's phase 2 and the simple baselines.

Every selector takes a partition's candidate mask and budget and returns kept patch indices in
ascending (raster) order, so the LLM sees kept tokens in their original spatial order.
"""

from __future__ import annotations

import hashlib

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


def image_seed(seed: int, features: torch.Tensor) -> int:
    """The random baseline's seed for one image: ``seed`` mixed with the signs of ~4,000 evenly
    spaced values of its ``features`` (any shape).

    Each image gets its own draw (one seed for every image would keep the same positions in every
    image of a layout, so a whole evaluation would rest on a handful of patterns), and the same
    image gets the same draw wherever it is encoded at one dtype: signs, unlike the values' last
    bits, stay put when the tower runs the image alone or in a batch. Another dtype moves the
    draw (bf16 flips ~0.1% of the testbed's feature signs against fp32), as it moves every score.
    """
    flat = features.detach().reshape(-1)
    signs = (flat[:: max(1, flat.numel() // 4096)] > 0).cpu().numpy()
    digest = hashlib.blake2b(signs.tobytes(), digest_size=8, key=seed.to_bytes(8, "little", signed=True))
    return int.from_bytes(digest.digest(), "little") >> 1
