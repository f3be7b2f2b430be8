"""CLS-attention rows of a CLIP-style vision tower, captured cheaply.

``output_attentions=True`` materialises every layer's full ``(N+1) x (N+1)`` map and forces the
eager kernel (with sdpa it silently returns nothing). HiRED needs one row of two layers, so a
forward pre-hook on those layers' attention modules recomputes only what the row needs, q of the
CLS token and k of every token, and the tower keeps its fast kernel for everything else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class CLSCapture:
    """What the hooks recorded during one forward pass, keyed by layer index.

    ``rows[l]``: ``(P, H, N)`` softmax attention of the CLS query over the N patch tokens
    (the CLS key's column dropped; rows sum to 1 minus the CLS self-attention).
    ``keys[l]``: ``(P, N, D)`` patch keys, recorded only for layers named in ``keep_keys``.
    """

    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    keys: dict[int, torch.Tensor] = field(default_factory=dict)

    def summed(self, layer: int) -> torch.Tensor:
        """``(P, N)``: the layer's CLS row summed over heads."""
        if layer not in self.rows:
            raise KeyError(f"layer {layer} was not captured; captured: {sorted(self.rows)}")
        return self.rows[layer].sum(dim=1)


def cls_attention_row(attn: nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS row of one attention module's softmax map, from its q/k projections.

    Args:
        attn: a CLIP-style attention module (``q_proj``, ``k_proj``, ``num_heads``, ``head_dim``,
            ``scale``).
        hidden_states: ``(P, N+1, D)`` input of the attention module (after its layer norm),
            token 0 being CLS.

    Returns:
        ``(P, H, N)`` attention of CLS over the patch tokens, and ``(P, N, D)`` patch keys.
    """
    num_heads, head_dim = attn.num_heads, attn.head_dim
    batch, tokens, _ = hidden_states.shape
    # softmax in float32: bf16 logits over 577 keys lose the small differences top-k ranks on
    q = attn.q_proj(hidden_states[:, :1]).float().view(batch, 1, num_heads, head_dim).transpose(1, 2)
    k = attn.k_proj(hidden_states).float()
    k_heads = k.view(batch, tokens, num_heads, head_dim).transpose(1, 2)
    logits = (q @ k_heads.transpose(-1, -2)) * attn.scale  # (P, H, 1, N+1)
    row = logits.softmax(dim=-1)[:, :, 0, 1:]
    return row, k[:, 1:]


@contextmanager
def capture_cls_attention(
    layers: Sequence[nn.Module], indices: Sequence[int], keep_keys: Sequence[int] = ()
) -> Iterator[CLSCapture]:
    """Record the CLS attention row of ``layers[i].self_attn`` for each ``i`` in ``indices``.

    Works on the stock tower call and on a truncated layer loop alike; the hooks read the
    attention module's input and change nothing, so the tower's outputs are untouched.
    """
    capture = CLSCapture()
    handles = []
    keep = {i % len(layers) for i in keep_keys}
    for index in sorted(set(indices)):
        if not -len(layers) <= index < len(layers):
            raise ValueError(f"layer {index} does not exist: the tower has {len(layers)} layers")
        index = index % len(layers)

        def hook(module: nn.Module, args: tuple, kwargs: dict, index: int = index) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            with torch.no_grad():
                row, keys = cls_attention_row(module, hidden)
            capture.rows[index] = row
            if index in keep:
                capture.keys[index] = keys

        handles.append(layers[index].self_attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield capture
    finally:
        for handle in handles:
            handle.remove()
