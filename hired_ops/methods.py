"""Token-dropping methods behind one interface: HiRED, its baselines and the newer selectors.

A budgeted method is an allocation policy (:mod:`hired_ops.allocation`: how the budget is split
over partitions) composed with a selection (:mod:`hired_ops.selectors`: which tokens each share
keeps). ``DropConfig.method`` is a preset name (:data:`METHODS`) or ``"alloc+select"``, e.g.
``"hired+divprune"``. "full", "prumerge" and "prumerge+" keep what they choose and take no budget.

Each method turns one image's vision-tower output into a :class:`KeptTokens`: the kept
pre-projector features in sequence order, with every index and budget needed to audit them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import allocation, coverage, prumerge, selectors, visionzip
from .budget import Budget
from .partition import PartitionLayout
from .sequence import NEWLINE_MODES, NewlineMode, token_order

# preset -> (allocation, selection). The new selectors take the split their papers use on
# LLaVA-NeXT: VisionZip reduces every crop to the same count, DivPrune and SCOPE choose among all
# of the image's visual tokens at once.
PRESETS: dict[str, tuple[str, str]] = {
    "hired": ("hired", "topk"),
    "spatial": ("proportional", "spatial"),
    "random": ("proportional", "random"),
    "visionzip": ("even", "visionzip"),
    "divprune": ("global", "divprune"),
    "scope": ("global", "coverage"),
    # instruction-aware: CDPruner's conditional DPP over the whole image as its paper runs it, and
    # the same selection inside HiRED's partition budgets
    "cdpruner": ("global", "cdpp"),
    "hired-cdpp": ("hired", "cdpp"),
}
# methods that keep what they choose: no budget, no allocation
UNBUDGETED: tuple[str, ...] = ("full", "prumerge", "prumerge+")
METHODS: tuple[str, ...] = (
    "hired", "full", "spatial", "random", "prumerge", "prumerge+", "visionzip", "divprune", "scope", "cdpruner",
    "hired-cdpp",
)


def parse_method(method: str) -> tuple[str, str] | None:
    """``(allocation, selection)`` of a method string; ``None`` for "full" and the PruMerge family.

    Raises:
        ValueError: naming the presets, allocations and selections when ``method`` is none of them.
    """
    if method in PRESETS:
        return PRESETS[method]
    if method in UNBUDGETED:
        return None
    alloc, plus, select = str(method).partition("+")
    if plus and alloc in allocation.ALLOCATIONS and select in selectors.SELECTIONS:
        return alloc, select
    raise ValueError(
        f"unknown method {method!r}: choose a preset ({', '.join(METHODS)}) or 'allocation+selection' "
        f"with allocation one of {', '.join(allocation.ALLOCATIONS)} and selection one of "
        f"{', '.join(selectors.SELECTIONS)} (e.g. 'hired+divprune')"
    )


class BudgetedMethods(frozenset):
    """The budgeted presets; membership also holds for every valid ``"alloc+select"`` string.

    A frozenset so set algebra with preset names keeps working; ``in`` answers for any method
    string, so ``method in BUDGETED`` is right for combinations too.
    """

    def __contains__(self, method: object) -> bool:
        if frozenset.__contains__(self, method):
            return True
        try:
            return isinstance(method, str) and parse_method(method) is not None
        except ValueError:
            return False


BUDGETED: BudgetedMethods = BudgetedMethods(PRESETS)


@dataclass(frozen=True)
class DropConfig:
    """How to drop visual tokens. Validated at construction.

    Attributes:
        method: a preset of :data:`METHODS` or ``"alloc+select"`` (see :func:`parse_method`).
        budget: visual tokens per image, as a count or a fraction of the model's maximum; needed
            by the budgeted methods, ignored by "full" and the PruMerge family.
        alpha: share of the budget for the full image (the "hired" allocation).
        l_init: layer whose full-image CLS attention allocates the budget (HiRED).
        l_final: layer whose CLS attention ranks patches; ``None`` is the layer the VLM takes its
            features from (22 of CLIP-L's 24 with ``hidden_states[-2]``).
        newlines: row-newline tokens: "auto" (stock sequence when nothing is dropped, none
            otherwise), "rows" or "none".
        seed: for "random".
        prumerge_neighbours: pruned tokens folded into each kept one (PruMerge).
        prumerge_stride: spatial sampling stride of PruMerge+.
        visionzip_dominant: VisionZip's dominant share of each budget, the rest being merged
            contextual tokens (54/64, the paper's 54 + 10).
        coverage_power: exponent on saliency in the coverage selection's score (0: coverage alone).
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
    visionzip_dominant: float = visionzip.DOMINANT_SHARE
    coverage_power: float = coverage.SALIENCY_POWER

    def __post_init__(self) -> None:
        parse_method(self.method)
        if self.budget is not None and not isinstance(self.budget, Budget):
            object.__setattr__(self, "budget", Budget.parse(self.budget))
        if self.budgeted and self.budget is None:
            raise ValueError(f"method {self.method!r} needs a budget (e.g. 0.2 or 576)")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.newlines not in NEWLINE_MODES:
            raise ValueError(f"newlines must be one of {NEWLINE_MODES}, got {self.newlines!r}")
        if self.prumerge_stride < 1 or self.prumerge_neighbours < 0:
            raise ValueError("prumerge_stride must be >= 1 and prumerge_neighbours >= 0")
        if not 0.0 <= self.visionzip_dominant <= 1.0:
            raise ValueError(f"visionzip_dominant must be in [0, 1], got {self.visionzip_dominant}")
        if self.coverage_power < 0:
            raise ValueError(f"coverage_power must be >= 0, got {self.coverage_power}")

    @property
    def allocation(self) -> str | None:
        """The allocation policy; ``None`` for the methods that keep what they choose."""
        parts = parse_method(self.method)
        return parts[0] if parts else None

    @property
    def selection(self) -> str | None:
        """The selection; ``None`` for the methods that keep what they choose."""
        parts = parse_method(self.method)
        return parts[1] if parts else None

    @property
    def budgeted(self) -> bool:
        """Whether the method spends a budget (every allocation + selection does)."""
        return parse_method(self.method) is not None

    @property
    def needs(self) -> tuple[str, ...]:
        """CLS rows the method reads: any of "init" (allocation) and "final" (selection / outliers)."""
        if self.method in ("prumerge", "prumerge+"):
            return ("final",)
        if not self.budgeted:
            return ()
        init = ("init",) if self.allocation in allocation.NEEDS_INIT else ()
        return init + selectors.NEEDS[self.selection]

    @property
    def needs_instruction(self) -> bool:
        """Whether the selection reads the instruction (each image's prompt reaches the drop)."""
        return self.selection in selectors.NEEDS_INSTRUCTION

    @property
    def needs_keys(self) -> bool:
        """Whether the method merges by the attention keys of layer l_final."""
        return self.method in ("prumerge", "prumerge+") or self.selection in selectors.NEEDS_KEYS


@dataclass
class KeptTokens:
    """One image's kept visual tokens, in the order the LLM will see them.

    Attributes:
        features: ``(K, D)`` pre-projector vision features (a merged token's are its group's).
        partition: ``(K,)`` long, partition of each token (0 = full image).
        patch: ``(K,)`` long, patch index within its partition (raster, ``side x side`` grid);
            a merged token reports the patch it was merged into (VisionZip: its target).
        newline_after: ``(K,)`` bool, a row-newline token follows this token.
        budgets: ``(P,)`` long, tokens kept per partition (the allotted budget, or what a
            global selection or PruMerge picked there).
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
    relevance: torch.Tensor | None = None,
) -> KeptTokens:
    """Apply ``config`` to one image.

    Args:
        layout: the image's geometry (P partitions of N patches).
        features: ``(P, N, D)`` pre-projector patch features (CLS removed).
        max_tokens: the model's maximum visual tokens per image (resolves fractional budgets).
        init_scores: ``(N,)`` full-image CLS attention at ``l_init``, summed over heads.
        final_scores: ``(P, N)`` CLS attention at ``l_final``, summed over heads.
        final_keys: ``(P, N, Dk)`` keys at ``l_final`` (PruMerge's and VisionZip's merge).
        relevance: ``(P, N)`` instruction relevance in [0, 1] (:mod:`hired_ops.relevance`), for a
            selection that reads it.
    """
    candidates = layout.candidate_mask()
    available = candidates.sum(dim=1)
    num_parts, width = candidates.shape
    pool_width = width
    if config.method == "full":
        picked = selectors.Picked([candidates[p].nonzero().flatten() for p in range(num_parts)])
    elif config.method in ("prumerge", "prumerge+"):
        picked = _prumerge(config, features, final_scores, final_keys, candidates)
    else:
        total = config.budget.resolve(max_tokens)
        if config.allocation == "global":
            pools = selectors.Pools.whole_image(features, candidates, total, final_scores, final_keys, relevance)
        else:
            subimage_scores = layout.subimage_coverage() @ init_scores.float() if config.allocation == "hired" else None
            budgets = allocation.split_budget(config.allocation, total, available, config.alpha, subimage_scores)
            pools = selectors.Pools(features, candidates, budgets, final_scores, final_keys, relevance)
        picked = selectors.pick(
            config.selection, pools, config.seed, config.visionzip_dominant, config.coverage_power
        )
        pool_width = pools.candidates.shape[1]
    # pool g's index i is token g * pool_width + i of the image's (P * N) partition-major tokens
    flat = torch.cat([g * pool_width + kept for g, kept in enumerate(picked.kept)])
    part_of, patch_of = flat // width, flat % width
    # kept indices ascend within a pool, and a global pool is partition-major, so these ascend too
    kept = [patch_of[part_of == p] for p in range(num_parts)]
    budgets = torch.bincount(part_of, minlength=num_parts)
    dropped_any = int(budgets.sum()) < int(available.sum())
    partition, patch, newline_after = token_order(layout, kept, config.newlines, dropped_any)
    source = features
    if picked.rows is not None:
        source = features.reshape(num_parts * width, -1).clone()
        source[flat.to(features.device)] = torch.cat(picked.rows).to(features.dtype)
        source = source.view_as(features)
    out = source[partition, patch]
    return KeptTokens(out, partition, patch, newline_after, budgets, available, layout)


def _prumerge(
    config: DropConfig,
    features: torch.Tensor,
    final_scores: torch.Tensor,
    final_keys: torch.Tensor,
    candidates: torch.Tensor,
) -> selectors.Picked:
    """PruMerge / PruMerge+ per partition: IQR outliers (plus a grid), merged with neighbours.

    Shapes: features ``(P, N, D)``, final_scores ``(P, N)``, final_keys ``(P, N, Dk)``,
    candidates ``(P, N)``.
    """
    plus = config.method == "prumerge+"
    kept = [
        prumerge.select(final_scores[p], candidates[p], plus, config.prumerge_stride)
        for p in range(candidates.shape[0])
    ]
    rows = [
        prumerge.merge(features[p], final_keys[p], final_scores[p], candidates[p], kept[p], config.prumerge_neighbours)
        for p in range(candidates.shape[0])
    ]
    return selectors.Picked(kept, rows)
