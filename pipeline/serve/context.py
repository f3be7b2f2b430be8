"""The context-length check: a request whose prompt, visual tokens and ``max_tokens`` exceed the
served maximum is refused with 400 ``context_length_exceeded`` before any model work, as OpenAI
and vLLM answer it (a prompt past the model's positions would otherwise be attempted, and a
huge prefill takes its batch-mates down with it)."""

from __future__ import annotations

from hired_ops import BUDGETED, DropConfig
from hired_ops.vision import VisionGeometry

from .errors import bad_request


def visual_bound(geometry: VisionGeometry, image_size: tuple[int, int], drop: DropConfig, max_visual_tokens: int) -> int:
    """Most LLM positions one image of ``(height, width)`` can take under ``drop``, known before
    the tower runs.

    An upper bound, exact for ``full``: the kept tokens are ``min(budget, available)`` for a
    budgeted method (``available`` at most for the others, which merge or choose fewer), and the
    row newlines at most the stock model's (one per row of the unpadded sub-image grid; dropping
    can only remove rows). Whether newlines are kept at all depends on the tokens chosen, which
    only the tower knows, so they are counted in full.
    """
    layout = geometry.layout(image_size)
    available = int(layout.available().sum())
    kept = min(drop.budget.resolve(max_visual_tokens), available) if drop.method in BUDGETED else available
    if not layout.anyres:
        return kept
    rows = layout.unpadded_rows_cols[0]
    return kept + (rows.stop - rows.start)


def check_context(prompt_tokens: int, visual_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """Raise a 400 ``context_length_exceeded`` when the request cannot fit the served context."""
    total = prompt_tokens + visual_tokens + max_tokens
    if total > max_model_len:
        raise bad_request(
            f"this model's maximum context length is {max_model_len} tokens; the request needs up to {total} "
            f"({prompt_tokens} in the messages, up to {visual_tokens} for the images, {max_tokens} for the "
            "completion): shorten the messages, send fewer images or a lower budget, or lower max_tokens",
            "messages",
            "context_length_exceeded",
        )
