"""The order kept tokens reach the LLM in, and where row-newline tokens go.

Stock LLaVA-NeXT feeds the full image's tokens, then the unpadded stitched sub-image grid in
raster order with a newline token after each grid row. Kept tokens follow the same order, so with
nothing dropped the sequence equals the stock model's to the token.
"""

from __future__ import annotations

from typing import Literal

import torch

from .partition import PartitionLayout

NewlineMode = Literal["auto", "rows", "none"]
NEWLINE_MODES: tuple[str, ...] = ("auto", "rows", "none")


def token_order(
    layout: PartitionLayout, kept: list[torch.Tensor], newlines: NewlineMode, dropped_any: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence order of one image's kept tokens.

    Args:
        layout: the image's partition geometry.
        kept: per partition, ``(K_p,)`` kept patch indices, ascending.
        newlines: "rows" puts a newline after each stitched grid row that kept a token, "none"
            puts none, "auto" is "rows" when nothing was dropped (stock sequence) else "none".
        dropped_any: whether any candidate patch was dropped.

    Returns:
        ``partition`` ``(K,)``, ``patch`` ``(K,)`` long, and ``newline_after`` ``(K,)`` bool.
    """
    side_tokens = layout.side * layout.side
    full = kept[0]
    partitions = [torch.zeros_like(full)]
    patches = [full]
    newline_after = [torch.zeros(full.numel(), dtype=torch.bool)]
    if layout.num_subimages:
        part, patch = layout.stitched_order()
        flags = torch.zeros(layout.num_partitions, side_tokens, dtype=torch.bool)
        for p in range(1, layout.num_partitions):
            flags[p, kept[p]] = True
        is_kept = flags[part, patch]
        row_len = layout.grid[1] * layout.side
        row_of = torch.arange(part.numel()) // row_len
        part, patch, row_of = part[is_kept], patch[is_kept], row_of[is_kept]
        last_in_row = torch.ones_like(row_of, dtype=torch.bool)
        last_in_row[:-1] = row_of[1:] != row_of[:-1]
        with_rows = newlines == "rows" or (newlines == "auto" and not dropped_any)
        partitions.append(part)
        patches.append(patch)
        newline_after.append(last_in_row if with_rows else torch.zeros_like(last_in_row))
    return torch.cat(partitions), torch.cat(patches), torch.cat(newline_after)
