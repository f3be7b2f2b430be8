"""Fixed-length LLM batches.

Every image at a budget yields the same number of visual tokens, so rows differ in length only
by their prompts. Rows of equal length batch with no padding at all; where prompts differ, rows
are sorted by length and cut into groups whose padding stays under a limit.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], max_padding: float = 0.1) -> list[list[int]]:
    """Group row indices into LLM calls.

    Args:
        lengths: ``(B,)`` LLM input length of each row.
        max_padding: largest padding share a group may carry: ``1 - sum(len) / (n * max(len))``.

    Returns:
        Groups of row indices, each sorted by length; every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    groups: list[list[int]] = []
    for index in order:
        if groups:
            group = groups[-1]
            longest = lengths[index]  # sorted ascending: the newcomer is the longest
            total = sum(lengths[i] for i in group) + longest
            if 1 - total / ((len(group) + 1) * longest) <= max_padding:
                group.append(index)
                continue
        groups.append([index])
    return groups


def padding_fraction(lengths: Sequence[int]) -> float:
    """Share of a left-padded batch of these lengths that is padding."""
    if not lengths:
        return 0.0
    return 1 - sum(lengths) / (len(lengths) * max(lengths))
