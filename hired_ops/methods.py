"""Token-dropping methods behind one interface: HiRED and its baselines.

Each method turns one image's vision-tower output into a :class:`KeptTokens`: the kept
pre-projector features in sequence order, with every index and budget needed to audit them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import prumerge, selection
from .budget import Budget, allocate, capped_proportional
from .partition import PartitionLayout
from .sequence import NEWLINE_MODES, NewlineMode, token_order

METHODS: tuple[str, ...] = ("hired", "full", "spatial", "random", "prumerge", "prumerge+")
# methods that take a budget; the others keep what they choose
BUDGETED: frozenset[str] = frozenset({"hired", "spatial", "random"})
# which CLS rows each method reads: "init" (allocation), "final" (selection / outliers)
_NEEDS: dict[str, tuple[str, ...]] = {
    "hired": ("init", "final"),
    "full": (),
    "spatial": (),
    "random": (),
    "prumerge": ("final",),
    "prumerge+": ("final",),
}


@dataclass(frozen=True)
class DropConfig:
    """How to drop visual tokens. Validated at construction.

    Attributes:
        method: one of :data:`METHODS`.
        budget: visual tokens per image, as a count or a fraction of the model's maximum; needed
            by the budgeted methods, ignored by "full" and the PruMerge family.
        alpha: share of the budget for the full image (HiRED).
        l_init: layer whose full-image CLS attention allocates the budget (HiRED).
        l_final: layer whose CLS attention ranks patches; ``None`` is the layer the VLM takes its
            features from (22 of CLIP-L's 24 with ``hidden_states[-2]``).
        newlines: row-newline tokens: "auto" (stock sequence when nothing is dropped, none
            otherwise), "rows" or "none".
        seed: for "random".
        prumerge_neighbours: pruned tokens folded into each kept one (PruMerge).
        prumerge_stride: spatial sampling stride of PruMerge+.
    """

    method: str = "hired"
    budget: Budget | None = Budget(fraction=0.2)
    alpha: float = 0.5
    l_init: int = 0
    l_final: int | None = None
    newlines: NewlineMode = "auto"
    seed: int = 0
    prumerge_neighbours: int = 32
    prumerge_stride: int = 2

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.budget is not None and not isinstance(self.budget, Budget):
            object.__setattr__(self, "budget", Budget.parse(self.budget))
        if self.method in BUDGETED and self.budget is None:
            raise ValueError(f"method {self.method!r} needs a budget (e.g. 0.2 or 576)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.newlines not in NEWLINE_MODES:
            raise ValueError(f"newlines must be one of {NEWLINE_MODES}, got {self.newlines!r}")
        if self.prumerge_stride < 1 or self.prumerge_neighbours < 0:
            raise ValueError("prumerge_stride must be >= 1 and prumerge_neighbours >= 0")

    @property
    def needs(self) -> tuple[str, ...]:
        """CLS rows the method reads: any of "init" and "final"."""
        return _NEEDS[self.method]


@dataclass
class KeptTokens:
    """One image's kept visual tokens, in the order the LLM will see them.

    Attributes:
        features: ``(K, D)`` pre-projector vision features.
        partition: ``(K,)`` long, partition of each token (0 = full image).
        patch: ``(K,)`` long, patch index within its partition (raster, ``side x side`` grid).
        newline_after: ``(K,)`` bool, a row-newline token follows this token.
        budgets: ``(P,)`` long, tokens allotted per partition (what was kept, for PruMerge).
        available: ``(P,)`` long, candidate (non-padding) patches per partition.
        layout: the partition geometry.
    """

    features: torch.Tensor
    partition: torch.Tensor
    patch: torch.Tensor
    newline_after: torch.Tensor
    budgets: torch.Tensor
    available: torch.Tensor
    layout: PartitionLayout

    @property
    def num_tokens(self) -> int:
        """Visual tokens kept, newlines not counted."""
        return int(self.features.shape[0])

    @property
    def sequence_length(self) -> int:
        """Visual positions in the LLM input: kept tokens plus newline tokens."""
        return self.num_tokens + int(self.newline_after.sum())

    def kept_indices(self) -> list[torch.Tensor]:
        """Per partition, ``(K_p,)`` kept patch indices, ascending."""
        return [self.patch[self.partition == p].sort().values for p in range(self.layout.num_partitions)]


def drop_image(
    config: DropConfig,
    layout: PartitionLayout,
    features: torch.Tensor,
    max_tokens: int,
    init_scores: torch.Tensor | None = None,
    final_scores: torch.Tensor | None = None,
    final_keys: torch.Tensor | None = None,
) -> KeptTokens:
    """Apply ``config`` to one image.

    Args:
        layout: the image's geometry (P partitions of N patches).
        features: ``(P, N, D)`` pre-projector patch features (CLS removed).
        max_tokens: the model's maximum visual tokens per image (resolves fractional budgets).
        init_scores: ``(N,)`` full-image CLS attention at ``l_init``, summed over heads.
        final_scores: ``(P, N)`` CLS attention at ``l_final``, summed over heads.
        final_keys: ``(P, N, Dk)`` keys at ``l_final`` (PruMerge's merge).
    """
    candidates = layout.candidate_mask()
    available = candidates.sum(dim=1)
    num_parts = layout.num_partitions
    merged: dict[int, torch.Tensor] = {}
    if config.method == "full":
        budgets = available.clone()
        kept = [candidates[p].nonzero().flatten() for p in range(num_parts)]
    elif config.method in ("prumerge", "prumerge+"):
        plus = config.method == "prumerge+"
        kept = [
            prumerge.select(final_scores[p], candidates[p], plus, config.prumerge_stride) for p in range(num_parts)
        ]
        merged = {
            p: prumerge.merge(
                features[p], final_keys[p], final_scores[p], candidates[p], kept[p], config.prumerge_neighbours
            )
            for p in range(num_parts)
        }
        budgets = torch.tensor([k.numel() for k in kept], dtype=torch.long)
    else:
        total = config.budget.resolve(max_tokens)
        if config.method == "hired":
            subimage_scores = layout.subimage_coverage() @ init_scores.float()
            budgets = allocate(total, config.alpha, subimage_scores, available)
            kept = [selection.top_k(final_scores[p], candidates[p], int(budgets[p])) for p in range(num_parts)]
        else:
            # baselines without attention spread the budget in proportion to content
            budgets = capped_proportional(total, available.double(), available)
            if config.method == "spatial":
                kept = [selection.uniform(candidates[p], int(budgets[p])) for p in range(num_parts)]
            else:
                generator = torch.Generator().manual_seed(config.seed)
                kept = [
                    selection.random_subset(candidates[p], int(budgets[p]), generator) for p in range(num_parts)
                ]
    dropped_any = int(budgets.sum()) < int(available.sum())
    partition, patch, newline_after = token_order(layout, kept, config.newlines, dropped_any)
    source = features
    if merged:
        source = features.clone()
        for p, rows in merged.items():
            source[p, kept[p]] = rows
    out = source[partition, patch]
    return KeptTokens(out, partition, patch, newline_after, budgets, available, layout)
