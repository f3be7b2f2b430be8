"""Instruction-aware selection (``cdpp``, presets ``hired-cdpp`` and ``cdpruner``) through the
model: each image's prompt reaches the drop, in ``HiredVLM``, in the job's vision actor, in the
endpoint's request parsing and in the testbed evaluation; budgets stay exact; each row of a batch
keeps its own question's tokens; the vision half scores with the full model's numbers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from hired_ops import DropConfig, run_images
from pipeline.batch.config import HiredProcessorConfig
from pipeline.data.synthetic import random_image
from pipeline.model.config import ModelConfig
from pipeline.model.loading import keep_half, load_image_processor
from pipeline.model.vlm import HiredVLM, distinct_images, take_images
from pipeline.serve.config import ServeConfig
from pipeline.serve.protocol import ChatCompletionRequest
from tests.conftest import TINY_MODEL

QUESTIONS = ["What colour is the car?", "Is there a dog on the left?", "Count the red squares.", "Describe the image."]
INSTRUCTION_METHODS = ["hired-cdpp", "cdpruner", "even+cdpp", "proportional+cdpp"]


def tokens(encoded) -> list[tuple[int, int]]:
    """The kept ``(partition, patch)`` pairs of an EncodedImage, in sequence order."""
    return list(zip(encoded.partition.tolist(), encoded.patch.tolist()))


@pytest.fixture(scope="module")
def vlm(tiny_next) -> HiredVLM:
    model, processor = tiny_next
    return HiredVLM(model, processor, DropConfig(method="hired-cdpp", budget=0.2), transfer_dtype="float32")


@pytest.mark.parametrize("method", INSTRUCTION_METHODS)
def test_every_budget_is_exact_with_a_question(vlm, method):
    image = random_image(300, 1000, seed=4)  # letterboxed: padding patches are never kept
    available = vlm.encode([image], DropConfig(method="full"))[0].available_tokens
    for budget in (1, 37, 0.1, 0.2, available - 1, available, available + 9):
        drop = DropConfig(method=method, budget=budget)
        (encoded,) = vlm.encode([image], drop, [QUESTIONS[0]])
        expected = min(drop.budget.resolve(vlm.geometry.max_tokens), available)
        assert encoded.num_tokens == expected, budget
        assert int(encoded.budgets.sum()) == expected and bool((encoded.budgets <= encoded.available).all())
        assert len(set(tokens(encoded))) == expected


def test_rows_of_one_batch_keep_their_own_questions_tokens(vlm):
    image = random_image(480, 640, seed=1)
    drop = DropConfig(method="hired-cdpp", budget=0.1)
    together = vlm.encode([image] * len(QUESTIONS), drop, QUESTIONS)
    alone = [vlm.encode([image], drop, [q])[0] for q in QUESTIONS]
    assert [tokens(e) for e in together] == [tokens(e) for e in alone]
    for a, b in zip(together, alone):
        assert np.array_equal(a.features, b.features)
    # the questions do steer the selection: not one subset for all of them
    assert len({tuple(tokens(e)) for e in alone}) == len(QUESTIONS)
    # and HiRED's allocation is kept: the same partition budgets whatever the question
    assert len({tuple(e.budgets.tolist()) for e in alone}) == 1
    assert together[0].budgets.tolist() == vlm.encode([image], DropConfig(method="hired", budget=0.1))[0].budgets.tolist()


def test_the_most_relevant_token_of_the_image_is_kept(vlm):
    """cdpp's first greedy pick is the candidate of relevance 1, worked out here from the
    definition: the tokens through the projector against the question's embedding rows, each
    question token standardised over the image, the best one per candidate."""
    image = random_image(480, 640, seed=2)
    drop = DropConfig(method="cdpruner", budget=0.05)
    pixels = vlm.preprocess([image])
    (output,) = run_images(vlm.model, vlm.tower_input(pixels["pixel_values"]), pixels["image_sizes"], drop, vlm.geometry)
    candidates = output.layout.candidate_mask()
    for question in QUESTIONS:
        ids = vlm.tokenizer(question, add_special_tokens=False)["input_ids"]
        words = vlm.model.get_input_embeddings().weight[ids].double()
        projected = vlm.projector(output.features).double()
        cosine = torch.nn.functional.normalize(projected, dim=-1) @ torch.nn.functional.normalize(words, dim=-1).T
        on = cosine[candidates]
        score = ((cosine - on.mean(0)) / on.std(0)).max(-1).values.masked_fill(~candidates, float("-inf"))
        best = divmod(int(score.flatten().argmax()), score.shape[1])
        (encoded,) = vlm.encode([image], drop, [question])
        assert best in tokens(encoded), question


def test_methods_that_do_not_read_the_instruction_ignore_it(vlm):
    image = random_image(400, 500, seed=3)
    for method in ("hired", "divprune", "visionzip"):
        drop = DropConfig(method=method, budget=0.2)
        assert tokens(vlm.encode([image], drop, QUESTIONS[:1])[0]) == tokens(vlm.encode([image], drop)[0])
    # no prompt at all: uniform relevance, the plain DPP of the features (documented)
    drop = DropConfig(method="cdpruner", budget=0.2)
    assert vlm.encode([image], drop)[0].num_tokens == drop.budget.resolve(vlm.geometry.max_tokens)


def test_vision_half_keeps_the_embedding_table_and_scores_the_same():
    from pipeline.model.builtin import build_model

    model, processor = build_model("llava-next", "tiny", seed=0)
    full = HiredVLM(model, processor, transfer_dtype="float32")
    image = random_image(480, 640, seed=5)
    drop = DropConfig(method="hired-cdpp", budget=0.2)
    expected = full.encode([image] * len(QUESTIONS), drop, QUESTIONS)
    table = model.get_input_embeddings()
    vision_model = keep_half(model, "vision")
    assert vision_model.model.language_model is None and vision_model.lm_head is None
    assert vision_model.get_input_embeddings() is table
    half = HiredVLM(vision_model, processor, transfer_dtype="float32")
    got = half.encode([image] * len(QUESTIONS), drop, QUESTIONS)
    assert [tokens(e) for e in got] == [tokens(e) for e in expected]


def test_one_tower_run_serves_every_question_of_an_image(vlm, monkeypatch):
    """Rows holding the same pixels (the testbed's questions of one image; a job or a request
    batch asking several questions of one image, each row decoded on its own) share one tower
    run, and each still keeps its own question's tokens."""
    image, other = random_image(480, 640, seed=6), random_image(500, 300, seed=7)
    drop = DropConfig(method="hired-cdpp", budget=0.2)
    alone = {q: tokens(vlm.encode([image], drop, [q])[0]) for q in QUESTIONS}
    other_alone = tokens(vlm.encode([other], drop, [QUESTIONS[0]])[0])
    towers: list[int] = []
    original = run_images

    def counted(model, pixel_values, *args, **kwargs):
        towers.append(len(pixel_values))
        return original(model, pixel_values, *args, **kwargs)

    monkeypatch.setattr("pipeline.model.vlm.run_images", counted)
    asked = vlm.encode_questions(image, QUESTIONS, drop)
    assert towers == [1]
    rows = [image, other, *[image.copy() for _ in QUESTIONS[1:]]]
    batch = vlm.encode(rows, drop, [QUESTIONS[0], QUESTIONS[0], *QUESTIONS[1:]])
    assert towers == [1, 2]
    assert [tokens(e) for e in asked] == [alone[q] for q in QUESTIONS]
    assert tokens(batch[1]) == other_alone
    assert [tokens(batch[0])] + [tokens(e) for e in batch[2:]] == [alone[q] for q in QUESTIONS]


def test_rows_share_a_tower_run_only_when_their_pixels_and_size_are_equal():
    """Equal tiles and size share; one changed value off the signature's sample grid, or another
    size with the same tiles, does not."""
    first, second = torch.rand(5, 3, 32, 32), torch.rand(5, 3, 32, 32)
    nudged = first.clone()
    nudged.view(-1)[1] += 1.0  # 15,360 values, the signature samples every 15th
    values = torch.stack([first, second, first.clone(), nudged, first.clone()])
    sizes = torch.tensor([[64, 96], [64, 96], [64, 96], [64, 96], [96, 64]])
    firsts, image_of = distinct_images({"pixel_values": values, "image_sizes": sizes})
    assert (firsts, image_of) == ([0, 1, 3, 4], [0, 1, 0, 2, 3])
    as_list = distinct_images({"pixel_values": list(values), "image_sizes": sizes})
    assert as_list == (firsts, image_of)
    taken = take_images({"pixel_values": values, "image_sizes": sizes}, firsts)
    assert torch.equal(taken["pixel_values"], values[[0, 1, 3, 4]]) and taken["image_sizes"].tolist() == sizes[[0, 1, 3, 4]].tolist()


def test_the_same_question_keeps_the_same_tokens_in_job_serve_and_evaluate(vlm, tmp_path):
    """The job's vision actor (from a decoded batch with a prompt column), the endpoint (the
    question as an OpenAI request carries it, through the vision replica's call) and the testbed
    evaluation (``encode_questions``) keep one set of tokens for one question."""
    from pipeline.batch.stages import VisionStage, decode_batch
    from pipeline.serve.deployments import HiredVision

    image = random_image(480, 640, seed=7)
    drop = DropConfig(method="hired-cdpp", budget=0.2)
    path = tmp_path / "scene.png"
    image.save(path)

    config = HiredProcessorConfig(model=ModelConfig(name=TINY_MODEL, dtype="float32", transfer_dtype="float32"), drop=drop)
    table = pa.table({"image": [str(path)] * len(QUESTIONS), "prompt": QUESTIONS})
    stage = VisionStage(config, threads=1)
    out = stage(decode_batch(table, load_image_processor(TINY_MODEL), config))
    job = [list(zip(out["enc_partition"][i].tolist(), out["enc_patch"][i].tolist())) for i in range(len(QUESTIONS))]

    serve_config = ServeConfig(model=ModelConfig(name=TINY_MODEL, dtype="float32", transfer_dtype="float32"))
    replica = HiredVision.func_or_class.__new__(HiredVision.func_or_class)
    replica.vlm = vlm
    bodies = [
        {"model": serve_config.served_model_name, "hired": {"method": "hired-cdpp", "budget": 0.2},
         "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}},
                                                   {"type": "text", "text": q}]}]}
        for q in QUESTIONS
    ]
    parsed = [ChatCompletionRequest.parse(b).to_chat(serve_config, vlm.geometry.max_tokens) for b in bodies]
    instructions = [p.instructions[0] for p in parsed]
    assert instructions == QUESTIONS
    rows = replica._encode_groups([image] * len(QUESTIONS), {parsed[0].drop: list(range(len(QUESTIONS)))}, instructions)
    serve = [list(zip(r["enc_partition"].tolist(), r["enc_patch"].tolist())) for r in rows]

    evaluate = [tokens(e) for e in vlm.encode_questions(image, QUESTIONS, drop)]
    assert job == serve == evaluate
    assert len({tuple(t) for t in job}) == len(QUESTIONS)


def test_a_request_image_takes_the_text_of_its_own_turn():
    config = ServeConfig(model=ModelConfig(name=TINY_MODEL))
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    body = {
        "model": config.served_model_name,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [image, {"type": "text", "text": "What is on the left?"}]},
            {"role": "assistant", "content": "A car."},
            {"role": "user", "content": [image]},
            {"role": "user", "content": "And its colour?"},
        ],
    }
    parsed = ChatCompletionRequest.parse(body).to_chat(config, 2880)
    # the system text joins the first user turn's, as the chat template gets it; an image sent
    # without text is asked about by the last user turn
    assert parsed.instructions == ("Be brief.\nWhat is on the left?", "And its colour?")
