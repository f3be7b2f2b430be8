"""With nothing dropped we are the stock model; hooks see what eager attention sees; batching
changes nothing."""

from __future__ import annotations

import pytest
import torch

from hired_ops import DropConfig, capture_cls_attention, encode_and_drop, vision_tower
from pipeline.data.synthetic import random_image
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM

# (height, width): square, landscape, portrait, panorama
SIZES = [(672, 672), (600, 1000), (1000, 600), (300, 1000)]
PROMPTS = ["Describe the image.", "What is in the picture?", "How many objects are there and where?", "Caption."]


def stock_answer(model, processor, image, text, max_new_tokens):
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        logits = model(**inputs).logits[0]
    return out[0, inputs["input_ids"].shape[1] :].tolist(), logits


@pytest.mark.parametrize("fixture", ["tiny_next", "tiny_llava"])
@pytest.mark.parametrize("method,budget", [("hired", 100_000), ("full", None), ("hired", 1.0)])
def test_no_dropping_equals_stock_model(request, fixture, method, budget):
    model, processor = request.getfixturevalue(fixture)
    drop = DropConfig(method=method, budget=budget)
    vlm = HiredVLM(model, processor, drop, transfer_dtype="float32")
    for (height, width), prompt in zip(SIZES, PROMPTS):
        image = random_image(height, width, seed=height + width)
        stock_tokens, stock_logits = stock_answer(model, processor, image, vlm.format_prompt(prompt), 6)
        encoded = vlm.encode([image])
        ours = vlm.generate(encoded, [prompt], GenerateOptions(max_new_tokens=6))[0]
        embeds, mask = vlm.build_inputs(encoded, [prompt])
        with torch.no_grad():
            logits = model(inputs_embeds=embeds, attention_mask=mask).logits[0]
        assert logits.shape == stock_logits.shape
        torch.testing.assert_close(logits, stock_logits, rtol=1e-5, atol=1e-5)
        eos = processor.tokenizer.eos_token_id
        expected = stock_tokens[: stock_tokens.index(eos)] if eos in stock_tokens else stock_tokens
        assert ours.generated_tokens == len(expected)
        assert ours.text == processor.tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_visual_token_counts_match_stock_processor(tiny_next):
    model, processor = tiny_next
    expected = {(672, 672): 2928, (600, 1000): 1948, (1000, 600): 1968, (336, 336): 1176}
    vlm = HiredVLM(model, processor, DropConfig(method="full"))
    for (height, width), count in expected.items():
        encoded = vlm.encode([random_image(height, width)])[0]
        assert encoded.sequence_length == count


def test_hooked_cls_rows_equal_eager_attention(tiny_next):
    model, processor = tiny_next
    tower = vision_tower(model)
    pixels = processor.image_processor(images=[random_image(500, 700)], return_tensors="pt")["pixel_values"][0]
    layers = tower.encoder.layers
    with torch.no_grad():
        plain = tower(pixels, output_hidden_states=True)
        with capture_cls_attention(layers, [0, len(layers) - 1]) as capture:
            hooked = tower(pixels, output_hidden_states=True)
        original = tower.config._attn_implementation
        tower.config._attn_implementation = "eager"
        try:
            eager = tower(pixels, output_attentions=True)
        finally:
            tower.config._attn_implementation = original
    for a, b in zip(plain.hidden_states, hooked.hidden_states):
        assert torch.equal(a, b), "hooks changed the tower's output"
    for layer in (0, len(layers) - 1):
        torch.testing.assert_close(capture.rows[layer], eager.attentions[layer][:, :, 0, 1:], rtol=1e-5, atol=1e-6)


def test_truncated_tower_features_equal_stock_hidden_states(tiny_next):
    model, processor = tiny_next
    inputs = processor.image_processor(images=[random_image(400, 900)], return_tensors="pt")
    kept = encode_and_drop(model, inputs["pixel_values"], inputs["image_sizes"], DropConfig(method="full"))[0]
    with torch.no_grad():
        stock = vision_tower(model)(inputs["pixel_values"][0], output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(kept.features, stock[kept.partition, kept.patch])


@pytest.mark.parametrize("method,budget", [("hired", 0.2), ("full", None), ("prumerge+", None), ("spatial", 300)])
def test_batched_generation_equals_one_by_one(tiny_next, method, budget):
    model, processor = tiny_next
    vlm = HiredVLM(model, processor, DropConfig(method=method, budget=budget))
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]
    options = GenerateOptions(max_new_tokens=8)
    batched = vlm.run(images, PROMPTS, options)
    single = [vlm.run([image], [prompt], options)[0] for image, prompt in zip(images, PROMPTS)]
    assert [r.text for r in batched] == [r.text for r in single]
    assert len({r.text for r in batched}) > 1, "answers do not depend on the image: the test could not fail"
    for b, s in zip(batched, single):
        assert b.encoded.num_tokens == s.encoded.num_tokens
        assert (b.encoded.patch == s.encoded.patch).all()


def test_budget_20_percent_keeps_576_tokens_in_order(tiny_next):
    model, processor = tiny_next
    vlm = HiredVLM(model, processor, DropConfig(budget=0.2))
    for height, width in SIZES:
        encoded = vlm.encode([random_image(height, width)])[0]
        assert encoded.num_tokens == encoded.sequence_length == 576
        assert encoded.budgets.sum() == 576 and encoded.budgets[0] == 288
        full = encoded.partition == 0
        assert (encoded.partition[: full.sum()] == 0).all(), "full-image tokens come first"
        assert (encoded.patch[full][1:] > encoded.patch[full][:-1]).all(), "raster order kept"


def test_rows_newline_option_puts_one_after_each_row_that_kept_a_token(tiny_next):
    model, processor = tiny_next
    vlm = HiredVLM(model, processor, DropConfig(budget=500, newlines="rows"))
    encoded = vlm.encode([random_image(672, 672)])[0]
    sub = encoded.partition > 0
    side = 24
    cols = encoded.grid[1]
    rows_with_tokens = {
        (int(p) - 1) // cols * side + int(i) // side for p, i in zip(encoded.partition[sub], encoded.patch[sub])
    }
    assert encoded.num_tokens == 500
    assert int(encoded.newline_after.sum()) == len(rows_with_tokens)
    assert not encoded.newline_after[~sub].any()
