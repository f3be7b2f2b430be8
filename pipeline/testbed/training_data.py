"""What the testbed's training stages read: scenes, conversations and the tower's targets.

Generated on the fly from the "train" split of :mod:`.scenes` (standard and dense scenes
alternating), with the questions of :mod:`.questions` in the evaluation tasks' own prompts, so
that training and evaluation format a question identically.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

from hired_ops import VisionGeometry
from pipeline.experiments.tasks import get_task
from pipeline.tracking.figures import partition_pixels

from . import questions as q
from .scenes import COLORS, GLYPHS, SHAPES, TILE, Scene, label_map, make_scene
from .text_turns import TextTurn

# Stage-0 labels of a tile's CLS (multi-label): each colour-shape pair, each shape, each colour, each glyph.
CLS_LABELS = (
    [f"{c} {s}" for c in COLORS for s in SHAPES] + list(SHAPES) + list(COLORS) + [f"character {g}" for g in GLYPHS]
)
# Stage-0 classes of a patch token (one each): background, then every object a patch can show.
PATCH_CLASSES = ("background", *(f"{c} {s}" for c in COLORS for s in SHAPES), *(f"character {g}" for g in GLYPHS))


def training_scene(seed: int, index: int) -> Scene:
    """Training scene ``index``: standard and dense scenes alternate."""
    return make_scene("train", seed, index, "dense" if index % 2 else "standard")


def prompt_for(qa: q.QA | TextTurn) -> str:
    """The user turn's text, exactly as evaluation prompts it (the task's template)."""
    if qa.task in ("caption", "text"):
        return qa.question
    return get_task(qa.task).build_prompt({"question": qa.question, "choices": list(qa.choices) or None})


def encode_conversation(processor, image: Image.Image | None, turns: list[q.QA | TextTurn]) -> dict[str, torch.Tensor]:
    """One image (or none) and several question-answer turns in the chat template, loss on the
    answers only.

    The text is cut where the template's render of the conversation so far grows: the first user
    turn (with the image) goes through the processor, which expands ``<image>`` to the image's
    token count, exactly as :class:`pipeline.model.vlm.HiredVLM` formats a single question; each
    answer (with its end-of-turn token) is a labelled segment; each later user turn is tokenised
    on its own.

    Returns ``input_ids`` and ``labels`` ``(T,)``, and with an image ``pixel_values``
    ``(P, 3, 64, 64)`` and ``image_sizes`` ``(2,)``.
    """
    tokenizer = processor.tokenizer
    messages: list[dict] = []
    rendered = ""
    ids: list[int] = []
    labels: list[int] = []
    pixels = None
    for index, turn in enumerate(turns):
        content = ([{"type": "image"}] if index == 0 and image is not None else []) + [
            {"type": "text", "text": prompt_for(turn)}
        ]
        messages.append({"role": "user", "content": content})
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        segment = prompt[len(rendered) :]
        if index == 0 and image is not None:
            pixels = processor(images=[image], text=[segment], return_tensors="pt")
            segment_ids = pixels["input_ids"][0].tolist()
        elif index == 0:  # as the processor tokenises a first turn, and HiredVLM.chat_ids a text-only chat
            segment_ids = tokenizer(segment)["input_ids"]
        else:
            segment_ids = tokenizer(segment, add_special_tokens=False)["input_ids"]
        ids += segment_ids
        labels += [-100] * len(segment_ids)
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
        rendered = processor.apply_chat_template(messages)
        answer = rendered[len(prompt) :]
        end = tokenizer.eos_token
        answer_ids = tokenizer(answer[: answer.index(end) + len(end)], add_special_tokens=False)["input_ids"]
        rest_ids = tokenizer(answer[answer.index(end) + len(end) :], add_special_tokens=False)["input_ids"]
        ids += answer_ids + rest_ids
        labels += answer_ids + [-100] * len(rest_ids)
    item = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    if pixels is not None:
        item.update(pixel_values=pixels["pixel_values"][0], image_sizes=pixels["image_sizes"][0])
    return item


def collate(items: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``, ``labels``, ``attention_mask`` ``(B, T)``; and where some
    items have an image, ``pixel_values`` ``(I, P_max, 3, 64, 64)`` (zero-padded; the model reads
    ``image_sizes`` ``(I, 2)``) of those ``I`` items in batch order, which is the order LLaVA-NeXT
    matches images to the image tokens in."""
    length = max(len(item["input_ids"]) for item in items)
    batch = len(items)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    labels = torch.full((batch, length), -100, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for i, item in enumerate(items):
        n = len(item["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = item["input_ids"], item["labels"], 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    imaged = [item for item in items if "pixel_values" in item]
    if imaged:
        parts = max(len(item["pixel_values"]) for item in imaged)
        pixels = torch.zeros(len(imaged), parts, *imaged[0]["pixel_values"].shape[1:])
        for i, item in enumerate(imaged):
            pixels[i, : len(item["pixel_values"])] = item["pixel_values"]
        out.update(pixel_values=pixels, image_sizes=torch.stack([item["image_sizes"] for item in imaged]))
    return out


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
    """``(P * side * side,)`` class indices into :data:`PATCH_CLASSES`, patches of each partition
    in raster order: the object covering the most of a patch's pixels if it covers a quarter of
    them, else background (0).

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
    lookup = torch.tensor([PATCH_CLASSES.index(thing.label) for thing in scene.things])
    return lookup[torch.from_numpy(owner)] * torch.from_numpy(covered)


class SceneItems(torch.utils.data.Dataset):
    """``length`` training items, item ``i`` made by ``make(scene i, its question stream)``.

    Map-style, so the Trainer's seeded sampler orders them and a resumed stage skips the steps it
    already ran without generating their data.
    """

    def __init__(self, seed: int, stage: str, length: int, make) -> None:
        self.seed, self.stage, self.length, self.make = seed, stage, length, make

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.make(training_scene(self.seed, index), random.Random(f"{self.stage}:{self.seed}:{index}"))


class WithText(torch.utils.data.Dataset):
    """``scenes`` with a share of its items replaced by text-only conversations.

    Item ``i`` is text when ``floor((i + 1) * share) > floor(i * share)`` (every fourth index at
    ``share=0.25``; the Trainer's seeded sampler then draws them in its shuffled order with the
    rest); the ``k``-th of them is ``encode(texts[k % len(texts)])`` (the texts repeat when there
    are fewer than slots), and every other item is ``scenes[i]``.
    """

    def __init__(self, scenes: torch.utils.data.Dataset, texts: list, share: float, encode) -> None:
        if text_count(len(scenes), share) and not texts:
            raise ValueError(f"share={share} of {len(scenes)} items needs text conversations, got none")
        self.scenes, self.texts, self.share, self.encode = scenes, texts, share, encode

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int):
        slot = math.floor(index * self.share)
        if math.floor((index + 1) * self.share) > slot:
            return self.encode(self.texts[slot % len(self.texts)])
        return self.scenes[index]


def text_count(length: int, share: float) -> int:
    """How many of ``length`` items :class:`WithText` makes text-only."""
    return math.floor(length * share)
