"""Run a LLaVA-NeXT / LLaVA model with token dropping, in two halves the pipeline can split.

* :meth:`HiredVLM.encode`: images -> :class:`EncodedImage` (kept pre-projector features and the
  indices and budgets behind them), plain numpy so it can cross between Ray actor pools.
* :meth:`HiredVLM.generate`: encoded images + prompts -> text, one left-padded batched prefill;
  an optional per-step callback sees each row's new token (what :class:`TextStream` turns into
  text deltas for streaming).

:meth:`HiredVLM.run` does both in one process. The model is any Hugging Face
``LlavaNextForConditionalGeneration`` or ``LlavaForConditionalGeneration`` with its processor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from hired_ops import DropConfig, VisionGeometry, encode_and_drop

from .encoded import EncodedImage, check_transfer_dtype
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


class _FirstTokenClock:
    """Logits processor that notes when the prefill's logits arrive (time to first token)."""

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.first is None:
            if scores.is_cuda:  # kernels run ahead of the host: wait until the prefill is done
                torch.cuda.synchronize(scores.device)
            self.first = time.perf_counter()
        return scores


class _StepStreamer(BaseStreamer):
    """Hands each decoding step's new token ids (one per row) to a callback, on the generating thread.

    Unlike transformers' text streamers it accepts any batch size: it only forwards ids.
    """

    def __init__(self, on_tokens: Callable[[list[int]], None]) -> None:
        self.on_tokens = on_tokens

    def put(self, value: torch.Tensor) -> None:
        # generate() first puts the prompt ids, (B, 0) when it gets inputs_embeds only; every
        # decoding step then puts the (B,) new tokens, finished rows holding the pad id.
        if value.dim() != 1 or value.numel() == 0:
            return
        self.on_tokens(value.tolist())

    def end(self) -> None:
        pass


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

    def encode(self, images: list[Image.Image] | dict[str, Any], drop: DropConfig | None = None) -> list[EncodedImage]:
        """Vision tower + dropping: one :class:`EncodedImage` per image."""
        pixels = images if isinstance(images, dict) else self.preprocess(images)
        kept = encode_and_drop(
            self.model, self.tower_input(pixels["pixel_values"]), pixels["image_sizes"], drop or self.drop, self.geometry
        )
        return [EncodedImage.from_kept(k, self.transfer_dtype) for k in kept]

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

    def format_prompt(self, prompt: str) -> str:
        """The user's instruction wrapped in the model's chat template, with one image slot."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return f"<image>\n{prompt}"

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a formatted prompt; its single image token is expanded later."""
        ids = self.tokenizer(self.format_prompt(prompt), add_special_tokens=True)["input_ids"]
        if ids.count(self.image_token_id) != 1:
            raise ValueError(f"the prompt must hold exactly one image slot, found {ids.count(self.image_token_id)}")
        return ids

    def prompt_tokens(self, encoded: EncodedImage, prompt: str) -> int:
        """Input positions of one request (its ``attention_mask`` sum in :meth:`build_inputs`)."""
        # visual_embeddings adds the newline rows only when the model has a newline embedding
        visual = encoded.sequence_length if self.image_newline is not None else encoded.num_tokens
        return len(self.prompt_ids(prompt)) - 1 + visual

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
        embed = self.model.get_input_embeddings()
        rows = []
        for enc, prompt in zip(encoded, prompts):
            ids = self.prompt_ids(prompt)
            slot = ids.index(self.image_token_id)
            text = embed(torch.tensor(ids, device=self.device))
            rows.append(torch.cat([text[:slot], self.visual_embeddings(enc).to(text.dtype), text[slot + 1 :]]))
        length = max(r.shape[0] for r in rows)
        pad = embed(torch.tensor([self.tokenizer.pad_token_id], device=self.device))[0]
        batch = pad.expand(len(rows), length, pad.shape[-1]).clone()
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=self.device)
        for i, r in enumerate(rows):
            batch[i, length - r.shape[0] :] = r
            mask[i, length - r.shape[0] :] = 1
        return batch, mask

    @torch.inference_mode()
    def generate(
        self,
        encoded: list[EncodedImage],
        prompts: list[str],
        options: GenerateOptions | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> list[Generation]:
        """Project the kept features and decode, all images in one batched prefill.

        ``on_tokens``, if given, is called on this thread once per decoding step with the new
        token id of every row (length ``len(encoded)``; rows that already ended get the pad id).
        It does not change the results.
        """
        if len(encoded) != len(prompts):
            raise ValueError(f"{len(encoded)} images but {len(prompts)} prompts")
        if not encoded:
            return []
        options = options or GenerateOptions()
        start = time.perf_counter()
        inputs_embeds, attention_mask = self.build_inputs(encoded, prompts)
        clock = _FirstTokenClock()
        sampling = options.temperature > 0
        if options.seed is not None:
            torch.manual_seed(options.seed)
        output = self.model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=options.max_new_tokens,
            do_sample=sampling,
            temperature=options.temperature if sampling else None,
            top_p=options.top_p if sampling else None,
            top_k=None,
            logits_processor=[clock],
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=_StepStreamer(on_tokens) if on_tokens is not None else None,
        )
        if output.is_cuda:
            torch.cuda.synchronize(output.device)
        end = time.perf_counter()
        ttft = (clock.first or end) - start
        results = []
        eos = self.end_token_ids()
        for i, sequence in enumerate(output):
            tokens = sequence.tolist()
            count = next((n for n, t in enumerate(tokens) if t in eos), len(tokens))
            text = truncate_at_stop(self.tokenizer.decode(tokens[:count], skip_special_tokens=True), options.stop)
            results.append(
                Generation(
                    text=text.strip(),
                    generated_tokens=count,
                    prompt_tokens=int(attention_mask[i].sum()),
                    ttft_s=ttft,
                    generate_s=end - start,
                )
            )
        return results

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
        encoded = self.encode(images, drop)
        encode_s = time.perf_counter() - start
        generations = self.generate(encoded, prompts, options)
        return [
            Result(g.text, e, g, {"encode_s": encode_s, "ttft_s": g.ttft_s, "generate_s": g.generate_s})
            for e, g in zip(encoded, generations)
        ]
