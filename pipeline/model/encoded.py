"""The kept tokens of one image as plain numpy: what crosses from the vision half to the LLM half
(between Ray actor pools, or Serve deployments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hired_ops import KeptTokens

# fp16 halves the bytes between the halves; fp32 is there for exactness checks
TRANSFER_DTYPES = {"float16": np.float16, "float32": np.float32}


def check_transfer_dtype(name: str) -> str:
    """``name`` if it is a transfer dtype (the one check every config uses), else ValueError."""
    if name not in TRANSFER_DTYPES:
        raise ValueError(f"transfer_dtype must be one of {', '.join(TRANSFER_DTYPES)}, got {name!r}")
    return name


@dataclass
class EncodedImage:
    """One image's kept tokens as plain data: what travels from the vision to the LLM pool.

    Attributes:
        features: ``(K, D)`` pre-projector features (float16 by default).
        partition, patch: ``(K,)`` int16, where each token came from (partition 0 = full image).
        newline_after: ``(K,)`` bool, a row-newline token follows.
        budgets, available: ``(P,)`` int32, tokens allotted and candidate patches per partition.
        image_size: original ``(height, width)``; grid: sub-image ``(rows, cols)``.
    """

    features: np.ndarray
    partition: np.ndarray
    patch: np.ndarray
    newline_after: np.ndarray
    budgets: np.ndarray
    available: np.ndarray
    image_size: tuple[int, int]
    grid: tuple[int, int]

    @classmethod
    def from_kept(cls, kept: KeptTokens, dtype: str = "float16") -> EncodedImage:
        return cls(
            features=kept.features.detach().float().cpu().numpy().astype(TRANSFER_DTYPES[dtype]),
            partition=kept.partition.numpy().astype(np.int16),
            patch=kept.patch.numpy().astype(np.int16),
            newline_after=kept.newline_after.numpy().astype(bool),
            budgets=kept.budgets.numpy().astype(np.int32),
            available=kept.available.numpy().astype(np.int32),
            image_size=tuple(int(v) for v in kept.layout.image_size),
            grid=tuple(int(v) for v in kept.layout.grid),
        )

    @property
    def num_tokens(self) -> int:
        """Visual tokens kept (newlines not counted)."""
        return int(self.features.shape[0])

    @property
    def sequence_length(self) -> int:
        """Positions the image takes in the LLM input, newlines included."""
        return self.num_tokens + int(self.newline_after.sum())

    @property
    def available_tokens(self) -> int:
        """Candidate (non-padding) patches over all partitions, before dropping."""
        return int(self.available.sum())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.features, self.partition, self.patch, self.newline_after))

    def to_row(self, prefix: str = "enc_") -> dict[str, Any]:
        """Flat columns for a Ray Data / Arrow row."""
        return {
            f"{prefix}features": self.features,
            f"{prefix}partition": self.partition,
            f"{prefix}patch": self.patch,
            f"{prefix}newline_after": self.newline_after,
            f"{prefix}budgets": self.budgets,
            f"{prefix}available": self.available,
            f"{prefix}image_size": np.asarray(self.image_size, dtype=np.int32),
            f"{prefix}grid": np.asarray(self.grid, dtype=np.int32),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any], prefix: str = "enc_") -> EncodedImage:
        features = np.asarray(row[f"{prefix}features"])
        return cls(
            features=features.reshape(-1, features.shape[-1]) if features.size else features.reshape(0, 0),
            partition=np.asarray(row[f"{prefix}partition"], dtype=np.int16),
            patch=np.asarray(row[f"{prefix}patch"], dtype=np.int16),
            newline_after=np.asarray(row[f"{prefix}newline_after"], dtype=bool),
            budgets=np.asarray(row[f"{prefix}budgets"], dtype=np.int32),
            available=np.asarray(row[f"{prefix}available"], dtype=np.int32),
            image_size=tuple(int(v) for v in row[f"{prefix}image_size"]),
            grid=tuple(int(v) for v in row[f"{prefix}grid"]),
        )
