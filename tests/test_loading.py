"""Models load the ordinary transformers way; a missing one fails with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hired_ops import DropConfig
from pipeline.data.synthetic import random_image
from pipeline.model.builtin import build_model, parse_builtin
from pipeline.model.config import ModelConfig
from pipeline.model.generation import GenerateOptions
from pipeline.model.loading import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    load_image_processor,
    load_model,
)
from pipeline.model.vlm import HiredVLM


def test_saved_model_loads_with_from_pretrained_and_answers_the_same(tiny_next, tiny_next_dir):
    model, processor = tiny_next
    loaded, loaded_processor = load_model(str(tiny_next_dir), dtype="float32")
    assert type(loaded) is type(model)
    image = random_image(500, 800)
    options = GenerateOptions(max_new_tokens=6)
    ours = HiredVLM(model, processor, DropConfig(budget=0.2)).run([image], "Describe.", options)[0]
    theirs = HiredVLM(loaded, loaded_processor, DropConfig(budget=0.2)).run([image], "Describe.", options)[0]
    assert ours.text == theirs.text


def test_default_model_is_the_shipped_testbed(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the weights are in the repository: nothing to download
    assert DEFAULT_MODEL == ModelConfig().name == "hired/testbed-llava-next"
    model, processor = load_model(dtype="float32")
    assert model.config.vision_config.image_size == 64 and processor.image_processor.size == {"shortest_edge": 64}
    assert load_image_processor().image_grid_pinpoints == model.config.image_grid_pinpoints


def test_auto_dtype_follows_the_checkpoint(tmp_path):
    from pipeline.model.builtin import save_model
    from pipeline.model.loading import pick_dtype

    testbed, _ = load_model(device="cpu")  # saved in fp32: kept in fp32 however fast bf16 would be
    assert testbed.dtype == torch.float32
    half = save_model(tmp_path / "bf16", "llava-next", "tiny", dtype=torch.bfloat16)
    model, _ = load_model(str(half), device="cpu")
    assert model.dtype == pick_dtype(torch.device("cpu"))  # the device's fast path: bf16 where native


def test_factory_is_deterministic_from_seed():
    a, _ = build_model("llava", "tiny", seed=3)
    b, _ = build_model("llava", "tiny", seed=3)
    c, _ = build_model("llava", "tiny", seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("name", ["/no/such/checkpoint", "llava-hf/llava-v1.6-mistral-7b-hf"])
def test_missing_checkpoint_fails_with_a_clear_message(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="cannot load model"):
        load_model(name)


def test_unknown_builtin_lists_the_choices():
    with pytest.raises(ValueError, match="hired/tiny-llava-next"):
        parse_builtin("hired/huge-llava")


@pytest.mark.parametrize("kind", ["llava-next", "llava"])
def test_split_halves_answer_like_the_whole_model(kind):
    whole = HiredVLM(*build_model(kind, "tiny"), DropConfig(budget=0.2))
    name = f"hired/tiny-{kind}"
    vision = HiredVLM.from_pretrained(name, DropConfig(budget=0.2), device="cpu", dtype="float32", half="vision")
    language = HiredVLM.from_pretrained(name, DropConfig(budget=0.2), device="cpu", dtype="float32", half="language")
    assert vision.model.model.language_model is None and language.model.model.vision_tower is None
    images = [random_image(500, 800), random_image(700, 300, seed=1)]
    split = language.generate(vision.encode(images), ["Describe.", "What is it?"])
    assert [g.text for g in split] == [r.text for r in whole.run(images, ["Describe.", "What is it?"])]


def test_caption_with_a_missing_model_exits_2_with_the_reason_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    from jobs.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = ray.is_initialized()
    samples = str(Path(__file__).resolve().parents[1] / "samples" / "images")
    code = main(["caption", samples, "--output", str(tmp_path / "out"), "--model", "/no/such/model", "--no-tracking"])
    assert code == 2
    assert "/no/such/model" in capsys.readouterr().err
    assert ray.is_initialized() == started
