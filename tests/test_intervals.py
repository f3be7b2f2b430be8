"""Bootstrap intervals over images: coverage of a known case, pairing, and resampling by image."""

from __future__ import annotations

import random

from pipeline.experiments.intervals import draw_groups, percentile_interval, rows_of


def test_draws_keep_every_row_of_a_drawn_image_and_repeat_with_the_seed():
    groups = ["a", "a", "b", "c", "c", "c"]
    draws = draw_groups(groups, resamples=50, seed=1)
    assert draws == draw_groups(groups, resamples=50, seed=1) and draws != draw_groups(groups, resamples=50, seed=2)
    for draw in draws:
        assert len(draw) == 3 and set(draw) <= {"a", "b", "c"}
        rows = rows_of(draw, groups)
        assert sorted(rows) == sorted(i for key in draw for i, g in enumerate(groups) if g == key)


def test_interval_of_a_mean_covers_the_truth_about_95_percent_of_the_time():
    rng = random.Random(0)
    covered = 0
    for trial in range(200):
        scores = [float(rng.random() < 0.6) for _ in range(200)]
        groups = list(range(200))
        draws = draw_groups(groups, resamples=300, seed=trial)
        low, high = percentile_interval([sum(scores[i] for i in rows_of(d, groups)) / 200 for d in draws])
        covered += low <= 0.6 <= high
    assert 0.88 <= covered / 200 <= 0.99


def test_identical_settings_differ_by_exactly_zero_when_paired():
    groups = [i // 3 for i in range(90)]
    scores = [float(i % 2) for i in range(90)]
    draws = draw_groups(groups, resamples=200)
    mean = lambda rows: sum(scores[i] for i in rows) / len(rows)  # noqa: E731
    assert percentile_interval([mean(rows_of(d, groups)) - mean(rows_of(d, groups)) for d in draws]) == (0.0, 0.0)
    low, high = percentile_interval([mean(rows_of(d, groups)) for d in draws])
    assert low < 0.5 < high
