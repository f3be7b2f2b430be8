"""95% intervals for accuracy tables: a cluster bootstrap over images, and paired differences.

Questions about one image are not independent (a model that misses an object misses every
question about it), so the resampling unit is the image: each resample draws images with
replacement and keeps all of their questions, then recomputes the statistic (the task's own
headline metric, POPE's F1 included). A method's difference from full tokens is computed on the
same resamples for both, which is the paired bootstrap: it removes the shared variation of which
images happened to be drawn. Percentile intervals, 2,000 resamples, a fixed seed.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence

RESAMPLES = 2000
LEVEL = 0.95


def draw_groups(groups: Sequence[Hashable], resamples: int = RESAMPLES, seed: int = 0) -> list[list[Hashable]]:
    """``resamples`` draws, each of ``len(set(groups))`` distinct groups picked with replacement
    (the same draws serve every task and setting asked about these groups: paired)."""
    keys = sorted(set(groups), key=str)
    rng = random.Random(seed)
    return [rng.choices(keys, k=len(keys)) for _ in range(resamples)]


def rows_of(draw: Sequence[Hashable], groups: Sequence[Hashable]) -> list[int]:
    """The indices of every row whose group is in ``draw``, once per time it was drawn."""
    members: dict[Hashable, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    return [i for key in draw for i in members.get(key, [])]


def percentile_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` interval of ``values`` (nearest-rank percentiles)."""
    ordered = sorted(values)
    tail = (1 - level) / 2
    low = ordered[max(0, int(tail * len(ordered)))]
    high = ordered[min(len(ordered) - 1, int((1 - tail) * len(ordered)))]
    return low, high


