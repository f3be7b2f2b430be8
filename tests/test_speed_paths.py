"""The speed paths of issue 17: how pools share a CPU-only machine, which dtype "auto" picks, uint8
tiles between decode and the tower, and bf16 answering like fp32."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from hired_ops import DropConfig, vision_tower
from hired_ops.vision import run_tower
from pipeline.batch.config import DEFAULT_POOL_CPUS, JobConfig, PoolConfig
from pipeline.batch.resources import ClusterShape, plan_resources
from pipeline.data.synthetic import random_image
from pipeline.model.config import ModelConfig
from pipeline.model.generation import GenerateOptions
from pipeline.model.loading import cpu_flags, pick_dtype
from pipeline.model.pixels import PixelNormaliser, uint8_tiles
from pipeline.model.vlm import HiredVLM

# (height, width): landscape, portrait, square, panorama, one tile
SIZES = [(480, 640), (1000, 600), (672, 672), (300, 1000), (336, 336)]


def job(**overrides) -> JobConfig:
    return JobConfig(input="in", output="out", **overrides)


# -- resources over cluster shapes ---------------------------------------------------------------


@pytest.mark.parametrize("cpus", [2, 4, 16, 64])
def test_cpu_only_node_gives_the_tower_every_core_and_fits_one_of_each_stage(cpus):
    plan = plan_resources(job(), ClusterShape(nodes=1, node_cpus=cpus))
    assert plan.vision.threads == cpus
    assert plan.llm.threads == max(1, cpus // 2)
    assert plan.vision.num_gpus == plan.llm.num_gpus == 0
    # a vision actor, an LLM actor and a decode task are schedulable together (no deadlock)
    assert plan.vision.num_cpus + plan.llm.num_cpus + plan.decode_cpus <= cpus
    assert plan.vision.num_cpus > plan.llm.num_cpus > 0 and 0 < plan.decode_cpus <= 1


def test_the_two_core_deadlock_shape_fits():
    plan = plan_resources(job(), ClusterShape(nodes=1, node_cpus=2))
    assert (plan.vision.num_cpus, plan.llm.num_cpus, plan.decode_cpus) == (1.0, 0.5, 0.5)
    assert (plan.vision.threads, plan.llm.threads) == (2, 1)


def test_actors_of_one_pool_on_one_node_split_its_cores():
    plan = plan_resources(job(vision=PoolConfig(size=2), llm=PoolConfig(size=2)), ClusterShape(nodes=1, node_cpus=16))
    assert (plan.vision.threads, plan.llm.threads) == (8, 4)
    assert 2 * plan.vision.num_cpus + 2 * plan.llm.num_cpus + plan.decode_cpus <= 16


def test_a_pool_spread_over_nodes_gets_a_node_each():
    plan = plan_resources(job(vision=PoolConfig(size=4)), ClusterShape(nodes=4, node_cpus=8))
    assert plan.vision.threads == 8 and plan.vision.num_cpus == 4.0


def test_gpu_cluster_keeps_the_pool_defaults():
    plan = plan_resources(job(), ClusterShape(nodes=2, node_cpus=16, gpus=8))
    assert plan.vision.num_gpus == plan.llm.num_gpus == 0.5
    assert plan.vision.num_cpus == plan.llm.num_cpus == DEFAULT_POOL_CPUS
    assert plan.vision.threads == plan.llm.threads == 1
    assert plan.decode_cpus == 1.0


def test_cuda_device_without_ray_gpus_keeps_the_defaults():
    plan = plan_resources(job(model=ModelConfig(device="cuda")), ClusterShape(nodes=1, node_cpus=8))
    assert plan.vision.num_cpus == DEFAULT_POOL_CPUS and plan.vision.threads == 1


def test_explicit_user_settings_win():
    config = job(vision=PoolConfig(num_cpus=3), llm=PoolConfig(num_cpus=1, num_gpus=0))
    plan = plan_resources(config, ClusterShape(nodes=1, node_cpus=16))
    assert (plan.vision.num_cpus, plan.vision.threads) == (3, 3)
    assert (plan.llm.num_cpus, plan.llm.threads) == (1, 1)
    threads = plan_resources(job(model=ModelConfig(torch_threads=5)), ClusterShape(nodes=1, node_cpus=16))
    assert threads.vision.threads == threads.llm.threads == 5
    assert threads.vision.num_cpus == 8.0  # the reservation is still the automatic one
    on_cpu = plan_resources(job(vision=PoolConfig(num_gpus=0), llm=PoolConfig(num_gpus=0)), ClusterShape(1, 8, gpus=2))
    assert on_cpu.vision.threads == 8 and on_cpu.vision.num_gpus == 0


def test_pool_config_rejects_negative_cpus():
    with pytest.raises(ValueError, match="num_cpus"):
        PoolConfig(num_cpus=-1)


# -- dtype auto ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx2", "amx_bf16", "avx512_bf16"}, torch.bfloat16),  # Intel Sapphire Rapids and later
        ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),  # AMD Zen 4: native bf16 dot products
        ({"avx2", "fma"}, torch.float32),  # AVX2 only: bf16 emulated, 6x slower
        (set(), torch.float32),
    ],
)
def test_auto_dtype_on_the_cpu_follows_the_flags(flags, expected):
    assert pick_dtype(torch.device("cpu"), "auto", frozenset(flags)) == expected
    assert pick_dtype(torch.device("cpu"), None, frozenset(flags)) == expected
    assert pick_dtype(torch.device("cpu"), "float32", frozenset(flags)) == torch.float32


@pytest.mark.parametrize("flags", [{"avx2", "avx512_bf16"}, {"avx2"}])
def test_auto_dtype_keeps_an_fp32_checkpoint_in_fp32(flags):
    cpu = torch.device("cpu")
    assert pick_dtype(cpu, "auto", frozenset(flags), saved=torch.float32) == torch.float32
    # a half-precision checkpoint (as LLaVA-NeXT releases are saved) still takes the device's fast path
    for saved in (torch.bfloat16, torch.float16, None):
        assert pick_dtype(cpu, "auto", frozenset(flags), saved=saved) == pick_dtype(cpu, "auto", frozenset(flags))
    assert pick_dtype(cpu, "bfloat16", frozenset(flags), saved=torch.float32) == torch.bfloat16


def test_cpu_flags_reads_the_kernel_list(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nflags\t: other\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


# -- uint8 tiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_next", "tiny_llava"])
def test_uint8_tiles_normalised_equal_the_stock_processor_output(request, fixture):
    _, processor = request.getfixturevalue(fixture)
    image_processor = processor.image_processor
    normalise = PixelNormaliser.from_processor(image_processor)
    for height, width in SIZES:
        image = random_image(height, width, seed=height * width)
        stock = np.asarray(image_processor(images=[image], return_tensors="np")["pixel_values"][0])
        stock = stock if stock.ndim == 4 else stock[None]
        tiles = uint8_tiles(image_processor, image)
        assert tiles.dtype == np.uint8 and tiles.shape == stock.shape
        assert tiles.nbytes * 4 == stock.astype(np.float32).nbytes
        ours = normalise(torch.from_numpy(tiles), torch.device("cpu"), torch.float32)
        torch.testing.assert_close(ours, torch.from_numpy(stock.astype(np.float32)), rtol=1e-5, atol=1e-5)


def test_encode_from_uint8_tiles_equals_encode_from_images(tiny_next):
    model, processor = tiny_next
    vlm = HiredVLM(model, processor, DropConfig(budget=0.2), transfer_dtype="float32")
    images = [random_image(h, w, seed=h + w) for h, w in SIZES[:3]]
    tiles = [torch.from_numpy(uint8_tiles(processor.image_processor, image)) for image in images]
    sizes = torch.tensor([[image.height, image.width] for image in images])
    ours = vlm.encode({"pixel_values": tiles, "image_sizes": sizes})
    for expected, got in zip(vlm.encode(images), ours):
        np.testing.assert_array_equal(got.patch, expected.patch)
        np.testing.assert_array_equal(got.partition, expected.partition)
        np.testing.assert_allclose(got.features, expected.features, rtol=1e-4, atol=1e-5)


# -- bf16 answers like fp32 --------------------------------------------------------------------------


def _cls_scores(vlm: HiredVLM, image) -> torch.Tensor:
    """``(P, N)`` float32 CLS attention at the layer HiRED selects by (the tower's last run layer)."""
    tower = vision_tower(vlm.model)
    pixels = vlm.tower_input(torch.from_numpy(uint8_tiles(vlm.processor.image_processor, image)))
    layer = vlm.geometry.default_l_final % len(tower.encoder.layers)
    with torch.inference_mode():
        _, capture = run_tower(tower, pixels, vlm.geometry.layers_to_run, (layer,))
    return capture.summed(layer).float()


def _near_cut(scores: torch.Tensor, candidates: torch.Tensor, budget: int, tolerance: float) -> set[int]:
    """Candidates whose score is within ``tolerance`` of the ``budget``-th best candidate's: ties
    at this precision."""
    cut = scores[candidates].sort(descending=True).values[budget - 1]
    return set(torch.nonzero(candidates & ((scores - cut).abs() <= tolerance)).flatten().tolist())


def _kept(encoded, partition: int) -> set[int]:
    return set(encoded.patch[encoded.partition == partition].tolist())


def test_bf16_keeps_the_same_tokens_as_fp32_where_the_scores_are_not_tied(tiny_next):
    model, processor = tiny_next
    fp32 = HiredVLM(model, processor, DropConfig(budget=0.2), transfer_dtype="float32")
    bf16 = HiredVLM(copy.deepcopy(model).to(torch.bfloat16), processor, DropConfig(budget=0.2), transfer_dtype="float32")
    untied = 0
    for height, width in SIZES:
        image = random_image(height, width, seed=3 * height + width)
        want, got = fp32.encode([image])[0], bf16.encode([image])[0]
        np.testing.assert_array_equal(got.budgets, want.budgets)
        scores32, scores16 = _cls_scores(fp32, image), _cls_scores(bf16, image)
        candidates = fp32.geometry.layout((height, width)).candidate_mask()
        for part, budget in enumerate(want.budgets.tolist()):
            tolerance = 2 * float((scores32[part] - scores16[part]).abs().max())
            tied = _near_cut(scores32[part], candidates[part], budget, tolerance)
            assert _kept(want, part) ^ _kept(got, part) <= tied, (height, width, part)
            untied += budget - len(tied & _kept(want, part))
    kept = sum(fp32.encode([random_image(h, w, seed=3 * h + w)])[0].num_tokens for h, w in SIZES)
    assert untied > 0.9 * kept, "almost every kept patch is a near-tie: the comparison could not fail"


def test_bf16_answers_like_fp32_where_the_logits_are_not_tied(tiny_next):
    model, processor = tiny_next
    fp32 = HiredVLM(model, processor, DropConfig(budget=0.2), transfer_dtype="float32")
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    prompts = ["Describe the image.", "What is in the picture?"]
    compared = 0
    for height, width in SIZES:
        encoded = fp32.encode([random_image(height, width, seed=height + 2 * width)])
        for prompt in prompts:
            answer = fp32.generate(encoded, [prompt], GenerateOptions(max_new_tokens=6))[0]
            embeds, mask = fp32.build_inputs(encoded, [prompt])
            ids = processor.tokenizer(answer.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            # teacher-forced over the fp32 answer: each step's choice, in both precisions
            full = torch.cat([embeds, model.get_input_embeddings()(ids)], dim=1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
            with torch.inference_mode():
                logits32 = model(inputs_embeds=full, attention_mask=mask).logits[0, embeds.shape[1] - 1 :].float()
                logits16 = bf16_model(inputs_embeds=full.bfloat16(), attention_mask=mask).logits[0, embeds.shape[1] - 1 :].float()
            tolerance = 2 * (logits32 - logits16).abs().amax(-1)
            top2 = logits32.topk(2, dim=-1).values
            clear = (top2[:, 0] - top2[:, 1]) > tolerance
            assert torch.equal(logits32.argmax(-1)[clear], logits16.argmax(-1)[clear]), (height, width, prompt)
            compared += int(clear.sum())
    assert compared >= len(SIZES) * len(prompts), "too few clear choices: the comparison could not fail"


def test_a_processor_leaves_a_cpu_for_the_users_own_stages():
    """On a 2-CPU node the job's stages reserve the whole node, so a user's 1-CPU read, map or
    write next to a processor would wait forever; the processor leaves one CPU, threads unchanged."""
    alone = plan_resources(job(), ClusterShape(nodes=1, node_cpus=2))
    shared = plan_resources(job(), ClusterShape(nodes=1, node_cpus=2), spare_cpus=1.0)
    assert alone.vision.num_cpus + alone.llm.num_cpus + alone.decode_cpus == 2
    assert shared.vision.num_cpus + shared.llm.num_cpus + shared.decode_cpus == 1
    assert (shared.vision.threads, shared.llm.threads) == (alone.vision.threads, alone.llm.threads)
