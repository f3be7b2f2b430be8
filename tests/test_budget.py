"""Budgets are exact, allocation follows DESIGN.md, and padding is never a candidate."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hired_ops import (
    Budget,
    DropConfig,
    PartitionLayout,
    allocate,
    capped_proportional,
    drop_image,
    largest_remainder,
)
from hired_ops.vision import VisionGeometry

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
GEOMETRY = VisionGeometry(tile=336, patch=14, pinpoints=tuple(map(tuple, PINPOINTS)), num_layers=24, feature_layer=-2)


def test_budget_parse_forms():
    assert Budget.parse("0.2") == Budget(fraction=0.2)
    assert Budget.parse("20%") == Budget(fraction=0.2)
    assert Budget.parse(576) == Budget(tokens=576)
    assert Budget.parse("576") == Budget(tokens=576)
    assert Budget.parse(1.0) == Budget(fraction=1.0)
    assert Budget.parse(0.2).resolve(2880) == 576
    assert Budget.parse(0.4).resolve(2880) == 1152
    assert Budget.parse("1").resolve(2880) == 1  # an integer string is a count, not 100%


@pytest.mark.parametrize("bad", ["abc", "0", "-3", "1.5", 0.0, -0.1, True, "150%"])
def test_budget_rejects_bad_values_with_guidance(bad):
    with pytest.raises(ValueError, match="budget"):
        Budget.parse(bad)


def test_largest_remainder_ties_go_to_lower_index():
    assert largest_remainder(10, torch.tensor([1.0, 1.0, 1.0])).tolist() == [4, 3, 3]
    assert largest_remainder(7, torch.tensor([0.5, 0.25, 0.25])).tolist() == [3, 2, 2]  # 3.5, 1.75, 1.75
    assert largest_remainder(5, torch.tensor([1.0, 1.0])).tolist() == [3, 2]
    assert largest_remainder(3, torch.zeros(4)).tolist() == [1, 1, 1, 0]


def test_capped_overflow_is_respread_in_proportion():
    # 100 tokens by weights 8:1:1, first capped at 50 -> the 30 it cannot take go 1:1 to the others
    shares = capped_proportional(100, torch.tensor([8.0, 1.0, 1.0]), torch.tensor([50, 100, 100]))
    assert shares.tolist() == [50, 25, 25]


def test_allocation_alpha_split_and_scores():
    available = torch.tensor([576, 576, 576, 576, 576])
    budgets = allocate(576, 0.5, torch.tensor([3.0, 1.0, 0.0, 0.0]), available)
    assert budgets.tolist() == [288, 216, 72, 0, 0]
    assert allocate(576, 1.0, torch.ones(4), available).tolist() == [576, 0, 0, 0, 0]


def test_allocation_full_image_overflow_moves_to_subimages():
    available = torch.tensor([576, 576, 576, 576, 576])
    budgets = allocate(2000, 0.5, torch.tensor([1.0, 1.0, 1.0, 1.0]), available)
    assert budgets.tolist() == [576, 356, 356, 356, 356]


def test_allocation_subimage_overflow_moves_back_to_full_image():
    # sub-images can take only 100 in all, so the full image takes the rest of the budget
    budgets = allocate(500, 0.1, torch.ones(2), torch.tensor([576, 50, 50]))
    assert budgets.tolist() == [400, 50, 50]


def test_attention_in_one_region_gives_that_subimage_the_subimage_budget():
    layout = PartitionLayout.for_image((672, 672), PINPOINTS, 336, 14)  # 2x2 grid, no padding
    side = layout.side
    init = torch.zeros(side, side)
    init[side // 2 :, : side // 2] = 1.0  # all attention mass in the bottom-left quarter
    features = torch.randn(layout.num_partitions, side * side, 8)
    final = torch.rand(layout.num_partitions, side * side)
    kept = drop_image(DropConfig(budget=400), layout, features, 2880, init.flatten(), final)
    # bottom-left is sub-image 3 (raster order 1=top-left, 2=top-right, 3=bottom-left, 4=bottom-right)
    assert kept.budgets.tolist() == [200, 0, 0, 200, 0]
    # above its cap, the excess spreads to the other sub-images
    kept = drop_image(DropConfig(budget=2000), layout, features, 2880, init.flatten(), final)
    assert kept.budgets[3] == 576 and kept.budgets[0] == 576
    assert kept.budgets.sum() == 2000 and kept.budgets[1:].tolist().count(576) == 1


def test_padding_only_subimage_gets_nothing():
    # a 200x336 image on a 1008x336 canvas: the top and bottom tiles are pure letterbox padding
    layout = PartitionLayout.for_image((200, 336), [[1008, 336]], 336, 14)
    assert layout.grid == (3, 1)
    assert layout.available().tolist()[1:] == [0, 336, 0]
    assert layout.subimage_coverage().sum(dim=1)[[0, 2]].tolist() == [0.0, 0.0]
    side = layout.side
    for budget in (10, 300, 700, 2000):
        kept = drop_image(
            DropConfig(budget=budget), layout, torch.randn(4, side * side, 4), 2880,
            torch.rand(side * side), torch.rand(4, side * side),
        )
        assert kept.budgets[[1, 3]].tolist() == [0, 0]
        assert kept.num_tokens == min(budget, 576 + 336)
        assert not set(kept.partition.tolist()) & {1, 3}


def test_coverage_maps_regions_in_2d_not_bands():
    # a wide image on a 1x3 canvas: each sub-image covers a vertical third of the original, so a
    # full-image patch in the left third belongs wholly to sub-image 1
    layout = PartitionLayout.for_image((336, 1008), PINPOINTS, 336, 14)
    assert layout.grid == (1, 3)
    cover = layout.subimage_coverage().view(3, 24, 24)
    assert torch.allclose(cover[0, :, :8], torch.ones(24, 8))
    assert torch.allclose(cover[2, :, 16:], torch.ones(24, 8))
    assert torch.allclose(cover.sum(dim=0), torch.ones(24, 24))


sizes = st.tuples(st.integers(20, 3000), st.integers(20, 3000))


@settings(max_examples=40, deadline=None)
@given(size=sizes, alpha=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_every_budget_allocates_exactly_min_budget_available(size, alpha, seed):
    layout = GEOMETRY.layout(size)
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(layout.num_subimages, generator=generator)
    available = layout.available()
    total = int(available.sum())
    for budget in range(1, total + 2):
        budgets = allocate(budget, alpha, scores, available)
        assert int(budgets.sum()) == min(budget, total)
        assert bool((budgets <= available).all()) and bool((budgets >= 0).all())


@settings(max_examples=25, deadline=None)
@given(
    size=sizes,
    fraction=st.floats(0.001, 1.0),
    method=st.sampled_from(["hired", "spatial", "random"]),
    newlines=st.sampled_from(["auto", "rows", "none"]),
    seed=st.integers(0, 2**16),
)
def test_each_image_gets_exactly_its_budget(size, fraction, method, newlines, seed):
    layout = GEOMETRY.layout(size)
    side = layout.side
    generator = torch.Generator().manual_seed(seed)
    P = layout.num_partitions
    kept = drop_image(
        DropConfig(method=method, budget=fraction, newlines=newlines, seed=seed),
        layout,
        torch.randn(P, side * side, 4, generator=generator),
        GEOMETRY.max_tokens,
        torch.rand(side * side, generator=generator),
        torch.rand(P, side * side, generator=generator),
    )
    available = layout.available()
    expected = min(Budget(fraction=fraction).resolve(GEOMETRY.max_tokens), int(available.sum()))
    assert kept.num_tokens == expected
    assert kept.budgets.tolist() == [len(k) for k in kept.kept_indices()]
    mask = layout.candidate_mask()
    assert bool(mask[kept.partition, kept.patch].all()), "a padding patch was kept"
    assert len(set(zip(kept.partition.tolist(), kept.patch.tolist()))) == kept.num_tokens


def test_prumerge_reports_what_it_kept_and_merges_pruned_tokens():
    layout = GEOMETRY.layout((672, 672))  # no padding: every patch is a candidate
    side, P = layout.side, layout.num_partitions
    generator = torch.Generator().manual_seed(0)
    final = torch.rand(P, side * side, generator=generator)
    final[:, :5] += 10.0  # five clear outliers per partition
    features = torch.randn(P, side * side, 8, generator=generator)
    keys = torch.randn(P, side * side, 16, generator=generator)
    plain = drop_image(DropConfig(method="prumerge", budget=None), layout, features, 2880, None, final, keys)
    plus = drop_image(DropConfig(method="prumerge+", budget=None), layout, features, 2880, None, final, keys)
    assert plain.budgets.tolist() == [len(k) for k in plain.kept_indices()]
    candidates = layout.candidate_mask()
    for p in range(P):
        expected = candidates[p].clone()
        expected[5:] = False  # only the planted outliers lie above Q3 + 1.5 IQR
        assert plain.kept_indices()[p].tolist() == expected.nonzero().flatten().tolist()
    assert bool((plus.budgets >= plain.budgets).all()) and plus.num_tokens > plain.num_tokens
    # kept tokens carry a weighted mean with their neighbours, not their own raw features
    assert not torch.allclose(plain.features, features[plain.partition, plain.patch])
