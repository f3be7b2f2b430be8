"""On CUDA (skipped without it): the model path in bf16 answers like the stock model, and runs
batches of four. Only torch and transformers are needed (no Ray), as on the lent GPU machine."""

from __future__ import annotations

import math

import pytest
import torch

from hired_ops import DropConfig
from pipeline.data.synthetic import random_image
from pipeline.model.generation import GenerateOptions
from pipeline.model.loading import load_model
from pipeline.model.pixels import uint8_tiles
from pipeline.model.vlm import HiredVLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

SIZES = [(480, 640), (1000, 600), (672, 672), (336, 336)]


@pytest.fixture(scope="module")
def bf16_tiny():
    model, processor = load_model("hired/tiny-llava-next", device="cuda", dtype="bfloat16")
    return model, processor


def test_auto_dtype_on_cuda_is_bf16_or_fp16():
    model, _ = load_model("hired/tiny-llava-next", device="cuda")
    assert model.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert next(model.parameters()).is_cuda


def test_bf16_without_dropping_matches_the_stock_model(bf16_tiny):
    model, processor = bf16_tiny
    vlm = HiredVLM(model, processor, DropConfig(method="full"))
    for height, width in SIZES:
        image = random_image(height, width, seed=height + width)
        text = vlm.format_prompt("Describe the image.")
        inputs = processor(images=[image], text=[text], return_tensors="pt").to("cuda").to(torch.bfloat16)
        with torch.inference_mode():
            stock_logits = model(**inputs).logits[0, -1].float()
            stock = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]
            encoded = vlm.encode([image])
            embeds, mask = vlm.build_inputs(encoded, ["Describe the image."])
            ours_logits = model(inputs_embeds=embeds, attention_mask=mask).logits[0, -1].float()
        torch.testing.assert_close(ours_logits.log_softmax(-1), stock_logits.log_softmax(-1), rtol=0, atol=0.05)
        ours = vlm.generate(encoded, ["Describe the image."], GenerateOptions(max_new_tokens=4))[0]
        eos = processor.tokenizer.eos_token_id
        tokens = stock.tolist()
        tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
        assert ours.text == processor.tokenizer.decode(tokens, skip_special_tokens=True).strip(), (height, width)


def test_uint8_tiles_are_normalised_on_the_gpu(bf16_tiny):
    model, processor = bf16_tiny
    vlm = HiredVLM(model, processor, DropConfig(budget=0.2))
    image = random_image(480, 640)
    stock = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
    tiles = vlm.tower_input(torch.from_numpy(uint8_tiles(processor.image_processor, image)))
    assert tiles.is_cuda and tiles.dtype == torch.bfloat16
    torch.testing.assert_close(tiles.float().cpu(), stock.to(torch.bfloat16).float(), rtol=0, atol=0.02)


def test_batch_of_four_on_cuda_keeps_the_budget_and_answers_every_image(bf16_tiny):
    model, processor = bf16_tiny
    vlm = HiredVLM(model, processor, DropConfig(budget=0.2))
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]
    torch.cuda.reset_peak_memory_stats()
    batched = vlm.run(images, "Describe the image.", GenerateOptions(max_new_tokens=6))
    assert len(batched) == 4
    budget = math.floor(0.2 * vlm.geometry.max_tokens)
    assert [r.encoded.num_tokens for r in batched] == [min(budget, r.encoded.available_tokens) for r in batched]
    alone = [vlm.encode([image])[0] for image in images]
    for result, single in zip(batched, alone):
        assert (result.encoded.patch == single.patch).all() and (result.encoded.partition == single.partition).all()
        assert result.generation.generated_tokens > 0
    assert torch.cuda.max_memory_allocated() > 0
