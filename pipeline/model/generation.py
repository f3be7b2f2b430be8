"""Decoding settings and what a generation reports."""

from __future__ import annotations

from dataclasses import dataclass

# the instruction for images that come without their own
DEFAULT_PROMPT = "Describe the image in one sentence."


@dataclass(frozen=True)
class GenerateOptions:
    """Decoding settings, named as in OpenAI's and transformers' APIs. Validated at construction.

    Attributes:
        max_new_tokens: most tokens generated per answer.
        temperature: sampling temperature; 0 decodes greedily.
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
        object.__setattr__(self, "stop", tuple(self.stop))


@dataclass
class Generation:
    """One answer with the numbers a job reports."""

    text: str
    generated_tokens: int
    prompt_tokens: int
    ttft_s: float
    generate_s: float
