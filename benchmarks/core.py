"""Core benchmark (issue 2): the vision tower with CLS capture vs stock, and the LLM prefill /
time-to-first-token at HiRED-20% vs full, on the bench-size model, in one process.

    python benchmarks/core.py [--repeats 3] [--images 2] [--json OUT]

What each timer covers:
* tower: pixel tensors already made -> vision features. "stock" is the tower as LLaVA calls it
  (every layer, ``output_hidden_states=True``); "ours" is the truncated loop with CLS hooks at
  l_init and l_final; "ours, no hooks" isolates the hook cost.
* prefill / TTFT: kept features already made -> first generated token: projector, prompt
  assembly, the batched LLM prefill and the first sampling step (``HiredVLM.generate`` with one
  new token). The vision tower is excluded so the ratio is the LLM's alone.

FLOPs, for orientation: a ~100M-parameter LLM costs about 2 x 1e8 FLOPs per token, so the full
prefill (~2900 tokens) is ~0.6 TFLOP and the 20% one (~600 tokens) ~0.12 TFLOP, plus attention,
which grows with the square of the length. The expected ratio is therefore >= 4.8x from the
linear layers alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from hired_ops import DropConfig, capture_cls_attention, run_tower, vision_tower
from pipeline.data.synthetic import random_image
from pipeline.model.builtin import build_model
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median times of several variants measured in alternation, so drift hits all alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=2, help="images in the LLM batch")
    parser.add_argument("--size", default="bench", choices=["tiny", "bench"])
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, processor = build_model("llava-next", args.size)
    tower = vision_tower(model)
    layers = tower.encoder.layers
    vlm = HiredVLM(model, processor, DropConfig(budget=0.2))
    geometry = vlm.geometry
    image = random_image(672, 672)
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]  # (5, 3, 336, 336)
    l_final = geometry.default_l_final

    def stock() -> None:
        with torch.inference_mode():
            tower(pixels, output_hidden_states=True)

    def ours() -> None:
        with torch.inference_mode():
            run_tower(tower, pixels, geometry.layers_to_run, (0, l_final))

    def ours_no_hooks() -> None:
        with torch.inference_mode():
            run_tower(tower, pixels, geometry.layers_to_run, ())

    def stock_with_hooks() -> None:
        with torch.inference_mode(), capture_cls_attention(layers, (0, l_final)):
            tower(pixels, output_hidden_states=True)

    tower_times = interleaved(
        {"stock": stock, "stock+hooks": stock_with_hooks, "ours": ours, "ours-no-hooks": ours_no_hooks}, args.repeats
    )

    def bf16(fn: Callable[[], None]) -> Callable[[], None]:
        def wrapped() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                fn()

        return wrapped

    bf16_time = median_time(bf16(ours), args.repeats)

    images = [random_image(672, 672, seed=i) for i in range(args.images)]
    prompts = ["Describe the image in detail."] * args.images
    one_token = GenerateOptions(max_new_tokens=1)
    prefill = {}
    lengths = {}
    for name, drop in (("full", DropConfig(method="full")), ("hired-20%", DropConfig(budget=0.2))):
        encoded = vlm.encode(images, drop)
        lengths[name] = encoded[0].sequence_length
        prefill[name] = median_time(lambda: vlm.generate(encoded, prompts, one_token), args.repeats)

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": f"{args.size}-llava-next",
        "tower_s_per_image": tower_times,
        "tower_bf16_autocast_s_per_image": bf16_time,
        "hook_overhead_on_stock": tower_times["stock+hooks"] / tower_times["stock"] - 1,
        "hook_overhead_on_truncated": tower_times["ours"] / tower_times["ours-no-hooks"] - 1,
        "ours_vs_stock": tower_times["ours"] / tower_times["stock"],
        "visual_tokens": lengths,
        "prefill_ttft_s": prefill,
        "prefill_speedup": prefill["full"] / prefill["hired-20%"],
    }
    print(f"machine: {result['machine']}; model: {result['model']}; repeats: {args.repeats}")
    print("vision tower, one 672x672 image (5 partitions), seconds (median):")
    for name, value in tower_times.items():
        print(f"  {name:<14} {value:8.3f}")
    print(f"  ours, bf16 autocast {bf16_time:8.3f}")
    print(f"hook overhead on the stock tower:   {result['hook_overhead_on_stock']:+.2%}")
    print(f"hook overhead on the truncated run: {result['hook_overhead_on_truncated']:+.2%}")
    print(f"ours (hooks, last layer skipped) / stock: {result['ours_vs_stock']:.3f}")
    print(f"LLM prefill + first token, batch of {args.images}:")
    for name, value in prefill.items():
        print(f"  {name:<10} {lengths[name]:5d} visual tokens  {value:8.3f} s")
    print(f"prefill/TTFT speed-up, HiRED-20% vs full: {result['prefill_speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
