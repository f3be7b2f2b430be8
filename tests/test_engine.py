"""Continuous batching (issue 25): the engine's greedy tokens equal ``generate``'s (the former batch
path) for the same requests, including rows of different prompt lengths that join mid-way, and
its limits hold."""

from __future__ import annotations

import pytest
import torch

from hired_ops import DropConfig
from pipeline.data.synthetic import random_image
from pipeline.model.engine import Cancelled, Engine, EngineLimits, EngineRequest
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineLimits(max_num_seqs=0)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        EngineLimits(max_num_batched_tokens=True)


@pytest.fixture(scope="module")
def vlm(tiny_next) -> HiredVLM:
    model, processor = tiny_next
    return HiredVLM(model, processor, DropConfig(budget=0.2), transfer_dtype="float32")


@pytest.fixture(scope="module")
def chats(vlm) -> list[tuple[list[int], list]]:
    """Five requests of different input lengths: images of other sizes and budgets, prompts of
    other lengths, one text-only."""
    sizes = [(480, 640), (336, 336), (700, 300), (336, 672)]
    budgets = [0.2, 0.1, 0.3, 0.05]
    out = []
    for n, ((h, w), budget) in enumerate(zip(sizes, budgets)):
        encoded = vlm.encode([random_image(h, w, seed=n)], DropConfig(budget=budget))
        text = "Describe it." if n % 2 else "What is in this picture, and what colour is the thing at the left?"
        out.append((vlm.chat_ids([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]), encoded))
    out.append((vlm.chat_ids([{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]), []))
    return out


def _reference(vlm: HiredVLM, chats, max_new_tokens: int) -> list[list[int]]:
    """Token ids from ``transformers``' ``generate`` on one left-padded batch (what the endpoint
    and the job ran before the engine), cut at the first end token."""
    embeds, mask = vlm.embed_chats(chats)
    with torch.inference_mode():
        out = vlm.model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=vlm.tokenizer.pad_token_id,
        )
    ends = vlm.end_token_ids()
    rows = []
    for row in out.tolist():
        count = next((n for n, t in enumerate(row) if t in ends), len(row))
        rows.append(row[:count])
    return rows


@pytest.mark.slow
def test_all_at_once_equals_generate(vlm, chats):
    expected = _reference(vlm, chats, 12)
    got = vlm.generate_chats(chats, GenerateOptions(max_new_tokens=12))
    assert [g.token_ids for g in got] == expected
    lengths = {vlm.input_length(ids, images) for ids, images in chats}
    assert len(lengths) == len(chats)  # every row has its own prompt length: padding is exercised
    assert [g.prompt_tokens for g in got] == [vlm.input_length(ids, images) for ids, images in chats]


@pytest.mark.slow
def test_rows_joining_mid_way_get_the_same_tokens_as_alone(vlm, chats):
    limits = [20, 3, 9, 14, 6]
    expected = [_reference(vlm, [chat], n)[0] for chat, n in zip(chats, limits)]
    engine = Engine(vlm, EngineLimits(max_num_seqs=2))
    results: dict[int, object] = {}
    order: list[int] = []
    running: list[int] = []

    def submit(n: int) -> None:
        ids, images = chats[n]
        engine.submit(EngineRequest(ids, images, GenerateOptions(max_new_tokens=limits[n]), lambda r, n=n: (results.__setitem__(n, r), order.append(n))))

    submit(0)
    for _ in range(4):  # row 0 decodes alone for a few steps, then the others arrive
        running.append(engine.step())
    for n in range(1, 5):
        submit(n)
    while engine.has_work:
        running.append(engine.step())
        assert engine.running <= 2
    assert [results[n].token_ids for n in range(5)] == expected
    assert max(running) == 2
    assert order.index(1) < order.index(0)  # a short row left before the long one it joined


@pytest.mark.slow
def test_token_budget_spreads_admission_and_cancelled_waiting_never_start(vlm, chats):
    costs = [vlm.input_length(ids, images) for ids, images in chats[:3]]
    engine = Engine(vlm, EngineLimits(max_num_seqs=8, max_num_batched_tokens=max(costs)))
    results: dict[int, object] = {}
    for n in range(3):
        ids, images = chats[n]
        engine.submit(EngineRequest(ids, images, GenerateOptions(max_new_tokens=4), lambda r, n=n: results.__setitem__(n, r)))
    ids, images = chats[4]
    engine.submit(EngineRequest(ids, images, GenerateOptions(max_new_tokens=4), lambda r: results.__setitem__(9, r), cancelled=lambda: True))
    first = engine.step()
    assert first == 1  # no two prompts fit one step's budget: one is admitted per step
    engine.run()
    assert isinstance(results[9], Cancelled)
    assert [results[n].token_ids for n in range(3)] == [_reference(vlm, [chats[n]], 4)[0] for n in range(3)]


@pytest.mark.slow
def test_a_seeded_sample_does_not_depend_on_its_batch_mates(vlm, chats):
    sampled = GenerateOptions(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=-(2**63))
    alone = vlm.generate_chats([chats[0]], sampled)[0].token_ids
    engine = Engine(vlm, EngineLimits(max_num_seqs=4))
    results: dict[int, object] = {}
    for n in (1, 2):  # other rows, greedy and sampled without a seed, decoding first
        engine.submit(EngineRequest(*chats[n], GenerateOptions(max_new_tokens=12, temperature=n - 1.0), lambda r, n=n: results.__setitem__(n, r)))
    engine.step()
    engine.submit(EngineRequest(*chats[0], sampled, lambda r: results.__setitem__(0, r), top_logprobs=2))
    engine.run()
    assert results[0].token_ids == alone
    logprobs = results[0].logprobs
    assert [lp.token_id for lp in logprobs] == alone and all(len(lp.top) == 2 and lp.logprob <= 0 for lp in logprobs)
