"""Selections behind one batched interface: which tokens each pool keeps, given its budget.

A *pool* is what one selection call chooses from: a partition (after an up-front allocation) or
the whole image's candidates flattened into one (the ``global`` allocation). Every selection
returns exactly ``budgets[g]`` indices per pool, ascending, so the kept tokens stay in raster
order; a merging selection also returns the features that replace the kept rows.

=========== ===================================================== =================== =========
selection   what it keeps                                         reads               merges
=========== ===================================================== =================== =========
topk        HiRED phase 2: highest l_final CLS attention          final CLS row       no
spatial     uniform stride through the candidates                 nothing             no
random      uniform random subset, drawn per image (``seed``)     nothing             no
visionzip   dominant by CLS attention + merged contextual tokens  final row and keys  yes
divprune    greedy max-min diverse subset (cosine distance)       features            no
coverage    greedy saliency-weighted coverage (SCOPE-like)        final row, features no
cdpp        greedy MAP of the instruction-conditioned DPP         relevance, features no
            (CDPruner): relevant *and* mutually diverse tokens
=========== ===================================================== =================== =========

Under ``global`` every selection scores the flattened pool as one: top-k and the dominant
tokens of VisionZip rank CLS attention across partitions (each partition's row is a softmax of
its own tile, so scores are comparable shares of attention), DivPrune, coverage and cdpp compare
tokens of different partitions (cdpp's relevance is normalised over the whole image under every
allocation), and VisionZip's contextual targets are spaced through the whole image, so a
merged group may gather tokens of several partitions (it still reports its target's partition
and patch). Spatial has no score to rank globally: its uniform stride runs through the image's
candidates in partition order, which amounts to the proportional split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cdpp, coverage, divprune, selection, visionzip

SELECTIONS: tuple[str, ...] = ("topk", "spatial", "random", "visionzip", "divprune", "coverage", "cdpp")
# which CLS rows a selection reads ("final": l_final), and whether it needs that layer's keys
NEEDS: dict[str, tuple[str, ...]] = {
    "topk": ("final",),
    "spatial": (),
    "random": (),
    "visionzip": ("final",),
    "divprune": (),
    "coverage": ("final",),
    "cdpp": (),
}
NEEDS_KEYS: frozenset[str] = frozenset({"visionzip"})
# selections that read the instruction's relevance (``Pools.relevance``, hired_ops.relevance)
NEEDS_INSTRUCTION: frozenset[str] = frozenset({"cdpp"})


@dataclass(frozen=True)
class Pools:
    """What selections choose from: G pools of M tokens each.

    Attributes:
        features: ``(G, M, D)`` pre-projector features.
        candidates: ``(G, M)`` bool, tokens that may be kept.
        budgets: ``(G,)`` long, tokens to keep per pool, each at most its candidates.
        scores: ``(G, M)`` CLS attention at l_final summed over heads, if the selection reads it.
        keys: ``(G, M, Dk)`` attention keys at l_final, if the selection merges by key.
        relevance: ``(G, M)`` instruction relevance in [0, 1], if the selection reads it (cdpp).
    """

    features: torch.Tensor
    candidates: torch.Tensor
    budgets: torch.Tensor
    scores: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    relevance: torch.Tensor | None = None

    @classmethod
    def whole_image(
        cls,
        features: torch.Tensor,
        candidates: torch.Tensor,
        total: int,
        scores: torch.Tensor | None = None,
        keys: torch.Tensor | None = None,
        relevance: torch.Tensor | None = None,
    ) -> Pools:
        """One pool of all ``P*N`` tokens (partition-major) for the ``global`` allocation.

        Args: features ``(P, N, D)``, candidates ``(P, N)``, scores ``(P, N)``, keys
        ``(P, N, Dk)``, relevance ``(P, N)``; total: the image's budget, clamped here to its
        candidates.
        """
        parts, width = candidates.shape

        def flat(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.reshape(1, parts * width, *t.shape[2:])

        budget = torch.tensor([min(int(total), int(candidates.sum()))], dtype=torch.long)
        return cls(flat(features), flat(candidates), budget, flat(scores), flat(keys), flat(relevance))


@dataclass
class Picked:
    """A selection's result.

    Attributes:
        kept: per pool, ``(K_g,)`` long kept indices, ascending, on the CPU.
        rows: per pool, ``(K_g, D)`` features replacing the kept tokens' own (merging
            selections), in ``kept`` order; ``None`` when the kept tokens are used as they are.
    """

    kept: list[torch.Tensor]
    rows: list[torch.Tensor] | None = None


def pick(
    name: str,
    pools: Pools,
    seed: int = 0,
    dominant_share: float = visionzip.DOMINANT_SHARE,
    saliency_power: float = coverage.SALIENCY_POWER,
) -> Picked:
    """Run selection ``name`` on every pool.

    Args:
        seed: for "random" (one generator per image, seeded from ``seed`` and the image's
            features, drawn from pool by pool).
        dominant_share: VisionZip's dominant share of each budget.
        saliency_power: exponent on saliency in the coverage score.
    """
    budgets = [int(b) for b in pools.budgets]
    count = len(budgets)
    if name == "topk":
        return Picked([selection.top_k(pools.scores[g], pools.candidates[g], budgets[g]) for g in range(count)])
    if name == "spatial":
        return Picked([selection.uniform(pools.candidates[g], budgets[g]) for g in range(count)])
    if name == "random":
        generator = torch.Generator().manual_seed(selection.image_seed(seed, pools.features))
        return Picked(
            [selection.random_subset(pools.candidates[g], budgets[g], generator) for g in range(count)]
        )
    if name == "divprune":
        return Picked(divprune.select(pools.features, pools.candidates, pools.budgets))
    if name == "coverage":
        return Picked(coverage.select(pools.features, pools.scores, pools.candidates, pools.budgets, saliency_power))
    if name == "cdpp":
        if pools.relevance is None:
            raise ValueError(
                "selection 'cdpp' needs the instruction's relevance (Pools.relevance, from "
                "hired_ops.relevance.instruction_relevance); none was given"
            )
        return Picked(cdpp.select(pools.features, pools.relevance, pools.candidates, pools.budgets))
    if name == "visionzip":
        # pools differ in candidates and budget, so the merge runs pool by pool
        picked = [
            visionzip.select(
                pools.features[g], pools.scores[g], pools.keys[g], pools.candidates[g], budgets[g], dominant_share
            )
            for g in range(count)
        ]
        return Picked([k for k, _ in picked], [r for _, r in picked])
    raise ValueError(f"unknown selection {name!r}: choose one of {', '.join(SELECTIONS)}")
