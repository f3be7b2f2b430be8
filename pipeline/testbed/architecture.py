"""The testbed model: a small LLaVA-NeXT (CLIP tower, MLP projector, Llama) at a 64/8 geometry.

Built from the stock transformers classes with the real anyres structure: a 64 px full-image tile
plus a grid of 64 px sub-images chosen among ``PINPOINTS`` (1x2, 2x1, 2x2, 1x3, 3x1 tiles),
8 px patches (8x8 = 64 patches per tile, 320 at most per image), unpadding, a newline token per
row, features from ``hidden_states[-2]`` with the "default" strategy (CLS kept out of the
features, but present in the tower, so HiRED can read its attention).

The tokenizer is a byte-level BPE trained offline on the generator's own text, with the chat
template of :mod:`pipeline.model_factory`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from pipeline.model.builtin import CHAT_TEMPLATE, SPECIAL_TOKENS

from . import questions as q
from .scenes import GRIDS, TILE, make_scene

PATCH = 8
PINPOINTS = [[rows * TILE, cols * TILE] for rows, cols in GRIDS]


@dataclass(frozen=True)
class TestbedArchitecture:
    """Dimensions of the testbed model. Validated at construction."""

    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 384
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    vocab_size: int = 400

    def __post_init__(self) -> None:
        if self.vision_hidden % self.vision_heads or self.text_hidden % self.text_heads:
            raise ValueError("hidden sizes must be multiples of the head counts")
        if self.vision_layers < 2:
            raise ValueError("the vision tower needs >= 2 layers: LLaVA takes hidden_states[-2]")


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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=arch.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.padding_side = "left"
    return tokenizer


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
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=arch.vision_intermediate,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=TILE,
        patch_size=PATCH,
        projection_dim=arch.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
