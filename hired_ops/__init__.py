"""HiRED token dropping in pure torch: budgets, allocation, selection, baselines.

No Ray, no MLflow, no I/O: usable alone on any Hugging Face LLaVA-NeXT or LLaVA model::

    from hired_ops import DropConfig, encode_and_drop
    kept = encode_and_drop(model, inputs["pixel_values"], inputs["image_sizes"], DropConfig(budget=0.2))
"""

from .attention import CLSCapture, capture_cls_attention, cls_attention_row
from .budget import Budget, allocate, capped_proportional, largest_remainder
from .methods import BUDGETED, METHODS, DropConfig, KeptTokens, drop_image
from .partition import PartitionLayout, select_grid_resolution
from .vision import VisionGeometry, encode_and_drop, run_tower, vision_tower

__all__ = [
    "BUDGETED",
    "METHODS",
    "Budget",
    "CLSCapture",
    "DropConfig",
    "KeptTokens",
    "PartitionLayout",
    "VisionGeometry",
    "allocate",
    "capped_proportional",
    "capture_cls_attention",
    "cls_attention_row",
    "drop_image",
    "encode_and_drop",
    "largest_remainder",
    "run_tower",
    "select_grid_resolution",
    "vision_tower",
]
