"""Instruction relevance of an image's visual tokens, the ``r`` of the conditional-DPP selection
(:mod:`hired_ops.cdpp`).

Our exact definition, for one image's candidate tokens after the projector ``y_u`` (the LLM's
input space) and the instruction's token embeddings ``t_1 .. t_Q`` (the LLM's input embedding
table):

* cosine ``c_uq = cos(y_u, t_q)`` of every candidate with every instruction token;
* each instruction token standardised over the image's candidates, all partitions together:
  ``z_uq = (c_uq - mean_u c_uq) / std_u c_uq`` (a token whose cosine is the same on every
  candidate says nothing about where to look: its ``z`` is 0);
* raw score ``a_u = max_q z_uq``: a candidate is as relevant as the instruction token it matches
  most unusually well;
* min-max normalised over the image's candidates: ``r_u = (a_u - min a) / (max a - min a)``, in
  ``[0, 1]``; padding gets ``r = 0``.

Why not the mean cosine over instruction tokens (CDPruner's instruction embedding is one vector):
with an LLM's token embeddings the function words ("what", "is", "the") dominate that mean, and
they resemble background tokens. Measured on unseen training-split dense scenes of the testbed
(54 VQA questions; AUC of the patches showing the object the question names against the other
candidates): mean cosine 0.66 (it ranks background above objects: 0.38 for objects against
background), max cosine 0.65, standardised mean 0.66, standardised max 0.95. The held-out set was
not used for the choice.

Degenerate cases give uniform relevance, ``r = 1`` on every candidate, which turns the
conditional DPP into plain DPP diversity: no instruction (``Q = 0``), and a constant score
(``max a - min a`` numerically zero, e.g. a single candidate), where min-max has nothing to scale.
"""

from __future__ import annotations

import torch

# a spread at or below this is constant: it is the rounding of float32 inputs (a cosine's error
# is ~1e-7), which standardising or min-max would only amplify
FLAT = 1e-6


def instruction_relevance(projected: torch.Tensor, instruction: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Per-token relevance to the instruction, in ``[0, 1]``.

    Args:
        projected: ``(P, N, D_llm)`` the image's tokens after the model's projector.
        instruction: ``(Q, D_llm)`` the instruction's token embeddings (LLM input embedding table);
            ``Q = 0`` means no instruction.
        candidates: ``(P, N)`` bool, tokens that may be kept (the rest is padding).

    Returns:
        ``(P, N)`` float32 on ``projected``'s device: min-max normalised best standardised cosine
        on the candidates, 0 on padding; ones on the candidates when ``Q = 0`` or the score is
        constant.
    """
    candidates = candidates.to(projected.device)
    uniform = candidates.float()
    if instruction.shape[0] == 0 or int(candidates.sum()) < 2:
        return uniform
    tokens = torch.nn.functional.normalize(projected.double(), dim=-1)
    words = torch.nn.functional.normalize(instruction.to(projected.device, torch.float64), dim=-1)
    cosine = tokens[candidates] @ words.T  # (M, Q) over the candidates only
    spread = cosine.std(dim=0)
    informative = spread > FLAT
    if not bool(informative.any()):
        return uniform
    z = (cosine[:, informative] - cosine[:, informative].mean(dim=0)) / spread[informative]
    score = z.max(dim=1).values  # (M,)
    low, high = score.min(), score.max()
    if float(high - low) <= FLAT:
        return uniform
    out = torch.zeros(candidates.shape, dtype=torch.float64, device=projected.device)
    out[candidates] = ((score - low) / (high - low)).clamp(0.0, 1.0)  # clamp: rounding at the ends
    return out.float()
