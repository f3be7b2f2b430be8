"""Small LLaVA-NeXT / LLaVA models built offline from configs with the real transformers classes.

No machine here can download weights, so tests and the out-of-the-box default build models of
the real architectures (CLIP tower, projector, Llama LLM) at chosen sizes, with a byte-level BPE
tokenizer trained offline, deterministic from a seed, and saved so ``from_pretrained`` loads them.
The weights are random: outputs are not meaningful text, but every code path a 7B checkpoint
takes on a GPU is the one these models take.

Sizes:
    tiny   a 2-layer, 32-wide CLIP tower at the real 336/14 geometry (576 patches per tile) and a
           2-layer, 64-wide Llama. For tests.
    bench  a ViT-L/14-336-shaped tower (303M) and a ~100M Llama. For benchmarks.
    7b     the same tower and a Vicuna-7B-shaped Llama (32 layers, 4096 wide): LLaVA-NeXT-7B's
           shapes for GPU benchmarks, built on the device (never downloaded).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

TILE, PATCH = 336, 14
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
# A plain LLaVA-1.5-style conversation; real checkpoints bring their own chat template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class ModelSize:
    """Dimensions of a built model. Validated at construction."""

    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    vocab_size: int

    def __post_init__(self) -> None:
        if self.vision_hidden % self.vision_heads or self.text_hidden % self.text_heads:
            raise ValueError("hidden sizes must be multiples of the head counts")
        if self.vision_layers < 2:
            raise ValueError("the vision tower needs >= 2 layers: LLaVA takes hidden_states[-2]")


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(32, 2, 2, 64, 64, 2, 4, 128, 1024),
    "bench": ModelSize(1024, 24, 16, 4096, 768, 12, 12, 2048, 8192),
    "7b": ModelSize(1024, 24, 16, 4096, 4096, 32, 32, 11008, 32000),
}
KINDS = ("llava-next", "llava")
# Wider random weights make the tiny model's answers depend visibly on the image, so tests that
# compare outputs across images and code paths can fail.
INIT_RANGE = {"tiny": 0.2, "bench": 0.02, "7b": 0.02}


def builtin_name(kind: str, size: str) -> str:
    """Name users pass as ``--model``: e.g. ``hired/tiny-llava-next``."""
    return f"hired/{size}-{kind}"


def parse_builtin(name: str) -> tuple[str, str] | None:
    """``(kind, size)`` for a built-in model name, ``None`` for anything else."""
    if not name.startswith("hired/"):
        return None
    for size in SIZES:
        for kind in KINDS:
            if name == builtin_name(kind, size):
                return kind, size
    raise ValueError(
        f"unknown built-in model {name!r}: choose one of "
        + ", ".join(builtin_name(k, s) for s in SIZES for k in KINDS)
    )


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    """Deterministic English-like text to train the tokenizer on."""
    rng = random.Random(seed)
    nouns = "image photo picture dog cat bird car tree house street sky water person man woman child table chart document page text sign road building mountain field flower boat train window door".split()
    adjectives = "red green blue yellow white black small large old new bright dark tall short wooden busy quiet empty".split()
    verbs = "shows contains depicts has sits stands runs holds looks crosses flies covers".split()
    extras = "a the of in on at with and is are what how many which where describe question answer yes no one two three four five".split()
    out = []
    for _ in range(lines):
        words = [rng.choice(extras), rng.choice(adjectives), rng.choice(nouns), rng.choice(verbs)]
        words += [rng.choice(extras), rng.choice(adjectives), rng.choice(nouns)]
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]) + f" {rng.randint(0, 2024)}")
    return out


def build_tokenizer(vocab_size: int, seed: int = 0, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained offline on ``corpus`` (default: the built-in models'
    synthetic text of ``seed``), as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(seed) if corpus is None else corpus, trainer=trainer)
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


def build_image_processor(kind: str):
    """The stock image processor for ``kind`` at the 336 px CLIP geometry (PIL backend when
    torchvision is absent, as on CPU-only installs)."""
    from transformers.utils import is_torchvision_available

    common = dict(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE})
    if is_torchvision_available():
        from transformers import CLIPImageProcessor as Clip
        from transformers import LlavaNextImageProcessor as Next
    else:
        from transformers import CLIPImageProcessorPil as Clip
        from transformers import LlavaNextImageProcessorPil as Next
    if kind == "llava-next":
        return Next(image_grid_pinpoints=PINPOINTS, **common)
    return Clip(**common)


def build_processor(kind: str, tokenizer):
    """The stock processor for ``kind``, at the 336 px CLIP geometry."""
    from transformers import LlavaNextProcessor, LlavaProcessor

    processor_cls = LlavaNextProcessor if kind == "llava-next" else LlavaProcessor
    return processor_cls(
        image_processor=build_image_processor(kind),
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def clip_config(hidden: int, intermediate: int, layers: int, heads: int, tile: int, patch: int):
    """A CLIP vision tower's config: ``tile``-pixel tiles of ``patch``-pixel patches, quick-GELU."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=tile,
        patch_size=patch,
        projection_dim=hidden,
        hidden_act="quick_gelu",
    )


def llava_config(
    kind: str,
    dims: ModelSize,
    tokenizer,
    *,
    tile: int = TILE,
    patch: int = PATCH,
    pinpoints: list[list[int]] = PINPOINTS,
    max_positions: int = 4096,
    init_range: float = 0.02,
    tie_embeddings: bool = False,
):
    """The transformers config of a LLaVA-NeXT (anyres grid ``pinpoints``) or LLaVA-1.5 model of
    ``dims``: a CLIP tower of ``tile``-pixel tiles and ``patch``-pixel patches, features from its
    second-to-last layer with CLS dropped ("default"), and a Llama sized for ``tokenizer``."""
    from transformers import LlamaConfig, LlavaConfig, LlavaNextConfig

    vision = clip_config(dims.vision_hidden, dims.vision_intermediate, dims.vision_layers, dims.vision_heads, tile, patch)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=dims.text_hidden,
        intermediate_size=dims.text_intermediate,
        num_hidden_layers=dims.text_layers,
        num_attention_heads=dims.text_heads,
        num_key_value_heads=dims.text_heads,
        max_position_embeddings=max_positions,
        initializer_range=init_range,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=tie_embeddings,
    )
    if kind == "llava-next":
        return LlavaNextConfig(image_grid_pinpoints=pinpoints, **common)
    return LlavaConfig(**common)


def build_model(
    kind: str = "llava-next",
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
):
    """Build ``(model, processor)`` of ``kind`` ("llava-next" or "llava") and ``size``, its
    weights initialised on ``device`` (a 7B model never passes through host memory)."""
    from transformers import (
        LlavaForConditionalGeneration,
        LlavaNextForConditionalGeneration,
    )

    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}: choose one of {KINDS}")
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}: choose one of {tuple(SIZES)}")
    dims = SIZES[size]
    tokenizer = build_tokenizer(dims.vocab_size, seed)
    config = llava_config(kind, dims, tokenizer, init_range=INIT_RANGE[size])
    model_cls = LlavaNextForConditionalGeneration if kind == "llava-next" else LlavaForConditionalGeneration
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls(config).to(dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, build_processor(kind, tokenizer)


def save_model(
    path: str | Path, kind: str = "llava-next", size: str = "tiny", seed: int = 0, dtype: torch.dtype | None = None
) -> Path:
    """Build and save a model and its processor where ``from_pretrained(path)`` finds them, in
    ``dtype`` (default: as built, fp32). The benchmarks save theirs in bf16, as released
    LLaVA-NeXT checkpoints are saved in half precision, so that dtype "auto" treats them alike."""
    path = Path(path)
    model, processor = build_model(kind, size, seed)
    model.to(dtype or model.dtype).save_pretrained(path)
    processor.save_pretrained(path)
    return path
