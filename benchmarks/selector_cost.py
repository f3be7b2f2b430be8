"""Selector cost (issue 14): time per image of each allocation + selection at a 20% budget,
against the vision tower that produced its inputs, on the bench-size LLaVA-NeXT.

    python benchmarks/selector_cost.py [--repeats 3] [--budget 0.2] [--json OUT]

The tower runs once on one 640x480 image (the truncated loop with CLS hooks at l_init and
l_final and the l_final keys kept, as ``encode_and_drop`` runs it when every input is needed);
that run is the tower's time. Each method then runs ``drop_tokens`` on the captured features,
attention rows and keys, on the CPU (an instruction-aware selection also scores relevance to
QUESTION: the candidates through the projector against the question's embedding rows); its time
is the median of ``--repeats`` runs after one warm-up. The ratio is selection time over tower
time: what a method adds to the vision stage.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from hired_ops import DropConfig, TowerOutput, VisionGeometry, drop_tokens, run_tower, vision_tower
from pipeline.data.synthetic import random_image
from pipeline.model.builtin import build_model

# every preset that spends a budget, plus the new selectors under the other split, so that
# per-partition and global costs show side by side
METHODS = (
    "hired",
    "spatial",
    "random",
    "visionzip",
    "global+visionzip",
    "divprune",
    "even+divprune",
    "scope",
    "even+coverage",
    "hired-cdpp",
    "cdpruner",
)
# the instruction the instruction-aware selections read (cdpp): a typical VQA question
QUESTION = "What colour is the car parked on the left of the street?"


def time_call(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.2, help="fraction of the model's maximum tokens")
    parser.add_argument("--size", default="bench", choices=["tiny", "bench"])
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()

    torch.manual_seed(0)
    model, processor = build_model("llava-next", args.size)
    geometry = VisionGeometry.from_model(model)
    tower = vision_tower(model)
    inputs = processor.image_processor(images=[random_image(480, 640)], return_tensors="pt")
    layout = geometry.layout(tuple(int(v) for v in inputs["image_sizes"][0]))
    pixels = inputs["pixel_values"][0][: layout.num_partitions]  # (P, 3, 336, 336)
    l_final = geometry.default_l_final

    start = time.perf_counter()
    with torch.inference_mode():
        features, capture = run_tower(tower, pixels, geometry.layers_to_run, (0, l_final), (l_final,))
    tower_s = time.perf_counter() - start
    init_scores, final_scores = capture.summed(0)[0], capture.summed(l_final)
    final_keys = capture.keys[l_final]
    output = TowerOutput(layout, features, init_scores, final_scores, final_keys)
    question = torch.tensor(processor.tokenizer(QUESTION, add_special_tokens=False)["input_ids"])

    rows = []
    for method in METHODS:
        config = DropConfig(method=method, budget=args.budget)

        def select(config: DropConfig = config):
            with torch.inference_mode():
                return drop_tokens(model, output, config, geometry, question)

        kept = select()
        seconds = time_call(select, args.repeats)
        rows.append(
            {
                "method": method,
                "allocation": config.allocation,
                "selection": config.selection,
                "tokens": kept.num_tokens,
                "budgets": kept.budgets.tolist(),
                "seconds": seconds,
                "ratio_to_tower": seconds / tower_s,
            }
        )

    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": f"{args.size}-llava-next",
        "image": "640x480",
        "partitions": layout.num_partitions,
        "candidates": int(layout.available().sum()),
        "budget": args.budget,
        "tower_s": tower_s,
        "selections": rows,
    }
    print(
        f"machine: {result['machine']}; model: {result['model']}; image 640x480, {layout.num_partitions} partitions, "
        f"{result['candidates']} candidate tokens; budget {args.budget:g}; repeats {args.repeats}"
    )
    print(f"vision tower (with CLS hooks and keys): {tower_s:.3f} s")
    print("| method | allocation + selection | tokens | per partition | ms / image | % of tower |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['method']} | {row['allocation']}+{row['selection']} | {row['tokens']} | {row['budgets']} "
            f"| {row['seconds'] * 1e3:.2f} | {row['ratio_to_tower']:.3%} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
