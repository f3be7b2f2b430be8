"""The testbed model: a small LLaVA-NeXT (CLIP tower, MLP projector, Llama) at a 64/8 geometry.

Built from the stock transformers classes with the real anyres structure: a 64 px full-image tile
plus a grid of 64 px sub-images chosen among ``PINPOINTS`` (1x2, 2x1, 2x2, 1x3, 3x1 tiles),
8 px patches (8x8 = 64 patches per tile, 320 at most per image), unpadding, a newline token per
row, features from ``hidden_states[-2]`` with the "default" strategy (CLS kept out of the
features, but present in the tower, so HiRED can read its attention).

The tokenizer is a byte-level BPE trained offline on the generator's own text, with the chat
template of :mod:`pipeline.model.builtin`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from pipeline.model.builtin import CHAT_TEMPLATE, ModelSize, llava_config
from pipeline.model.builtin import build_tokenizer as build_bpe_tokenizer

from . import questions as q
from .scenes import GRIDS, TILE, make_scene

PATCH = 8
PINPOINTS = [[rows * TILE, cols * TILE] for rows, cols in GRIDS]


@dataclass(frozen=True)
class TestbedArchitecture(ModelSize):
    """Dimensions of the testbed model (a :class:`ModelSize` with the testbed's defaults)."""

    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 384
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    vocab_size: int = 400


def tokenizer_corpus(seed: int, scenes: int = 400) -> list[str]:
    """Every kind of text the model reads or writes, from training scenes of ``seed``."""
    from pipeline.experiments.tasks import get_task

    lines = []
    for index in range(scenes):
        scene = make_scene("train", seed, index)
        rng = random.Random(index)
        for qa in q.training_questions(scene, rng):
            row = {"question": qa.question, "choices": list(qa.choices) or None}
            task = "vqa" if qa.task == "caption" else qa.task
            lines.append(f"USER: <image>\n{get_task(task).build_prompt(row)} ASSISTANT: {qa.answer}</s>")
    return lines


def build_tokenizer(arch: TestbedArchitecture, seed: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on :func:`tokenizer_corpus`."""
    return build_bpe_tokenizer(arch.vocab_size, corpus=tokenizer_corpus(seed))


def build_processor(tokenizer):
    """A stock ``LlavaNextProcessor`` at the 64/8 geometry (PIL image processor when torchvision
    is absent)."""
    from transformers import LlavaNextProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import LlavaNextImageProcessor as ImageProcessor
    else:
        from transformers import LlavaNextImageProcessorPil as ImageProcessor
    image_processor = ImageProcessor(
        image_grid_pinpoints=PINPOINTS,
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(arch: TestbedArchitecture, tokenizer, seed: int):
    """A randomly initialised ``LlavaNextForConditionalGeneration`` of ``arch`` (fp32, train mode)."""
    from transformers import LlavaNextForConditionalGeneration

    config = llava_config(
        "llava-next", arch, tokenizer, tile=TILE, patch=PATCH, pinpoints=PINPOINTS, max_positions=1024,
        tie_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
