"""Run a LLaVA-NeXT / LLaVA model with token dropping, in two halves the pipeline can split.

* :meth:`HiredVLM.encode`: images -> :class:`EncodedImage` (kept pre-projector features and the
  indices and budgets behind them), plain numpy so it can cross between Ray actor pools.
* :meth:`HiredVLM.generate`: encoded images + prompts -> text, all rows admitted at once into a
  :class:`~pipeline.model.engine.Engine` (left-padded batched prefill, then decoding).
* :meth:`HiredVLM.generate_chats`: the same for conversations (:meth:`chat_ids`) holding any
  number of images, with log-probabilities. The endpoint and the job's LLM stage drive an
  :class:`~pipeline.model.engine.Engine` themselves, so that requests join and leave at every
  step.

:meth:`HiredVLM.run` does both in one process. The model is any Hugging Face
``LlavaNextForConditionalGeneration`` or ``LlavaForConditionalGeneration`` with its processor.
"""

from __future__ import annotations

import time
from functools import partial
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from hired_ops import DropConfig, TowerOutput, VisionGeometry, drop_tokens, run_images

from .encoded import EncodedImage, check_transfer_dtype
from .engine import Engine, EngineLimits, EngineRequest
from .generation import GenerateOptions, Generation
from .loading import load_model
from .pixels import PixelNormaliser
from .text_stream import TextStream, truncate_at_stop


@dataclass
class Result:
    """What :meth:`HiredVLM.run` returns per image."""

    text: str
    encoded: EncodedImage
    generation: Generation
    timings: dict[str, float] = field(default_factory=dict)


# one request to the language half: prompt ids holding one image token per image, and the images
ChatInput = tuple[list[int], list[EncodedImage]]


class HiredVLM:
    """A VLM with token dropping. Thread-compatible, not thread-safe (one batch at a time).

    Args:
        model: a Hugging Face LLaVA-NeXT or LLaVA model, in eval mode, on its device.
        processor: its processor (image processor + tokenizer, chat template optional).
        drop: the dropping method and budget.
        transfer_dtype: dtype of features handed between the halves ("float16" halves the bytes
            between actor pools; "float32" keeps them bit-exact).
    """

    def __init__(self, model, processor, drop: DropConfig | None = None, transfer_dtype: str = "float16") -> None:
        check_transfer_dtype(transfer_dtype)
        self.model = model
        self.processor = processor
        self.drop = drop or DropConfig()
        self.transfer_dtype = transfer_dtype
        self.geometry = VisionGeometry.from_model(model)
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.image_token_id = int(model.config.image_token_id)
        inner = getattr(model, "model", model)
        self.projector = inner.multi_modal_projector
        self.image_newline = getattr(inner, "image_newline", None)
        # the projector lives in both halves of a split deployment (see loading.keep_half)
        self.device = next(self.projector.parameters()).device
        self.dtype = next(self.projector.parameters()).dtype
        self.normaliser = PixelNormaliser.from_processor(processor.image_processor)

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        drop: DropConfig | None = None,
        device: str | None = None,
        dtype: str | None = None,
        transfer_dtype: str = "float16",
        half: str | None = None,
    ) -> HiredVLM:
        """Load ``name`` (see :func:`pipeline.model.loading.load_model`; ``half`` keeps one half only)."""
        model, processor = load_model(name, device=device, dtype=dtype, half=half)
        return cls(model, processor, drop, transfer_dtype)

    # -- vision half ---------------------------------------------------------------------------

    def preprocess(self, images: list[Image.Image]) -> dict[str, Any]:
        """The stock image processor's tensors for a batch of RGB images (CPU work)."""
        out = self.processor.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_sizes": out.get("image_sizes")}

    def encode(
        self,
        images: list[Image.Image] | dict[str, Any],
        drop: DropConfig | None = None,
        prompts: list[str | None] | None = None,
    ) -> list[EncodedImage]:
        """Vision tower + dropping: one :class:`EncodedImage` per image.

        ``prompts`` (one per image, the user's instruction as :meth:`generate` takes it) reach a
        selection that reads the instruction; every other method ignores them. Rows that hold the
        same pixels share one tower run (a job or a request batch asking several questions of one
        image pays the tower once), and rows that would keep the same tokens share one drop.
        """
        drop = drop or self.drop
        pixels = images if isinstance(images, dict) else self.preprocess(images)
        count = len(pixels["pixel_values"])
        prompts = prompts if prompts is not None else [None] * count
        if len(prompts) != count:
            raise ValueError(f"{count} images but {len(prompts)} prompts")
        firsts, image_of = distinct_images(pixels)
        outputs = self._tower(take_images(pixels, firsts), drop)
        keys = [(image_of[i], prompts[i] if drop.needs_instruction else None) for i in range(count)]
        dropped = {key: self._drop(outputs[key[0]], drop, key[1]) for key in dict.fromkeys(keys)}
        return [dropped[key] for key in keys]

    def encode_questions(self, image: Image.Image, prompts: list[str], drop: DropConfig | None = None) -> list[EncodedImage]:
        """One image asked several questions: preprocessed once, one tower run, and a drop per
        prompt when the selection reads the instruction (one shared drop otherwise)."""
        pixels = self.preprocess([image])
        repeated = {
            "pixel_values": pixels["pixel_values"].expand(len(prompts), *pixels["pixel_values"].shape[1:]),
            "image_sizes": None if pixels["image_sizes"] is None else pixels["image_sizes"].expand(len(prompts), -1),
        }
        return self.encode(repeated, drop, prompts)

    def _tower(self, pixels: dict[str, Any], drop: DropConfig) -> list[TowerOutput]:
        return run_images(self.model, self.tower_input(pixels["pixel_values"]), pixels["image_sizes"], drop, self.geometry)

    def _drop(self, output: TowerOutput, drop: DropConfig, prompt: str | None) -> EncodedImage:
        ids = self.instruction_ids(prompt) if drop.needs_instruction and prompt is not None else None
        return EncodedImage.from_kept(drop_tokens(self.model, output, drop, self.geometry, ids), self.transfer_dtype)

    def instruction_ids(self, prompt: str) -> torch.Tensor:
        """``(Q,)`` the instruction's token ids as a selection reads them: the prompt's own text,
        tokenised without special tokens or the chat template, image slots removed."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return torch.tensor([t for t in ids if t != self.image_token_id], dtype=torch.long)

    def tower_input(self, pixel_values: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Normalised tiles on the tower's device: uint8 ``(P, 3, H, W)`` tiles (see
        :func:`pipeline.model.pixels.uint8_tiles`) get the processor's rescale and normalise here;
        tensors that are already floats pass unchanged."""
        if isinstance(pixel_values, torch.Tensor):
            if pixel_values.dtype != torch.uint8:
                return pixel_values
            return self.normaliser(pixel_values, self.device, self.dtype)
        return [self.tower_input(tiles) for tiles in pixel_values]

    # -- language half -------------------------------------------------------------------------

    def format_chat(self, messages: list[dict[str, Any]]) -> str:
        """A conversation in the model's chat template, ready for the assistant's next turn.

        ``messages`` are chat-template messages: ``{"role", "content": [parts]}`` with parts
        ``{"type": "image"}`` (an image slot) and ``{"type": "text", "text": ...}``. A processor
        without a template gets one turn per message, ``<image>`` for each slot.
        """
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        lines = []
        for message in messages:
            parts = ["<image>" if p["type"] == "image" else p["text"] for p in message["content"]]
            lines.append(f"{message['role'].upper()}: " + "\n".join(parts))
        return "\n".join(lines) + "\nASSISTANT:"

    def chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """Token ids of a formatted conversation; each image token is expanded later."""
        return self.tokenizer(self.format_chat(messages), add_special_tokens=True)["input_ids"]

    def format_prompt(self, prompt: str) -> str:
        """The user's instruction wrapped in the model's chat template, with one image slot."""
        return self.format_chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}])

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a formatted prompt; its single image token is expanded later."""
        ids = self.tokenizer(self.format_prompt(prompt), add_special_tokens=True)["input_ids"]
        if ids.count(self.image_token_id) != 1:
            raise ValueError(f"the prompt must hold exactly one image slot, found {ids.count(self.image_token_id)}")
        return ids

    def visual_length(self, encoded: EncodedImage) -> int:
        """Positions one image takes in the LLM input."""
        # visual_embeddings adds the newline rows only when the model has a newline embedding
        return encoded.sequence_length if self.image_newline is not None else encoded.num_tokens

    def input_length(self, ids: list[int], images: list[EncodedImage]) -> int:
        """Input positions of one request (its ``attention_mask`` sum in :meth:`build_inputs`)."""
        return len(ids) - len(images) + sum(self.visual_length(e) for e in images)

    def prompt_tokens(self, encoded: EncodedImage, prompt: str) -> int:
        """Input positions of a single-image request."""
        return self.input_length(self.prompt_ids(prompt), [encoded])

    def end_token_ids(self) -> frozenset[int]:
        """Ids that end an answer: the model's EOS id(s) and the pad id finished rows are filled with."""
        eos = self.model.generation_config.eos_token_id
        return frozenset(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}

    def text_stream(self, stop: tuple[str, ...] = ()) -> TextStream:
        """A fresh incremental detokeniser for one answer of this model."""
        return TextStream(self.tokenizer, stop, self.end_token_ids())

    def visual_embeddings(self, encoded: EncodedImage) -> torch.Tensor:
        """``(L, D_text)``: projected kept tokens with newline embeddings where flagged."""
        features = torch.from_numpy(encoded.features).to(self.device, self.dtype)
        projected = self.projector(features)
        newline = torch.from_numpy(encoded.newline_after).to(self.device)
        if self.image_newline is None or not bool(newline.any()):
            return projected
        shift = torch.cumsum(newline.long(), 0) - newline.long()  # newlines before each token
        slots = torch.arange(len(projected), device=self.device) + shift
        out = projected.new_empty(len(projected) + int(newline.sum()), projected.shape[-1])
        out[slots] = projected
        out[slots[newline] + 1] = self.image_newline.to(projected.dtype)
        return out

    def build_inputs(self, encoded: list[EncodedImage], prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``inputs_embeds`` ``(B, T, D)`` and ``attention_mask`` ``(B, T)``."""
        return self.embed_chats([(self.prompt_ids(p), [e]) for e, p in zip(encoded, prompts)])

    def _embed_chat(self, ids: list[int], images: list[EncodedImage]) -> torch.Tensor:
        """``(T, D)``: text embeddings with each image token replaced by that image's embeddings."""
        slots = [n for n, t in enumerate(ids) if t == self.image_token_id]
        if len(slots) != len(images):
            raise ValueError(f"the prompt holds {len(slots)} image slot(s) for {len(images)} image(s)")
        text = self.model.get_input_embeddings()(torch.tensor(ids, device=self.device))
        pieces, start = [], 0
        for slot, image in zip(slots, images):
            pieces += [text[start:slot], self.visual_embeddings(image).to(text.dtype)]
            start = slot + 1
        return torch.cat([*pieces, text[start:]])

    def embed_chats(self, chats: list[ChatInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``inputs_embeds`` ``(B, T, D)`` and ``attention_mask`` ``(B, T)`` of requests."""
        embed = self.model.get_input_embeddings()
        rows = [self._embed_chat(ids, images) for ids, images in chats]
        length = max(r.shape[0] for r in rows)
        pad = embed(torch.tensor([self.tokenizer.pad_token_id], device=self.device))[0]
        batch = pad.expand(len(rows), length, pad.shape[-1]).clone()
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            batch[i, length - r.shape[0] :] = r
            mask[i, length - r.shape[0] :] = 1
        return batch, mask

    def generate(
        self, encoded: list[EncodedImage], prompts: list[str], options: GenerateOptions | None = None
    ) -> list[Generation]:
        """Project the kept features and decode, one image and prompt per row, all rows at once."""
        if len(encoded) != len(prompts):
            raise ValueError(f"{len(encoded)} images but {len(prompts)} prompts")
        return self.generate_chats([(self.prompt_ids(p), [e]) for e, p in zip(encoded, prompts)], options)

    def generate_chats(
        self, chats: list[ChatInput], options: GenerateOptions | None = None, top_logprobs: int | None = None
    ) -> list[Generation]:
        """Decode a batch of requests (prompt ids from :meth:`chat_ids` with their images), all
        admitted at once into one :class:`~pipeline.model.engine.Engine`; raises the first
        request's error if any fails.

        Args:
            top_logprobs: if not None, each generation gets ``logprobs`` with this many
                alternatives per token (0: the chosen token's only).
        """
        options = options or GenerateOptions()
        results: list[Generation | BaseException | None] = [None] * len(chats)
        engine = Engine(self, EngineLimits(max_num_seqs=max(1, len(chats)), max_num_batched_tokens=2**62))
        for n, (ids, images) in enumerate(chats):
            engine.submit(EngineRequest(list(ids), images, options, partial(results.__setitem__, n), top_logprobs))
        engine.run()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    def finish(self, tokens: list[int], prompt_tokens: int, options: GenerateOptions, ttft_s: float, generate_s: float) -> Generation:
        """One row's generated ``tokens`` (padded past its end) as a :class:`Generation`: cut at
        the end token, decoded, cut at the first stop string."""
        count = next((n for n, t in enumerate(tokens) if t in self.end_token_ids()), len(tokens))
        text = truncate_at_stop(self.tokenizer.decode(tokens[:count], skip_special_tokens=True), options.stop)
        return Generation(text.strip(), count, prompt_tokens, ttft_s, generate_s, token_ids=tokens[:count])

    def run(
        self,
        images: list[Image.Image],
        prompts: list[str] | str,
        options: GenerateOptions | None = None,
        drop: DropConfig | None = None,
    ) -> list[Result]:
        """Encode, drop and generate for a batch of images in this process."""
        prompts = [prompts] * len(images) if isinstance(prompts, str) else prompts
        start = time.perf_counter()
        encoded = self.encode(images, drop, prompts)
        encode_s = time.perf_counter() - start
        generations = self.generate(encoded, prompts, options)
        return [
            Result(g.text, e, g, {"encode_s": encode_s, "ttft_s": g.ttft_s, "generate_s": g.generate_s})
            for e, g in zip(encoded, generations)
        ]


def distinct_images(pixels: dict[str, Any]) -> tuple[list[int], list[int]]:
    """``(firsts, image_of)``: the index of each distinct image of a preprocessed batch (first
    occurrence, in order) and, per row, the position of its image among them.

    Rows are the same image when their tiles and size are equal, so rows decoded separately from
    one file match. Each row is read in full only when a signature (its shape, size and ~1,000
    evenly spaced values) matches an earlier row's, so a batch of distinct images, the usual case,
    costs microseconds here rather than a pass over every tile's bytes.
    """
    values, sizes = pixels["pixel_values"], pixels.get("image_sizes")
    candidates: dict[tuple, list[int]] = {}
    firsts: list[int] = []
    image_of: list[int] = []
    for i, tiles in enumerate(values):
        flat = tiles.reshape(-1)
        signature = (
            tuple(tiles.shape),
            None if sizes is None else tuple(int(v) for v in sizes[i]),
            tuple(flat[:: max(1, flat.numel() // 1024)].tolist()),
        )
        same = candidates.setdefault(signature, [])
        match = next((k for k in same if torch.equal(values[firsts[k]], tiles)), None)
        if match is None:
            match = len(firsts)
            firsts.append(i)
            same.append(match)
        image_of.append(match)
    return firsts, image_of


def take_images(pixels: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """The preprocessed batch restricted to ``rows`` (``pixel_values`` a tensor ``(B, ...)`` or a
    list of ``(P, 3, H, W)`` tensors; ``image_sizes`` ``(B, 2)`` or ``None``)."""
    values, sizes = pixels["pixel_values"], pixels.get("image_sizes")
    if len(rows) == len(values):
        return pixels
    index = torch.tensor(rows)
    return {
        "pixel_values": values[index] if isinstance(values, torch.Tensor) else [values[i] for i in rows],
        "image_sizes": None if sizes is None else torch.as_tensor(sizes)[index],
    }
