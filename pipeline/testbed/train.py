"""Train the testbed model from scratch in three stages, reproducibly from a seed.

0. ``cls``: the vision tower alone, with two multi-label heads on the layer LLaVA reads features
   from (``hidden_states[-2]``): each tile's CLS must say which objects and glyph lie in that
   tile, so its attention in that layer (what HiRED ranks patches by) and in the layers below it
   has to find them; and each patch token must say which object it shows, so the features the
   projector reads name what is where (CLIP's contrastive pre-training gives its patch tokens
   such local content; a from-scratch tower here needs it asked for). The heads are dropped
   afterwards.
1. ``caption``: projector alignment on captions, tower frozen. The LLM is trained too: it starts
   random here, unlike LLaVA's pretrained LLM, so there is nothing for a projector alone to align to.
2. ``instruct``: multi-turn conversations (several VQA, multiple-choice and POPE questions and the
   caption per image, as LLaVA's instruction data packs them), everything trainable, the tower at
   a tenth of the LLM's learning rate as LLaVA-NeXT trains its tower. Stage 0's objectives stay
   on as an auxiliary loss (weight ``cls_weight``), so the CLS attention HiRED reads keeps
   meaning "where the objects are" while the tower learns what the questions need.

Data are generated on the fly from the "train" split only; the held-out split is never read here.
Each stage is ``torch.optim.AdamW`` with ``get_cosine_schedule_with_warmup`` over the model's own
forward with ``labels``. A small loop rather than ``transformers.Trainer``: Trainer needs
``accelerate`` (not a dependency of this project), stage 0's objective is not the model's forward,
and the data are an endless seeded generator rather than a dataset.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from hired_ops import VisionGeometry, vision_tower
from pipeline.experiments.tasks import get_task
from pipeline.model.loading import SHIPPED, TESTBED_MODEL
from pipeline.tracking.figures import partition_pixels

from . import questions as q
from .architecture import (
    TestbedArchitecture,
    build_model,
    build_processor,
    build_tokenizer,
)
from .scenes import COLORS, GLYPHS, SHAPES, TILE, Scene, label_map, make_scene, render

logger = logging.getLogger(__name__)

WEIGHTS_DIR = SHIPPED[TESTBED_MODEL]
# Stage-0 labels: each colour-shape pair, each shape, each colour, each glyph.
CLS_LABELS = (
    [f"{c} {s}" for c in COLORS for s in SHAPES] + list(SHAPES) + list(COLORS) + [f"character {g}" for g in GLYPHS]
)


@dataclass(frozen=True)
class TestbedTrainConfig:
    """What :func:`train` does. Validated at construction.

    Attributes:
        seed: seeds the tokenizer corpus, the weights, and the training scenes.
        cls_steps: optimiser steps of stage 0 (the tower's CLS and patch objectives).
        caption_steps: optimiser steps of stage 1 (captions, tower frozen).
        instruct_steps: optimiser steps of stage 2 (conversations, everything trained).
        batch_size: scenes per step.
        cls_lr: peak learning rate of stage 0.
        lr: peak learning rate of stages 1 and 2.
        cls_weight: weight of stage 0's objectives beside the language loss in stage 2.
        tower_lr_scale: the tower's learning rate in stage 2, as a share of ``lr``.
        warmup: share of each stage's steps spent warming up.
        per_task: questions per task (vqa, multiple_choice, pope) in one stage-2 conversation.
        output: where the checkpoint is saved (``from_pretrained`` loads it).
        tracking_uri, experiment: the MLflow run; ``tracking_uri=None`` logs nothing.
        log_every: steps between logged losses.
        threads: torch intra-op threads.
        architecture: model dimensions.
    """

    seed: int = 0
    cls_steps: int = 6000
    caption_steps: int = 400
    instruct_steps: int = 3000
    batch_size: int = 8
    cls_lr: float = 2e-3
    lr: float = 2e-3
    cls_weight: float = 0.5
    tower_lr_scale: float = 0.1
    warmup: float = 0.05
    per_task: int = 2
    output: str = str(WEIGHTS_DIR)
    tracking_uri: str | None = "sqlite:///mlflow.db"
    experiment: str = "hired-testbed"
    log_every: int = 10
    threads: int = 2
    architecture: TestbedArchitecture = field(default_factory=TestbedArchitecture)

    def __post_init__(self) -> None:
        if min(self.cls_steps, self.caption_steps, self.instruct_steps) < 0:
            raise ValueError("step counts must be >= 0")
        if self.batch_size < 1 or self.per_task < 1 or self.log_every < 1 or self.threads < 1:
            raise ValueError("batch_size, per_task, log_every and threads must be >= 1")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if min(self.cls_lr, self.lr) <= 0:
            raise ValueError("learning rates must be > 0")
        if self.cls_weight < 0:
            raise ValueError(f"cls_weight must be >= 0, got {self.cls_weight}")
        if not 0.0 < self.tower_lr_scale <= 1.0:
            raise ValueError(f"tower_lr_scale must be in (0, 1], got {self.tower_lr_scale}")


# -- data -----------------------------------------------------------------------------------------


def prompt_for(qa: q.QA) -> str:
    """The user turn's text, exactly as evaluation prompts it (the task's template)."""
    if qa.task == "caption":
        return qa.question
    return get_task(qa.task).build_prompt({"question": qa.question, "choices": list(qa.choices) or None})


def encode_conversation(processor, image, turns: list[q.QA]) -> dict[str, torch.Tensor]:
    """One image and several question-answer turns as model inputs, loss on the answers only.

    The first user turn goes through the processor (which expands ``<image>`` to the image's
    token count); every later segment is tokenised on its own, so the prompt of each turn is
    tokenised exactly as :class:`pipeline.model.vlm.HiredVLM` tokenises a single question.

    Returns ``input_ids`` and ``labels`` ``(T,)``, ``pixel_values`` ``(P, 3, 64, 64)``,
    ``image_sizes`` ``(2,)``.
    """
    tokenizer = processor.tokenizer
    first = processor(images=[image], text=[f"USER: <image>\n{prompt_for(turns[0])} ASSISTANT:"], return_tensors="pt")
    ids = first["input_ids"][0].tolist()
    labels = [-100] * len(ids)
    for index, turn in enumerate(turns):
        if index:
            segment = tokenizer(f"USER: {prompt_for(turn)} ASSISTANT:", add_special_tokens=False)["input_ids"]
            ids += segment
            labels += [-100] * len(segment)
        answer = tokenizer(f" {turn.answer}</s>", add_special_tokens=False)["input_ids"]
        ids += answer
        labels += answer
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "pixel_values": first["pixel_values"][0],
        "image_sizes": first["image_sizes"][0],
    }


def collate(items: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``, ``labels``, ``attention_mask`` ``(B, T)``,
    ``pixel_values`` ``(B, P_max, 3, 64, 64)`` (zero-padded; the model reads ``image_sizes``)."""
    length = max(len(item["input_ids"]) for item in items)
    parts = max(len(item["pixel_values"]) for item in items)
    batch = len(items)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    labels = torch.full((batch, length), -100, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    pixels = torch.zeros(batch, parts, *items[0]["pixel_values"].shape[1:])
    for i, item in enumerate(items):
        n = len(item["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = item["input_ids"], item["labels"], 1
        pixels[i, : len(item["pixel_values"])] = item["pixel_values"]
    sizes = torch.stack([item["image_sizes"] for item in items])
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels, "image_sizes": sizes}


def _names(thing) -> list[int]:
    """The label columns an object switches on."""
    names = [thing.label] if thing.kind == "glyph" else [thing.label, thing.kind, thing.color]
    return [CLS_LABELS.index(name) for name in names]


def tile_targets(scene: Scene, geometry: VisionGeometry) -> torch.Tensor:
    """``(P, len(CLS_LABELS))`` 0/1 targets: the full image holds every object; sub-image i the
    objects whose centre falls in its tile (after the processor's resize and centring)."""
    layout = geometry.layout(scene.size)
    top, left, new_h, new_w = layout.content_box
    rows, cols = layout.grid
    height, width = scene.size
    targets = torch.zeros(layout.num_partitions, len(CLS_LABELS))
    for thing in scene.things:
        columns = _names(thing)
        row = min(int((top + thing.y * new_h / height) // TILE), rows - 1)
        col = min(int((left + thing.x * new_w / width) // TILE), cols - 1)
        targets[0, columns] = 1
        targets[1 + row * cols + col, columns] = 1
    return targets


def patch_targets(scene: Scene, geometry: VisionGeometry) -> torch.Tensor:
    """``(P * side * side, len(CLS_LABELS))`` 0/1 targets, patches of each partition in raster
    order: the object covering the most of a patch's pixels, if it covers a quarter of them.

    The label map is cut as the processor cuts the image (:func:`partition_pixels`), with nearest
    resampling so object ids never blend.
    """
    layout = geometry.layout(scene.size)
    side, patch = layout.side, layout.tile // layout.side
    tiles = partition_pixels(label_map(scene), layout, Image.NEAREST)
    # (P, side, side, patch * patch): each patch's pixels on the last axis
    pixels = np.stack(tiles).reshape(len(tiles), side, patch, side, patch).transpose(0, 1, 3, 2, 4)
    pixels = pixels.reshape(len(tiles) * side * side, patch * patch)
    counts = np.stack([(pixels == i + 1).sum(axis=1) for i in range(len(scene.things))], axis=1)
    owner = counts.argmax(axis=1)
    covered = counts.max(axis=1) * 4 >= patch * patch
    lookup = torch.zeros(len(scene.things), len(CLS_LABELS))
    for index, thing in enumerate(scene.things):
        lookup[index, _names(thing)] = 1
    return lookup[torch.from_numpy(owner)] * torch.from_numpy(covered)[:, None]


def scenes(seed: int, stage: str) -> Iterator[tuple[Scene, random.Random]]:
    """Endless training scenes of one stage, each with its own question stream."""
    index = 0
    while True:
        yield make_scene("train", seed, index), random.Random(f"{stage}:{seed}:{index}")
        index += 1


# -- stages ---------------------------------------------------------------------------------------


class SceneHeads(nn.Module):
    """Stage 0's multi-label classifiers on a tower layer: one on the CLS token, one on each patch."""

    def __init__(self, tower: nn.Module, layers: int, labels: int) -> None:
        super().__init__()
        self.tower = tower
        self.layers = layers
        self.classifier = nn.Linear(tower.config.hidden_size, labels)
        self.patches = nn.Linear(tower.config.hidden_size, labels)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, 3, 64, 64)`` -> CLS logits ``(P, labels)`` and patch logits ``(P * N, labels)``
        from the hidden states after ``layers`` layers."""
        hidden = self.tower.pre_layrnorm(self.tower.embeddings(pixel_values))
        for layer in self.tower.encoder.layers[: self.layers]:
            hidden = layer(hidden, None)
        hidden = self.tower.post_layernorm(hidden)
        return self.classifier(hidden[:, 0]), self.patches(hidden[:, 1:]).flatten(0, 1)


def _optimise(
    name: str,
    parameters: list[dict],
    steps: int,
    config: TestbedTrainConfig,
    loss_of_batch: Callable[[], tuple[torch.Tensor, dict[str, float]]],
    log: Callable[[dict[str, float], int], None],
    step_offset: int,
) -> dict[str, float]:
    """Run ``steps`` AdamW steps on ``loss_of_batch`` (the loss to minimise and named parts of it
    to log); returns the last logged means (``"{name}/loss"``, ...)."""
    from transformers import get_cosine_schedule_with_warmup

    if steps == 0:
        return {}
    optimiser = torch.optim.AdamW(parameters, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimiser, max(1, int(steps * config.warmup)), steps)
    window: list[dict[str, float]] = []
    last: dict[str, float] = {}
    with tqdm(total=steps, desc=name, unit="step") as bar:
        for step in range(steps):
            loss, parts = loss_of_batch()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for group in parameters for p in group["params"]], 1.0)
            optimiser.step()
            schedule.step()
            window.append({"loss": loss.item(), **parts})
            if len(window) == config.log_every or step == steps - 1:
                means = {f"{name}/{key}": sum(w[key] for w in window) / len(window) for key in window[0]}
                last = means
                log({**means, f"{name}/lr": schedule.get_last_lr()[0]}, step_offset + step + 1)
                bar.set_postfix(loss=f"{means[f'{name}/loss']:.3f}")
                window = []
            bar.update()
    return last


def scene_loss(
    heads: SceneHeads, pixel_values: torch.Tensor, batch: list[Scene], geometry: VisionGeometry
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 0's loss on a processed batch (``pixel_values`` ``(B, P_max, 3, 64, 64)``): the CLS
    and patch objectives' sum, and each of them to log."""
    counts = [geometry.layout(scene.size).num_partitions for scene in batch]
    flat = torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)])
    cls_logits, patch_logits = heads(flat)
    bce = nn.functional.binary_cross_entropy_with_logits
    cls = bce(cls_logits, torch.cat([tile_targets(scene, geometry) for scene in batch]))
    patches = bce(patch_logits, torch.cat([patch_targets(scene, geometry) for scene in batch]))
    return cls + patches, {"cls_loss": cls.item(), "patch_loss": patches.item()}


def train_cls(model, processor, config: TestbedTrainConfig, log) -> tuple[dict[str, float], SceneHeads]:
    """Stage 0; returns its last losses and the heads, which stage 2 keeps training."""
    geometry = VisionGeometry.from_model(model)
    head = SceneHeads(vision_tower(model), geometry.layers_to_run, len(CLS_LABELS))
    source = scenes(config.seed, "cls")

    def loss_of_batch() -> tuple[torch.Tensor, dict[str, float]]:
        batch = [next(source)[0] for _ in range(config.batch_size)]
        pixels = processor.image_processor(images=[render(s) for s in batch], return_tensors="pt")["pixel_values"]
        return scene_loss(head, pixels, batch, geometry)

    groups = [{"params": list(head.parameters()), "lr": config.cls_lr}]
    return _optimise("cls", groups, config.cls_steps, config, loss_of_batch, log, 0), head


def _conversations(model, processor, source, config: TestbedTrainConfig, turns_of: Callable) -> Callable[[], tuple]:
    """A function giving the next batch: ``(scenes, collated inputs)``."""
    pad = processor.tokenizer.pad_token_id

    def next_batch() -> tuple[list[Scene], dict[str, torch.Tensor]]:
        batch, items = [], []
        for _ in range(config.batch_size):
            scene, rng = next(source)
            batch.append(scene)
            items.append(encode_conversation(processor, render(scene), turns_of(scene, rng)))
        return batch, collate(items, pad)

    return next_batch


def train_caption(model, processor, config: TestbedTrainConfig, log) -> dict[str, float]:
    """Stage 1: captions, tower frozen."""
    model.model.vision_tower.requires_grad_(False)
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower")], "lr": config.lr}]
    next_batch = _conversations(model, processor, scenes(config.seed, "caption"), config, lambda s, r: [q.describe(s)])
    return _optimise("caption", groups, config.caption_steps, config, lambda: (model(**next_batch()[1]).loss, {}), log, config.cls_steps)


def train_instruct(model, processor, head: SceneHeads, config: TestbedTrainConfig, log) -> dict[str, float]:
    """Stage 2: conversations, everything trainable, stage 0's loss kept on beside the LM's."""
    model.model.vision_tower.requires_grad_(True)
    geometry = VisionGeometry.from_model(model)
    tower = [p for n, p in model.named_parameters() if n.startswith("model.vision_tower")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower")]
    groups = [
        {"params": rest + list(head.classifier.parameters()) + list(head.patches.parameters()), "lr": config.lr},
        {"params": tower, "lr": config.lr * config.tower_lr_scale},
    ]
    next_batch = _conversations(
        model, processor, scenes(config.seed, "instruct"), config, lambda s, r: q.training_questions(s, r, config.per_task)
    )

    def loss_of_batch() -> tuple[torch.Tensor, dict[str, float]]:
        batch, inputs = next_batch()
        language = model(**inputs).loss
        if not config.cls_weight:
            return language, {}
        scene, parts = scene_loss(head, inputs["pixel_values"], batch, geometry)
        return language + config.cls_weight * scene, {"lm_loss": language.item(), **parts}

    return _optimise("instruct", groups, config.instruct_steps, config, loss_of_batch, log, config.cls_steps + config.caption_steps)


def train(config: TestbedTrainConfig) -> dict[str, float]:
    """Build, train and save the testbed model; returns each stage's last logged losses
    (``"cls/loss"``, ``"instruct/lm_loss"``, ...) and ``wall_s``."""
    from pipeline.tracking.runs import TrackingConfig, start_job_run

    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    tokenizer = build_tokenizer(config.architecture, config.seed)
    processor = build_processor(tokenizer)
    model = build_model(config.architecture, tokenizer, config.seed)
    model.train()
    params = {k: v for k, v in asdict(config).items() if k != "architecture"}
    params.update({f"arch_{k}": v for k, v in asdict(config.architecture).items()})
    params["parameters"] = sum(p.numel() for p in model.parameters())
    tracking = TrackingConfig(
        tracking_uri=config.tracking_uri,
        experiment=config.experiment,
        enabled=config.tracking_uri is not None,
        log_system_metrics=False,
        tags={"mlflow.experimentKind": "custom_model_development"},
    )
    with start_job_run(tracking, params) as run:
        def log(metrics: dict[str, float], step: int) -> None:
            run.log_metrics(metrics, step)

        torch.manual_seed(config.seed)
        cls_losses, head = train_cls(model, processor, config, log)
        losses = {
            **cls_losses,
            **train_caption(model, processor, config, log),
            **train_instruct(model, processor, head, config, log),
        }
        model.eval()
        output = Path(config.output)
        model.save_pretrained(output)
        processor.save_pretrained(output)
        losses["wall_s"] = time.perf_counter() - start
        run.log_metrics({f"final/{key}": value for key, value in losses.items()})
    logger.info("saved the testbed model to %s: %s", output, losses)
    return losses
