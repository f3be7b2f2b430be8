"""Decoding settings and what a generation reports."""

from __future__ import annotations

from dataclasses import dataclass, field

# the instruction for images that come without their own
DEFAULT_PROMPT = "Describe the image in one sentence."

# Below this a temperature is greedy decoding: dividing logits by ~1e-300 overflows to inf and
# sampling from the NaN softmax fails (vLLM draws the same line).
GREEDY_BELOW = 1e-5
# torch.manual_seed takes [-2**63, 2**64 - 1]; OpenAI's seed is a signed 64-bit integer
SEED_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class GenerateOptions:
    """Decoding settings, named as in OpenAI's and transformers' APIs. Validated at construction.

    Attributes:
        max_new_tokens: most tokens generated per answer.
        temperature: sampling temperature; 0 (or below 1e-5) decodes greedily.
        top_p: nucleus sampling mass (1 keeps every token).
        stop: strings that end an answer (not included in it).
        seed: sampling seed (default: none, nondeterministic when sampling).
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must be a signed 64-bit integer, got {self.seed}")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def sampling(self) -> bool:
        """Whether decoding samples (else greedy)."""
        return self.temperature >= GREEDY_BELOW


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability under the model, and the most likely alternatives.

    Attributes:
        token_id, logprob: the token chosen and its log-probability (raw logits, before sampling
            settings change them, as vLLM reports by default).
        top: ``(token_id, logprob)`` of the most likely tokens at that step, best first.
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Generation:
    """One answer with the numbers a job reports.

    ``token_ids`` are the answer's tokens up to (not including) the end token; ``logprobs`` has
    one entry per token of ``token_ids`` when asked for, else None. ``padding_fraction`` is the
    share of padding in the prefill the request was admitted with.
    """

    text: str
    generated_tokens: int
    prompt_tokens: int
    ttft_s: float
    generate_s: float
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    padding_fraction: float = 0.0
