"""Token budgets and HiRED's phase 1: splitting a budget over partitions.

A budget is exact: an image yields ``min(budget, available)`` visual tokens, whatever its shape.
That is what lets the LLM stage batch images at one fixed length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Budget:
    """A visual-token budget: an absolute count (``tokens``) or a share of the model's maximum.

    ``Budget.parse("0.2")`` is 20% of the maximum; ``Budget.parse("576")`` is 576 tokens.
    """

    tokens: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.tokens is None) == (self.fraction is None):
            raise ValueError("a Budget is either a token count or a fraction, exactly one of them")
        if self.tokens is not None and (isinstance(self.tokens, bool) or int(self.tokens) != self.tokens or self.tokens < 1):
            raise ValueError(f"budget token count must be a positive integer, got {self.tokens!r}")
        if self.fraction is not None and not (0.0 < self.fraction <= 1.0):
            raise ValueError(
                f"budget fraction must be in (0, 1], got {self.fraction!r}; "
                "give a token count (e.g. 576) for an absolute budget"
            )

    @classmethod
    def parse(cls, value: str | int | float | Budget) -> Budget:
        """Read a budget as users write it: ``0.2``, ``"20%"``, ``576``, ``"576"``."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, bool):
            raise ValueError(f"budget must be a fraction or a token count, got {value!r}")
        if isinstance(value, int):
            return cls(tokens=value)
        if isinstance(value, float):
            return cls(fraction=value) if value <= 1.0 else cls._integral(value, str(value))
        text = str(value).strip()
        try:
            if text.endswith("%"):
                return cls(fraction=float(text[:-1]) / 100.0)
            number = float(text)
        except ValueError:
            raise ValueError(
                f"budget {value!r} is not a number: use a fraction like 0.2, a percentage like 20%, "
                "or a token count like 576"
            ) from None
        if "." in text or "e" in text.lower():
            return cls(fraction=number) if number <= 1.0 else cls._integral(number, text)
        return cls(tokens=int(number))

    @classmethod
    def _integral(cls, number: float, text: str) -> Budget:
        if number != int(number):
            raise ValueError(f"budget {text!r} is above 1, so it must be a whole token count")
        return cls(tokens=int(number))

    def resolve(self, max_tokens: int) -> int:
        """Token count for a model whose images yield at most ``max_tokens`` visual tokens."""
        if self.tokens is not None:
            return self.tokens
        return max(1, math.floor(self.fraction * max_tokens + 1e-9))

    def __str__(self) -> str:
        return str(self.tokens) if self.tokens is not None else f"{self.fraction:g}"

    @property
    def label(self) -> str:
        """As people read it: ``20%`` or ``576 tokens``."""
        return f"{self.tokens} tokens" if self.tokens is not None else f"{self.fraction * 100:g}%"


def largest_remainder(total: int, weights: torch.Tensor) -> torch.Tensor:
    """Integer shares of ``total`` proportional to ``weights`` ``(n,)``, summing to ``total``.

    Floors first, then one extra token each to the largest fractional remainders; ties go to the
    lower index. All-zero weights split evenly.
    """
    weights = weights.to(torch.float64).clamp(min=0)
    n = weights.numel()
    if total <= 0 or n == 0:
        return torch.zeros(n, dtype=torch.long)
    if weights.sum() <= 0:
        weights = torch.ones(n, dtype=torch.float64)
    exact = total * weights / weights.sum()
    shares = exact.floor().long()
    leftover = total - int(shares.sum())
    if leftover > 0:
        remainder = exact - shares
        # stable sort on descending remainder keeps ties in index order
        order = torch.sort(-remainder, stable=True).indices
        shares[order[:leftover]] += 1
    return shares


def capped_proportional(total: int, weights: torch.Tensor, caps: torch.Tensor) -> torch.Tensor:
    """Split ``total`` in proportion to ``weights`` ``(n,)`` with no share above ``caps`` ``(n,)``.

    Shares that would exceed their cap are fixed at it and the overflow is re-spread, in
    proportion, over the entries that still have room, until nothing overflows. The result sums
    to ``min(total, caps.sum())``. Entries without room never receive anything; when every open
    entry has zero weight the rest is spread by remaining room.
    """
    caps = caps.to(torch.long)
    shares = torch.zeros_like(caps)
    remaining = min(int(total), int(caps.sum()))
    weights = weights.to(torch.float64).clamp(min=0)
    while remaining > 0:
        room = caps - shares
        open_ = room > 0
        w = torch.where(open_, weights, torch.zeros_like(weights))
        if w.sum() <= 0:
            w = room.to(torch.float64)
        give = torch.minimum(largest_remainder(remaining, w), room)
        shares += give
        remaining -= int(give.sum())
    return shares


def allocate(
    budget: int,
    alpha: float,
    subimage_scores: torch.Tensor,
    available: torch.Tensor,
) -> torch.Tensor:
    """HiRED phase 1: per-partition token budgets for one image.

    Args:
        budget: the image's token budget (already resolved to a count).
        alpha: share of the budget for the full image (partition 0).
        subimage_scores: ``(k,)`` visual content score of each sub-image.
        available: ``(k+1,)`` candidate patches per partition (the caps).

    Returns:
        ``(k+1,)`` long, summing to exactly ``min(budget, available.sum())``. The full image gets
        ``floor(alpha * total)`` and the sub-images share the rest by score; overflow of either
        side (full image over its cap, or sub-images out of room) moves to the other.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    available = available.to(torch.long)
    total = min(int(budget), int(available.sum()))
    k = available.numel() - 1
    if k == 0:
        return torch.tensor([total], dtype=torch.long)
    full = min(math.floor(alpha * total), int(available[0]))
    subs = capped_proportional(total - full, subimage_scores, available[1:])
    full += total - full - int(subs.sum())  # sub-images out of room: the rest goes back
    return torch.cat([torch.tensor([full], dtype=torch.long), subs])
