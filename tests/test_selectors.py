"""Selections and allocations: each selector does what its definition says, every allocation x
selection is exact to the budget, and method strings parse into the two parts."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hired_ops import (
    ALLOCATIONS,
    BUDGETED,
    METHODS,
    PRESETS,
    SELECTIONS,
    Budget,
    DropConfig,
    PartitionLayout,
    cdpp,
    coverage,
    divprune,
    drop_image,
    parse_method,
    selectors,
    split_budget,
    visionzip,
)
from hired_ops.relevance import instruction_relevance
from hired_ops.vision import VisionGeometry

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
GEOMETRY = VisionGeometry(tile=336, patch=14, pinpoints=tuple(map(tuple, PINPOINTS)), num_layers=24, feature_layer=-2)
COMBINATIONS = [f"{a}+{s}" for a, s in itertools.product(ALLOCATIONS, SELECTIONS)]


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return 1.0 - float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def unit_vectors(degrees: list[float]) -> torch.Tensor:
    """``(n, 2)`` unit vectors at the given angles."""
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1).float()


# ------------------------------------------------------------------------------------------
# DivPrune
# ------------------------------------------------------------------------------------------


def greedy_farthest_by_definition(features: torch.Tensor, candidates: list[int], k: int) -> list[int]:
    """DivPrune's greedy, written out: most isolated candidate first, then farthest from the set."""
    others = {v: min(cosine_distance(features[v], features[u]) for u in candidates if u != v) for v in candidates}
    chosen = [max(candidates, key=lambda v: (others[v], -v))]
    while len(chosen) < k:
        rest = [v for v in candidates if v not in chosen]
        far = {v: min(cosine_distance(features[v], features[s]) for s in chosen) for v in rest}
        chosen.append(max(rest, key=lambda v: (far[v], -v)))
    return chosen


def min_pairwise(features: torch.Tensor, subset) -> float:
    return min(cosine_distance(features[a], features[b]) for a, b in itertools.combinations(subset, 2))


def test_divprune_picks_one_token_per_cluster_which_is_the_max_min_optimum():
    # four tight pairs at 0, 90, 180 and 270 degrees: a max-min set of four takes one per pair
    features = unit_vectors([0, 3, 90, 92, 180, 181, 270, 273])
    candidates = torch.ones(1, 8, dtype=torch.bool)
    kept = divprune.select(features[None], candidates, torch.tensor([4]))[0].tolist()
    assert sorted(k // 2 for k in kept) == [0, 1, 2, 3]
    best = max(min_pairwise(features, s) for s in itertools.combinations(range(8), 4))
    assert min_pairwise(features, kept) == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_divprune_equals_greedy_farthest_point_by_definition(seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(9, 3, generator=generator)
    candidates = torch.ones(9, dtype=torch.bool)
    candidates[[2, 7]] = False  # padding: never picked, never measured against
    pool = candidates.nonzero().flatten().tolist()
    for k in range(1, len(pool) + 1):
        kept = divprune.select(features[None], candidates[None], torch.tensor([k]))[0]
        expected = greedy_farthest_by_definition(features, pool, k)
        assert kept.tolist() == sorted(expected)
        if k >= 2:
            assert min_pairwise(features, kept.tolist()) == pytest.approx(min_pairwise(features, expected), abs=1e-6)


def test_divprune_pools_are_independent_when_batched():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 20, 5, generator=generator)
    candidates = torch.rand(3, 20, generator=generator) > 0.3
    budgets = torch.tensor([4, 0, int(candidates[2].sum())])
    batched = divprune.select(features, candidates, budgets)
    for g in range(3):
        alone = divprune.select(features[g : g + 1], candidates[g : g + 1], budgets[g : g + 1])[0]
        assert batched[g].tolist() == alone.tolist()
    assert batched[2].tolist() == candidates[2].nonzero().flatten().tolist()


# ------------------------------------------------------------------------------------------
# VisionZip
# ------------------------------------------------------------------------------------------


def test_visionzip_split_follows_the_papers_ratio():
    assert visionzip.split(64, visionzip.DOMINANT_SHARE) == (54, 10)
    assert visionzip.split(128, visionzip.DOMINANT_SHARE) == (108, 20)
    assert visionzip.split(192, visionzip.DOMINANT_SHARE) == (162, 30)
    assert visionzip.split(1, visionzip.DOMINANT_SHARE) == (1, 0)
    assert visionzip.split(10, 0.0) == (0, 10)


def test_visionzip_keeps_top_attention_and_merges_context_into_means():
    features = torch.arange(8, dtype=torch.float32)[:, None] * torch.tensor([[1.0, 10.0]])  # row i = (i, 10 i)
    scores = torch.tensor([0.1, 0.9, 0.2, 0.0, 0.8, 0.3, 0.05, 0.15])
    candidates = torch.ones(8, dtype=torch.bool)
    candidates[6] = False  # padding: neither kept nor merged
    # keys: tokens 0, 2, 3 point one way, 5, 7 the other
    keys = torch.tensor([[1.0, 0.0], [0, 1], [1, 0.1], [1, 0.2], [0, 1], [-1, 0.1], [1, 0], [-1, 0.2]])
    kept, rows = visionzip.select(features, scores, keys, candidates, budget=4, dominant_share=0.5)
    # dominant: the two highest scores, 1 and 4; left over: 0, 2, 3, 5, 7; targets at uniform
    # stride through those five: positions floor((j + 0.5) * 5 / 2) = 1 and 3,
    # i.e. tokens 2 and 5. Token 0 and 3 join target 2 by key, token 7 joins target 5.
    assert kept.tolist() == [1, 2, 4, 5]
    expected = torch.stack(
        [
            features[1],
            (features[2] + features[0] + features[3]) / 3,  # (5/3, 50/3)
            features[4],
            (features[5] + features[7]) / 2,  # (6, 60)
        ]
    )
    torch.testing.assert_close(rows, expected)
    torch.testing.assert_close(rows[1], torch.tensor([5 / 3, 50 / 3]))


def test_visionzip_at_full_budget_is_the_full_set_unchanged():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(30, 6, generator=generator)
    candidates = torch.rand(30, generator=generator) > 0.2
    kept, rows = visionzip.select(
        features, torch.rand(30, generator=generator), torch.randn(30, 4, generator=generator), candidates,
        int(candidates.sum()),
    )
    assert kept.tolist() == candidates.nonzero().flatten().tolist()
    assert torch.equal(rows, features[kept])


# ------------------------------------------------------------------------------------------
# Saliency-weighted coverage (SCOPE-like)
# ------------------------------------------------------------------------------------------


def coverage_scores_by_definition(
    features: torch.Tensor, saliency: torch.Tensor, chosen: list[int], power: float
) -> dict[int, float]:
    """Score of every unchosen token, from the definition with set coverage recomputed."""
    unit = torch.nn.functional.normalize(features.double(), dim=-1)
    similarity = (unit @ unit.T).clamp(min=0)

    def set_coverage(subset: list[int]) -> float:
        return float(similarity[:, subset].max(dim=1).values.sum()) if subset else 0.0

    base = set_coverage(chosen)
    return {
        v: float(saliency[v].double()) ** power * (set_coverage(chosen + [v]) - base)
        for v in range(features.shape[0])
        if v not in chosen
    }


def coverage_greedy_by_definition(features: torch.Tensor, saliency: torch.Tensor, k: int, power: float) -> list[int]:
    chosen: list[int] = []
    for _ in range(k):
        score = coverage_scores_by_definition(features, saliency, chosen, power)
        chosen.append(max(score, key=lambda v: (score[v], -v)))
    return chosen


def test_coverage_prefers_an_uncovered_token_to_a_duplicate():
    # three copies of one direction, salient, and one orthogonal token, less salient
    features = unit_vectors([0, 0, 0, 90])
    saliency = torch.tensor([[0.3, 0.25, 0.2, 0.25]])
    candidates = torch.ones(1, 4, dtype=torch.bool)
    # step 1: gains 3, 3, 3, 1 -> scores 0.9, 0.75, 0.6, 0.25 -> token 0
    # step 2: the copies add nothing, token 3 adds 1 -> token 3 (top-k would take 1)
    assert coverage.select(features[None], saliency, candidates, torch.tensor([2]))[0].tolist() == [0, 3]
    # without saliency the first pick is a tie of gains, resolved to the lower index
    assert coverage.greedy(features, saliency[0], 2, power=0.0).tolist() == [0, 3]


@pytest.mark.parametrize("power", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("seed", range(4))
def test_coverage_each_pick_has_the_highest_score_by_definition(seed, power):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(10, 4, generator=generator)
    saliency = torch.rand(10, generator=generator)
    picks = coverage.greedy(features, saliency, 10, power).tolist()
    assert sorted(picks) == list(range(10))
    for step, pick in enumerate(picks):
        score = coverage_scores_by_definition(features, saliency, picks[:step], power)
        # equal up to rounding: exact ties in the definition may fall either way in float32
        assert score[pick] >= max(score.values()) - 1e-5
    for k in (1, 3, 6):
        assert coverage.greedy(features, saliency, k, power).tolist() == picks[:k]


def test_coverage_ignores_padding():
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(1, 12, 4, generator=generator)
    saliency = torch.rand(1, 12, generator=generator)
    candidates = torch.ones(1, 12, dtype=torch.bool)
    candidates[0, 5:8] = False
    kept = coverage.select(features, saliency, candidates, torch.tensor([9]))[0]
    pool = candidates[0].nonzero().flatten()
    expected = pool[coverage_greedy_by_definition(features[0, pool], saliency[0, pool], 9, 1.0)].sort().values
    assert kept.tolist() == expected.tolist()


# ------------------------------------------------------------------------------------------
# Conditional DPP (CDPruner) and instruction relevance
# ------------------------------------------------------------------------------------------


def cdpp_greedy_by_definition(features: torch.Tensor, relevance: torch.Tensor, k: int) -> list[int]:
    """Greedy max-log-det, written out with determinants; the fill rule once no pick adds volume."""
    unit = torch.nn.functional.normalize(features.double(), dim=-1)
    r = relevance.double()
    kernel = r[:, None] * (unit @ unit.T) * r[None, :]
    floor = cdpp.EPS * float(kernel.diagonal().max())
    chosen: list[int] = []
    for _ in range(k):
        rest = [v for v in range(features.shape[0]) if v not in chosen]
        base = float(torch.linalg.det(kernel[chosen][:, chosen])) if chosen else 1.0
        gain = {v: float(torch.linalg.det(kernel[chosen + [v]][:, chosen + [v]])) / base for v in rest}
        if max(gain.values()) > floor:
            chosen.append(max(rest, key=lambda v: (gain[v], -v)))
        else:
            chosen.append(max(rest, key=lambda v: (float(r[v]), -v)))
    return chosen


def cdpp_one(features: torch.Tensor, relevance: torch.Tensor, budget: int, candidates=None) -> list[int]:
    """cdpp on one pool of ``(M, D)`` features, every token a candidate unless told."""
    if candidates is None:
        candidates = torch.ones(features.shape[0], dtype=torch.bool)
    return cdpp.select(features[None], relevance[None], candidates[None], torch.tensor([budget]))[0].tolist()


@pytest.mark.parametrize("seed", range(4))
def test_cdpp_equals_greedy_max_log_det_by_definition(seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(7, 8, generator=generator)  # full rank: every step is a DPP step
    relevance = torch.rand(7, generator=generator)
    for k in range(8):
        expected = sorted(cdpp_greedy_by_definition(features, relevance, k))
        assert cdpp_one(features, relevance, k) == expected
        # one factor on every relevance changes no determinant ratio: the zero threshold is relative
        assert cdpp_one(features, relevance * 1e-6, k) == expected


def test_cdpp_with_uniform_relevance_and_orthogonal_features_is_the_brute_force_greedy():
    # an orthogonal basis: every subset has det 1, so each step is a tie, resolved to the lower index
    features = torch.eye(6)[[3, 0, 5, 1, 4, 2]]
    uniform = torch.ones(6)
    for k in range(7):
        expected = sorted(cdpp_greedy_by_definition(features, uniform, k))
        assert cdpp_one(features, uniform, k) == expected == list(range(k))
    # a scaled basis vector has the same cosine: relevance alone decides, highest first
    relevance = torch.tensor([0.2, 0.9, 0.5, 1.0, 0.1, 0.7])
    assert cdpp_one(features, relevance, 3) == sorted(cdpp_greedy_by_definition(features, relevance, 3)) == [1, 3, 5]


@pytest.mark.parametrize("seed", range(3))
def test_cdpp_breaks_ties_of_relevance_to_the_lower_index(seed):
    # every d^2 starts at r^2 exactly, whatever the rounding of a normalised feature's length
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(40, 16, generator=generator)
    assert cdpp_one(features, torch.ones(40), 1) == [0]
    relevance = torch.full((40,), 0.5)
    relevance[[7, 23]] = 0.9
    assert cdpp_one(features, relevance, 1) == [7]


def test_cdpp_keeps_the_relevant_token_of_two_equally_diverse_ones():
    # tokens 1 and 2 are both orthogonal to token 0 and to each other: equally diverse
    features = torch.eye(3)
    assert cdpp_one(features, torch.ones(3), 2) == [0, 1]  # a tie without relevance
    assert cdpp_one(features, torch.tensor([1.0, 0.2, 0.9]), 2) == [0, 2]
    assert cdpp_one(features, torch.tensor([0.3, 0.2, 0.9]), 1) == [2]


def test_cdpp_keeps_one_of_two_identical_tokens_while_others_remain():
    generator = torch.Generator().manual_seed(0)
    distinct = torch.randn(3, 8, generator=generator)
    features = distinct[[0, 0, 1, 2]]  # tokens 0 and 1 are one token twice
    # even when the copies are the most relevant: a copy adds no volume
    relevance = torch.tensor([1.0, 1.0, 0.3, 0.3])
    kept = cdpp_one(features, relevance, 3)
    assert kept == [0, 2, 3]
    assert cdpp_one(features, relevance, 4) == [0, 1, 2, 3]  # the copy only once nothing else is left


def test_cdpp_fills_by_relevance_once_the_rank_is_spent():
    # 2-D features: after two picks every residual d^2 is zero, the rest goes by relevance
    features = unit_vectors([0, 90, 45, 30, 60, 10])
    relevance = torch.tensor([1.0, 1.0, 0.3, 0.5, 0.5, 0.9])
    assert cdpp_one(features, relevance, 2) == [0, 1]  # 90 degrees from the first, and as relevant
    assert cdpp_one(features, relevance, 3) == [0, 1, 5]  # highest relevance left
    assert cdpp_one(features, relevance, 4) == [0, 1, 3, 5]  # 3 and 4 tie: the lower index
    assert cdpp_one(features, relevance, 5) == [0, 1, 3, 4, 5]
    # no relevance at all: no volume anywhere, the lowest candidates; padding is skipped
    candidates = torch.tensor([False, True, True, False, True, True])
    assert cdpp_one(features, torch.zeros(6), 3, candidates) == [1, 2, 4]


@pytest.mark.parametrize("dim", [2, 16])  # 2: rank spent early, 16: full rank
def test_cdpp_every_budget_is_exact_in_every_pool(dim):
    generator = torch.Generator().manual_seed(dim)
    features = torch.randn(4, 12, dim, generator=generator)
    features[1, 6:] = features[1, 0]  # copies: rank deficient in another way
    candidates = torch.rand(4, 12, generator=generator) > 0.3
    candidates[3] = True
    candidates[2, :] = False
    candidates[2, 4] = True  # a lone candidate
    relevance = torch.rand(4, 12, generator=generator)
    relevance[0, candidates[0]] = 0.0  # a pool without relevance
    relevance[~candidates] = 5.0  # padding's relevance is ignored, whatever it holds
    available = candidates.sum(dim=1)
    for k in range(13):
        budgets = torch.minimum(torch.full((4,), k), available)
        kept = cdpp.select(features, relevance, candidates, budgets)
        for g in range(4):
            assert len(kept[g]) == int(budgets[g]) and kept[g].dtype == torch.long
            assert kept[g].tolist() == sorted(set(kept[g].tolist())), "not ascending or duplicated"
            assert bool(candidates[g, kept[g]].all()), "a padding token was kept"
            # pools are independent when batched, and a second run picks the same
            assert kept[g].tolist() == cdpp_one(features[g], relevance[g], int(budgets[g]), candidates[g])
        assert [t.tolist() for t in cdpp.select(features, relevance, candidates, budgets)] == [t.tolist() for t in kept]
    assert kept[3].tolist() == list(range(12))


def test_instruction_relevance_is_the_best_standardised_cosine_min_max_over_the_whole_image():
    generator = torch.Generator().manual_seed(0)
    projected = torch.randn(3, 10, 6, generator=generator)
    instruction = torch.randn(4, 6, generator=generator)
    candidates = torch.ones(3, 10, dtype=torch.bool)
    candidates[2, 7:] = False
    projected[2, 7:] = instruction.mean(dim=0) * 5  # padding as relevant as can be: not counted
    relevance = instruction_relevance(projected, instruction, candidates)
    assert relevance.shape == (3, 10) and relevance.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(
        projected.double()[:, :, None, :], instruction.double()[None, None], dim=-1
    )  # (3, 10, 4)
    # each instruction token standardised over the candidates, then the best token per candidate
    on = cosine[candidates]
    score = ((cosine - on.mean(dim=0)) / on.std(dim=0)).max(dim=-1).values
    low, high = score[candidates].min(), score[candidates].max()
    expected = ((score - low) / (high - low)).masked_fill(~candidates, 0.0)
    torch.testing.assert_close(relevance, expected.float())
    assert float(relevance[candidates].min()) == 0.0 and float(relevance[candidates].max()) == 1.0
    assert bool((relevance[~candidates] == 0).all())
    # one range for all partitions: not every partition reaches 1 (per partition, each would)
    assert sorted(float(relevance[p].max()) for p in range(3)).count(1.0) == 1


def test_instruction_relevance_is_uniform_without_an_instruction_or_a_spread():
    generator = torch.Generator().manual_seed(1)
    projected = torch.randn(2, 5, 6, generator=generator)
    candidates = torch.tensor([[True] * 5, [True, True, False, False, False]])
    none = instruction_relevance(projected, torch.zeros(0, 6), candidates)
    assert torch.equal(none, candidates.float())
    # every candidate the same direction, at scales whose float32 rounding tilts it a little
    flat = projected[0, 0].expand(2, 5, 6) * torch.arange(1, 11).float().view(2, 5, 1)
    instruction = torch.randn(3, 6, generator=generator)
    assert torch.equal(instruction_relevance(flat, instruction, candidates), candidates.float())
    one = torch.zeros(2, 5, dtype=torch.bool)
    one[1, 1] = True  # a single candidate: nothing to spread
    assert torch.equal(instruction_relevance(projected, instruction, one), one.float())


def test_random_draws_afresh_for_each_image_and_again_for_the_same_image():
    """Images of one layout keep their own random subsets, so over many images every position is
    kept about equally often (one seed for all images would keep the same 8 positions in each);
    the same image keeps the same subset, and another seed draws anew."""
    candidates, budgets = torch.ones(2, 64, dtype=torch.bool), torch.tensor([8, 8])
    generator = torch.Generator().manual_seed(0)

    def kept(features: torch.Tensor, seed: int = 0) -> list[list[int]]:
        return [k.tolist() for k in selectors.pick("random", selectors.Pools(features, candidates, budgets), seed).kept]

    images = [torch.randn(2, 64, 16, generator=generator) for _ in range(200)]
    counts = torch.zeros(2, 64)
    for features in images:
        for p, picks in enumerate(kept(features)):
            counts[p, picks] += 1
    assert counts.sum() == 200 * 16 and counts.max() <= 50 and counts.min() >= 8  # expected 25 each
    first = images[0]
    assert kept(first) == kept(first.clone())
    assert kept(first, seed=1) != kept(first)


def test_cdpp_needs_relevance_through_pick():
    pools = selectors.Pools(torch.randn(1, 5, 3), torch.ones(1, 5, dtype=torch.bool), torch.tensor([2]))
    with pytest.raises(ValueError, match="selection 'cdpp' needs the instruction's relevance"):
        selectors.pick("cdpp", pools)
    assert "cdpp" in SELECTIONS and selectors.NEEDS["cdpp"] == () and "cdpp" not in selectors.NEEDS_KEYS
    assert parse_method("global+cdpp") == ("global", "cdpp") and "cdpp" not in PRESETS
    assert DropConfig(method="hired+cdpp").needs == ("init",)


def test_global_cdpp_compares_relevance_across_partitions():
    layout = GEOMETRY.layout((672, 672))  # 2x2 grid, every patch a candidate
    side, P = layout.side, layout.num_partitions
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(P, side * side, 4, generator=generator)
    candidates = layout.candidate_mask()
    # the instruction matches sub-image 2's projected tokens only: the others are orthogonal to
    # its words (dimensions 2-7 against 0-1)
    projected = torch.randn(P, side * side, 8, generator=generator)
    projected[..., :2] = 0
    instruction = torch.zeros(2, 8)
    instruction[:, :2] = torch.randn(2, 2, generator=generator)
    projected[2] = instruction.mean(dim=0) + 0.05 * projected[2]
    relevance = instruction_relevance(projected, instruction, candidates)
    pools = selectors.Pools.whole_image(features, candidates, 50, relevance=relevance)
    assert pools.relevance.shape == (1, P * side * side)
    kept = selectors.pick("cdpp", pools).kept[0]
    assert kept.tolist() == cdpp_one(pools.features[0], pools.relevance[0], 50)
    per_partition = torch.bincount(kept // (side * side), minlength=P)
    assert per_partition.tolist() == [0, 0, 50, 0, 0]


# ------------------------------------------------------------------------------------------
# Allocation
# ------------------------------------------------------------------------------------------


def test_even_split_respreads_what_a_full_partition_cannot_take():
    assert split_budget("even", 100, torch.tensor([576, 336, 0, 336])).tolist() == [34, 33, 0, 33]
    assert split_budget("even", 300, torch.tensor([576, 10, 576])).tolist() == [145, 10, 145]
    assert split_budget("proportional", 300, torch.tensor([200, 100, 0])).tolist() == [200, 100, 0]
    with pytest.raises(ValueError, match="global"):
        split_budget("global", 10, torch.tensor([5, 5]))


def test_global_topk_ranks_attention_across_partitions():
    layout = GEOMETRY.layout((672, 672))  # 2x2 grid, every patch a candidate
    side, P = layout.side, layout.num_partitions
    final = torch.rand(P, side * side) * 0.1
    final[2, :50] += 1.0  # sub-image 2 holds the 50 most attended patches of the image
    features = torch.randn(P, side * side, 4)
    kept = drop_image(DropConfig(method="global+topk", budget=50), layout, features, 2880, None, final)
    assert kept.budgets.tolist() == [0, 0, 50, 0, 0]
    assert kept.kept_indices()[2].tolist() == list(range(50))


def test_even_visionzip_gives_each_partition_the_same_share():
    layout = GEOMETRY.layout((672, 672))
    side, P = layout.side, layout.num_partitions
    generator = torch.Generator().manual_seed(0)
    kept = drop_image(
        DropConfig(method="visionzip", budget=320),
        layout,
        torch.randn(P, side * side, 4, generator=generator),
        2880,
        None,
        torch.rand(P, side * side, generator=generator),
        torch.randn(P, side * side, 3, generator=generator),
    )
    assert kept.budgets.tolist() == [64] * 5


# ------------------------------------------------------------------------------------------
# Method strings
# ------------------------------------------------------------------------------------------


def test_presets_keep_their_names_and_parse_into_alloc_and_select():
    assert METHODS[:6] == ("hired", "full", "spatial", "random", "prumerge", "prumerge+")
    assert set(METHODS) == set(PRESETS) | {"full", "prumerge", "prumerge+"}
    assert parse_method("hired") == ("hired", "topk")
    assert parse_method("spatial") == ("proportional", "spatial")
    assert parse_method("visionzip") == ("even", "visionzip")
    assert parse_method("divprune") == ("global", "divprune")
    assert parse_method("scope") == ("global", "coverage")
    assert parse_method("hired+divprune") == ("hired", "divprune")
    assert parse_method("full") is None and parse_method("prumerge+") is None


@pytest.mark.parametrize("bad", ["foo", "hired+", "+topk", "hired+topk+x", "global+full", "HIRED", "even+scope"])
def test_unknown_method_strings_fail_at_construction_listing_the_options(bad):
    with pytest.raises(ValueError, match="allocation one of hired, proportional, even, global") as error:
        DropConfig(method=bad)
    assert "divprune" in str(error.value) and "coverage" in str(error.value)
    assert bad not in BUDGETED


def test_budgeted_membership_covers_every_combination():
    for method in [*PRESETS, *COMBINATIONS]:
        assert method in BUDGETED
        assert DropConfig(method=method).budgeted
    for method in ("full", "prumerge", "prumerge+", "nonsense", 3):
        assert method not in BUDGETED
    assert sorted({"hired", "full", "visionzip"} & BUDGETED) == ["hired", "visionzip"]
    with pytest.raises(ValueError, match="needs a budget"):
        DropConfig(method="even+divprune", budget=None)


def test_needs_say_which_rows_and_keys_the_tower_must_capture():
    assert DropConfig(method="hired").needs == ("init", "final")
    assert DropConfig(method="visionzip").needs == ("final",) and DropConfig(method="visionzip").needs_keys
    assert DropConfig(method="divprune").needs == () and not DropConfig(method="divprune").needs_keys
    assert DropConfig(method="scope").needs == ("final",)
    assert DropConfig(method="hired+divprune").needs == ("init",)
    assert DropConfig(method="hired+visionzip").needs == ("init", "final")
    assert DropConfig(method="global+spatial").needs == ()
    assert DropConfig(method="prumerge").needs_keys and not DropConfig(method="hired").needs_keys
    with pytest.raises(ValueError, match="visionzip_dominant"):
        DropConfig(method="visionzip", visionzip_dominant=1.5)
    with pytest.raises(ValueError, match="coverage_power"):
        DropConfig(method="scope", coverage_power=-1.0)


# ------------------------------------------------------------------------------------------
# Exact budgets, every combination
# ------------------------------------------------------------------------------------------

sizes = st.tuples(st.integers(20, 3000), st.integers(20, 3000))


@settings(max_examples=60, deadline=None)
@given(
    size=sizes,
    single=st.booleans(),
    budget=st.one_of(st.floats(0.001, 1.0), st.integers(1, 3500)),
    method=st.sampled_from(COMBINATIONS + list(PRESETS)),
    seed=st.integers(0, 2**16),
)
def test_every_combination_keeps_exactly_its_budget(size, single, budget, method, seed):
    # single: LLaVA-1.5's one partition; otherwise LLaVA-NeXT's 3 to 5 with letterbox padding
    layout = PartitionLayout.single(size, 336, 14) if single else GEOMETRY.layout(size)
    max_tokens = 576 if single else GEOMETRY.max_tokens
    side, P = layout.side, layout.num_partitions
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(P, side * side, 4, generator=generator)
    kept = drop_image(
        DropConfig(method=method, budget=budget, seed=seed),
        layout,
        features,
        max_tokens,
        torch.rand(side * side, generator=generator),
        torch.rand(P, side * side, generator=generator),
        torch.randn(P, side * side, 3, generator=generator),
        torch.rand(P, side * side, generator=generator),  # relevance: read by cdpp only
    )
    available = layout.available()
    expected = min(Budget.parse(budget).resolve(max_tokens), int(available.sum()))
    assert kept.num_tokens == expected
    assert kept.budgets.tolist() == [len(k) for k in kept.kept_indices()]
    assert bool((kept.budgets <= available).all())
    mask = layout.candidate_mask()
    assert bool(mask[kept.partition, kept.patch].all()), "a padding patch was kept"
    assert len(set(zip(kept.partition.tolist(), kept.patch.tolist()))) == kept.num_tokens
    if DropConfig(method=method).selection != "visionzip":
        # only VisionZip merges: everyone else passes kept features through untouched
        assert torch.equal(kept.features, features[kept.partition, kept.patch])


@pytest.mark.parametrize("method", COMBINATIONS)
def test_each_combination_is_exact_on_padded_and_single_partition_images(method):
    # hypothesis samples combinations; this pins every one of them on two fixed geometries
    generator = torch.Generator().manual_seed(0)
    single = PartitionLayout.single((480, 640), 336, 14)
    geometries = [(GEOMETRY.layout((200, 336)), GEOMETRY.max_tokens), (single, 576)]
    for layout, max_tokens in geometries:
        side, P = layout.side, layout.num_partitions
        available = int(layout.available().sum())
        for budget in (1, 7, 0.2, available - 1, available, available + 5):
            kept = drop_image(
                DropConfig(method=method, budget=budget),
                layout,
                torch.randn(P, side * side, 4, generator=generator),
                max_tokens,
                torch.rand(side * side, generator=generator),
                torch.rand(P, side * side, generator=generator),
                torch.randn(P, side * side, 3, generator=generator),
                torch.rand(P, side * side, generator=generator),
            )
            assert kept.num_tokens == min(Budget.parse(budget).resolve(max_tokens), available)
            assert kept.budgets.tolist() == [len(k) for k in kept.kept_indices()]
            assert bool(layout.candidate_mask()[kept.partition, kept.patch].all())
