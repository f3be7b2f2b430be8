"""Instruction relevance of an image's visual tokens, the ``r`` of the conditional-DPP selection
(:mod:`hired_ops.cdpp`).

Our exact definition, for one image's candidate tokens after the projector ``y_u`` (the LLM's
input space) and the instruction's token embeddings ``t_1 .. t_Q`` (the LLM's input embedding
table):

* raw score ``a_u = (1/Q) sum_q cos(y_u, t_q)``, the mean cosine over instruction tokens;
* min-max normalised over the whole image's candidates, all partitions together (so that pools
  of one image compare, whatever the allocation): ``r_u = (a_u - min a) / (max a - min a)``,
  in ``[0, 1]``, the most relevant candidate at 1 and the least at 0;
* padding gets ``r = 0``.

Degenerate cases give uniform relevance, ``r = 1`` on every candidate, which turns the
conditional DPP into plain DPP diversity: no instruction (``Q = 0``), and a constant score
(``max a - min a`` numerically zero, e.g. a single candidate), where min-max has nothing to scale.
"""

from __future__ import annotations

import torch

# a score range at or below this is constant: it is the rounding of float32 inputs (a cosine's
# error is ~1e-7), which min-max would only amplify to [0, 1]
FLAT = 1e-6


def instruction_relevance(projected: torch.Tensor, instruction: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per-token relevance to the instruction, in ``[0, 1]``.

    Args:
        projected: ``(P, N, D_llm)`` the image's tokens after the model's projector.
        instruction: ``(Q, D_llm)`` the instruction's token embeddings (LLM input embedding table);
            ``Q = 0`` means no instruction.
        candidates: ``(P, N)`` bool, tokens that may be kept (the rest is padding).

    Returns:
        ``(P, N)`` float32 on ``projected``'s device: min-max normalised mean cosine on the
        candidates, 0 on padding; ones on the candidates when ``Q = 0`` or the score is constant.
    """
    candidates = candidates.to(projected.device)
    uniform = candidates.float()
    if instruction.shape[0] == 0 or not bool(candidates.any()):
        return uniform
    tokens = torch.nn.functional.normalize(projected.double(), dim=-1)
    words = torch.nn.functional.normalize(instruction.to(projected.device, torch.float64), dim=-1)
    score = (tokens @ words.T).mean(dim=-1)  # (P, N): mean cosine over instruction tokens
    low, high = score[candidates].min(), score[candidates].max()
    if float(high - low) <= FLAT:
        return uniform
    scaled = ((score - low) / (high - low)).clamp(0.0, 1.0)  # clamp: rounding at the ends
    return scaled.masked_fill(~candidates, 0.0).float()
