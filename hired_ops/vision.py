"""Encode-and-drop on a Hugging Face LLaVA-NeXT or LLaVA model: the vision half of HiRED.

Three lines on any such model::

    inputs = processor(images=images, text=prompts, return_tensors="pt")
    kept = encode_and_drop(model, inputs["pixel_values"], inputs.get("image_sizes"), DropConfig(budget=0.2))
    # kept[i].features: (K_i, D) pre-projector features, kept[i].budgets, kept[i].kept_indices()

A selection that reads the instruction (``hired+cdpp``) takes each image's prompt as token ids,
``encode_and_drop(..., instructions=[ids, ...])``, scored with the model's own projector and input
embedding table. :func:`run_images` and :func:`drop_tokens` are the two steps apart, so that one
tower run serves several questions about an image.

Only torch here: the model is read through its attributes, not imported classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import capture_cls_attention
from .methods import DropConfig, KeptTokens, drop_image
from .partition import PartitionLayout
from .relevance import instruction_relevance


@dataclass(frozen=True)
class VisionGeometry:
    """What the dropping needs to know about a VLM, read off its config.

    Attributes:
        tile: vision input size in pixels (336); patch: ViT patch size (14).
        pinpoints: anyres canvas sizes ``(h, w)``; ``None`` for single-partition models.
        num_layers: vision tower depth; feature_layer: index into ``hidden_states`` the VLM
            takes features from (``-2`` for LLaVA: the last layer need not run).
    """

    tile: int
    patch: int
    pinpoints: tuple[tuple[int, int], ...] | None
    num_layers: int
    feature_layer: int

    def __post_init__(self) -> None:
        if not -(self.num_layers + 1) <= self.feature_layer <= self.num_layers:
            raise ValueError(f"vision_feature_layer {self.feature_layer} is outside a {self.num_layers}-layer tower")

    @classmethod
    def from_model(cls, model: nn.Module) -> VisionGeometry:
        config = model.config
        feature_layer = config.vision_feature_layer
        if not isinstance(feature_layer, int):
            raise ValueError(
                f"vision_feature_layer={feature_layer!r}: token dropping needs features from a single layer"
            )
        if getattr(config, "vision_feature_select_strategy", "default") != "default":
            raise ValueError(
                "token dropping needs a CLS token: vision_feature_select_strategy must be 'default', "
                f"got {config.vision_feature_select_strategy!r}"
            )
        vision = config.vision_config
        pinpoints = getattr(config, "image_grid_pinpoints", None)
        return cls(
            tile=vision.image_size,
            patch=vision.patch_size,
            pinpoints=tuple(tuple(p) for p in pinpoints) if pinpoints else None,
            num_layers=vision.num_hidden_layers,
            feature_layer=feature_layer,
        )

    @property
    def side(self) -> int:
        return self.tile // self.patch

    @property
    def layers_to_run(self) -> int:
        """Tower layers whose output the features need (``hidden_states[i]`` is after ``i`` layers)."""
        return self.feature_layer % (self.num_layers + 1)

    @property
    def default_l_final(self) -> int:
        """The last layer that runs: its CLS attention ranks the features it produces."""
        return self.layers_to_run - 1

    @property
    def max_tokens(self) -> int:
        """Most visual tokens (newlines not counted) one image can yield."""
        if self.pinpoints is None:
            return self.side * self.side
        most_tiles = max(h // self.tile * (w // self.tile) for h, w in self.pinpoints)
        return (1 + most_tiles) * self.side * self.side

    def layout(self, image_size: tuple[int, int]) -> PartitionLayout:
        """Partition geometry of an image of ``(height, width)`` pixels."""
        if self.pinpoints is None:
            return PartitionLayout.single(image_size, self.tile, self.patch)
        return PartitionLayout.for_image(image_size, list(self.pinpoints), self.tile, self.patch)


def vision_tower(model: nn.Module) -> nn.Module:
    """The CLIP-style tower of a LLaVA(-NeXT) model, across transformers layouts."""
    inner = getattr(model, "model", model)
    tower = getattr(inner, "vision_tower", None) or getattr(model, "vision_tower", None)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no vision_tower: expected a LLaVA or LLaVA-NeXT model")
    return getattr(tower, "vision_model", tower)


def run_tower(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    layers_to_run: int,
    capture_layers: tuple[int, ...] = (),
    keep_keys: tuple[int, ...] = (),
):
    """Run the first ``layers_to_run`` layers of a CLIP tower, capturing CLS rows on the way.

    Args:
        pixel_values: ``(P, 3, tile, tile)``, one row per partition.

    Returns:
        features ``(P, N, D)`` (CLS token removed) and the :class:`CLSCapture`.
    """
    layers = tower.encoder.layers
    deepest = max((layers_to_run, *(l + 1 for l in capture_layers)))
    if deepest > len(layers):
        raise ValueError(f"the tower has {len(layers)} layers; layer {deepest - 1} was requested")
    dtype = next(tower.parameters()).dtype
    with capture_cls_attention(layers, capture_layers, keep_keys) as capture:
        hidden = tower.pre_layrnorm(tower.embeddings(pixel_values.to(dtype)))
        features = hidden
        for index in range(deepest):
            hidden = layers[index](hidden, None)
            if index + 1 == layers_to_run:
                features = hidden
    return features[:, 1:], capture


def flatten_partitions(
    pixel_values: torch.Tensor | list[torch.Tensor], counts: list[int]
) -> torch.Tensor:
    """``(sum P_i, 3, H, W)`` from the processor's ``(B, P_max, 3, H, W)`` padded stack, a list of
    ``(P_i, 3, H, W)``, or a single-partition model's ``(B, 3, H, W)``."""
    if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 4:
        return pixel_values
    return torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)])


@dataclass
class TowerOutput:
    """One image's vision-tower output: everything a method's drop reads.

    Attributes:
        layout: the image's geometry (P partitions of N patches).
        features: ``(P, N, D)`` pre-projector patch features (CLS removed).
        init_scores: ``(N,)`` full-image CLS attention at ``l_init``, if the method reads it.
        final_scores: ``(P, N)`` CLS attention at ``l_final``, if the method reads it.
        final_keys: ``(P, N, Dk)`` attention keys at ``l_final``, if the method merges by key.
    """

    layout: PartitionLayout
    features: torch.Tensor
    init_scores: torch.Tensor | None = None
    final_scores: torch.Tensor | None = None
    final_keys: torch.Tensor | None = None


@torch.inference_mode()
def run_images(
    model: nn.Module,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor | list[tuple[int, int]] | None,
    config: DropConfig,
    geometry: VisionGeometry | None = None,
) -> list[TowerOutput]:
    """The vision tower on a batch of images, capturing what ``config``'s method reads.

    Args:
        model: a ``LlavaNextForConditionalGeneration`` or ``LlavaForConditionalGeneration``.
        pixel_values: the processor's output, ``(B, P_max, 3, H, W)`` (anyres) or ``(B, 3, H, W)``.
        image_sizes: ``(B, 2)`` original ``(height, width)``; ``None`` for single-partition models.

    Returns:
        One :class:`TowerOutput` per image; features in the tower's dtype on its device.
    """
    geometry = geometry or VisionGeometry.from_model(model)
    if geometry.pinpoints is not None and image_sizes is None:
        raise ValueError("an anyres (LLaVA-NeXT) model needs image_sizes from the processor")
    batch = len(pixel_values)
    sizes = [tuple(int(v) for v in s) for s in image_sizes] if image_sizes is not None else [(geometry.tile,) * 2] * batch
    layouts = [geometry.layout(size) for size in sizes]
    counts = [layout.num_partitions for layout in layouts]
    l_final = geometry.default_l_final if config.l_final is None else config.l_final
    capture_layers = tuple(
        layer for need, layer in (("init", config.l_init), ("final", l_final)) if need in config.needs
    )
    keep_keys = (l_final,) if config.needs_keys else ()
    tower = vision_tower(model)
    device = next(tower.parameters()).device
    flat = flatten_partitions(pixel_values, counts).to(device)
    features, capture = run_tower(tower, flat, geometry.layers_to_run, capture_layers, keep_keys)
    num_layers = len(tower.encoder.layers)
    init_rows = capture.summed(config.l_init % num_layers) if "init" in config.needs else None
    final_rows = capture.summed(l_final % num_layers) if "final" in config.needs else None
    final_keys = capture.keys.get(l_final % num_layers)
    outputs, start = [], 0
    for layout, count in zip(layouts, counts):
        part = slice(start, start + count)
        outputs.append(
            TowerOutput(
                layout,
                features[part],
                init_scores=init_rows[start].cpu() if init_rows is not None else None,
                final_scores=final_rows[part].cpu() if final_rows is not None else None,
                final_keys=final_keys[part].cpu() if final_keys is not None else None,
            )
        )
        start += count
    return outputs


@torch.inference_mode()
def relevance_to(model: nn.Module, output: TowerOutput, instruction: torch.Tensor | None) -> torch.Tensor:
    """``(P, N)`` relevance of an image's candidates to an instruction's token ids ``(Q,)``
    (:func:`hired_ops.relevance.instruction_relevance`): the candidates through the model's own
    projector, against the rows of its input embedding table. ``None`` or ``Q = 0``: uniform."""
    inner = getattr(model, "model", model)
    projector = inner.multi_modal_projector
    table = model.get_input_embeddings()
    ids = instruction if instruction is not None else torch.zeros(0, dtype=torch.long)
    words = table(ids.to(table.weight.device))  # (Q, D_llm)
    projected = projector(output.features.to(next(projector.parameters()).dtype))  # (P, N, D_llm)
    return instruction_relevance(projected, words, output.layout.candidate_mask()).cpu()


def drop_tokens(
    model: nn.Module,
    output: TowerOutput,
    config: DropConfig,
    geometry: VisionGeometry,
    instruction: torch.Tensor | None = None,
) -> KeptTokens:
    """Apply ``config`` to one image's tower output; ``instruction`` ``(Q,)`` token ids feed a
    selection that reads it (:data:`hired_ops.selectors.NEEDS_INSTRUCTION`), and are ignored
    by every other."""
    relevance = relevance_to(model, output, instruction) if config.needs_instruction else None
    return drop_image(
        config,
        output.layout,
        output.features,
        geometry.max_tokens,
        init_scores=output.init_scores,
        final_scores=output.final_scores,
        final_keys=output.final_keys,
        relevance=relevance,
    )


@torch.inference_mode()
def encode_and_drop(
    model: nn.Module,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor | list[tuple[int, int]] | None,
    config: DropConfig,
    geometry: VisionGeometry | None = None,
    instructions: list[torch.Tensor | None] | None = None,
) -> list[KeptTokens]:
    """Vision tower + token dropping for a batch of images.

    Args:
        model: a ``LlavaNextForConditionalGeneration`` or ``LlavaForConditionalGeneration``.
        pixel_values: the processor's output, ``(B, P_max, 3, H, W)`` (anyres) or ``(B, 3, H, W)``.
        image_sizes: ``(B, 2)`` original ``(height, width)``; ``None`` for single-partition models.
        config: the dropping method and its budget.
        instructions: per image, the instruction's token ids ``(Q_i,)`` (the prompt, tokenised
            without special tokens), for a selection that reads it; ``None`` is no instruction.

    Returns:
        One :class:`KeptTokens` per image, features in the tower's dtype.
    """
    geometry = geometry or VisionGeometry.from_model(model)
    outputs = run_images(model, pixel_values, image_sizes, config, geometry)
    instructions = instructions if instructions is not None else [None] * len(outputs)
    if len(instructions) != len(outputs):
        raise ValueError(f"{len(outputs)} images but {len(instructions)} instructions")
    return [drop_tokens(model, out, config, geometry, ids) for out, ids in zip(outputs, instructions)]
