"""HiRED token dropping in pure torch: budgets, allocation, selection, baselines and newer
selectors (VisionZip, DivPrune, SCOPE-like coverage, CDPruner's instruction-conditioned DPP), composable as ``"allocation+selection"``.

No Ray, no MLflow, no I/O: usable alone on any Hugging Face LLaVA-NeXT or LLaVA model::

    from hired_ops import DropConfig, encode_and_drop
    kept = encode_and_drop(model, inputs["pixel_values"], inputs["image_sizes"], DropConfig(budget=0.2))
"""

from .allocation import ALLOCATIONS, split_budget
from .attention import CLSCapture, capture_cls_attention, cls_attention_row
from .budget import Budget, allocate, capped_proportional, largest_remainder
from .methods import (
    BUDGETED,
    METHODS,
    PRESETS,
    DropConfig,
    KeptTokens,
    drop_image,
    parse_method,
)
from .partition import PartitionLayout, select_grid_resolution
from .selectors import SELECTIONS
from .vision import TowerOutput, VisionGeometry, drop_tokens, encode_and_drop, run_images, run_tower, vision_tower

__all__ = [
    "ALLOCATIONS",
    "BUDGETED",
    "METHODS",
    "PRESETS",
    "SELECTIONS",
    "Budget",
    "CLSCapture",
    "DropConfig",
    "KeptTokens",
    "PartitionLayout",
    "TowerOutput",
    "VisionGeometry",
    "allocate",
    "capped_proportional",
    "capture_cls_attention",
    "cls_attention_row",
    "drop_image",
    "drop_tokens",
    "encode_and_drop",
    "largest_remainder",
    "parse_method",
    "run_images",
    "run_tower",
    "select_grid_resolution",
    "split_budget",
    "vision_tower",
]
