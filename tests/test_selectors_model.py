"""With the budget at every token, each selection (under its preset's allocation and under the
global pool) gives the stock model's LLM input: same features, same logits."""

from __future__ import annotations

import pytest
import torch

from hired_ops import DropConfig
from pipeline.data.synthetic import random_image
from pipeline.model.vlm import HiredVLM
from tests.test_instruction_selection import tokens
from tests.test_model_equivalence import stock_answer

# square (no padding) and panorama (letterboxed sub-images)
SIZES = [(672, 672), (300, 1000)]
PROMPT = "Describe the image."
METHODS = [
    "visionzip",
    "divprune",
    "scope",
    "global+topk",
    "global+visionzip",
    "even+spatial",
    "global+random",
    "hired+divprune",
    "hired+coverage",
    "hired-cdpp",
    "cdpruner",
]


@pytest.fixture(scope="module")
def stock_logits(request):
    """Per fixture name, the stock model's logits for each image of SIZES."""
    cache: dict[str, list[torch.Tensor]] = {}

    def get(fixture: str) -> list[torch.Tensor]:
        if fixture not in cache:
            model, processor = request.getfixturevalue(fixture)
            vlm = HiredVLM(model, processor, DropConfig(method="full"), transfer_dtype="float32")
            cache[fixture] = [
                stock_answer(model, processor, random_image(h, w, seed=h + w), vlm.format_prompt(PROMPT), 1)[1]
                for h, w in SIZES
            ]
        return cache[fixture]

    return get


@pytest.mark.parametrize("fixture", ["tiny_next", "tiny_llava"])
@pytest.mark.parametrize("method", METHODS)
def test_full_budget_selection_equals_stock_model(request, stock_logits, fixture, method):
    model, processor = request.getfixturevalue(fixture)
    full = HiredVLM(model, processor, DropConfig(method="full"), transfer_dtype="float32")
    vlm = HiredVLM(model, processor, DropConfig(method=method, budget=1.0), transfer_dtype="float32")
    for (height, width), expected in zip(SIZES, stock_logits(fixture)):
        image = random_image(height, width, seed=height + width)
        encoded = vlm.encode([image], prompts=[PROMPT])
        reference = full.encode([image])[0]
        for field in ("features", "partition", "patch", "newline_after"):
            assert (getattr(encoded[0], field) == getattr(reference, field)).all(), field
        embeds, mask = vlm.build_inputs(encoded, [PROMPT])
        with torch.no_grad():
            logits = model(inputs_embeds=embeds, attention_mask=mask).logits[0]
        assert logits.shape == expected.shape
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_random_keeps_an_images_own_draw_alone_or_in_a_batch(tiny_next):
    """The random baseline draws per image, from the image: the same image keeps the same tokens
    whether the tower ran it alone or beside another, and that other image draws its own."""
    model, processor = tiny_next
    vlm = HiredVLM(model, processor, transfer_dtype="float32")
    image, other = random_image(300, 500, seed=1), random_image(300, 500, seed=2)
    drop = DropConfig(method="random", budget=0.2)
    alone = tokens(vlm.encode([image], drop)[0])
    beside, batched = vlm.encode([other, image], drop)
    assert tokens(batched) == alone and tokens(beside) != alone
