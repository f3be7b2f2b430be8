"""Static KV cache and torch.compile on the fixed-length batches this project makes (issue 17).

    python benchmarks/generation_paths.py [--model bench|7b] [--batch-size 4] [--length 620]
        [--max-new-tokens 32] [--skip-compile] [--json OUT]

At the job's dtype ("auto") and torch's thread count, after one warm-up call each:
* LLM: ``generate`` from ``inputs_embeds`` of ``(batch, length)`` (620 ~ a 20% budget of
  LLaVA-NeXT plus the prompt), every row forced to ``max_new_tokens``: the dynamic cache,
  ``cache_implementation="static"``, and static + ``torch.compile`` of the model's forward;
* tower: the layers LLaVA reads over 5 tiles, eager against each layer compiled.
Compile time (the first compiled call) is reported apart from the steady-state times.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hired_ops import vision_tower
from hired_ops.vision import VisionGeometry, run_tower
from pipeline.model.loading import cpu_flags, load_model


def timed(run: Callable[[], object], repeats: int = 2) -> float:
    """Seconds per call after a warm-up call."""
    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def first_call(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def llm_paths(model, args) -> dict:
    device = next(model.parameters()).device
    width = model.config.text_config.hidden_size
    embeds = torch.randn(args.batch_size, args.length, width, dtype=model.dtype, device=device) * 0.02
    mask = torch.ones(args.batch_size, args.length, dtype=torch.long, device=device)

    def generate(**extra) -> Callable[[], object]:
        def run():
            with torch.inference_mode():
                return model.generate(
                    inputs_embeds=embeds, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                    min_new_tokens=args.max_new_tokens, do_sample=False, **extra,
                )

        return run

    out = {"dynamic_s": timed(generate()), "static_s": timed(generate(cache_implementation="static"))}
    if not args.skip_compile:
        model.forward = torch.compile(model.forward)
        out["static_compile_first_call_s"] = first_call(generate(cache_implementation="static"))
        out["static_compiled_s"] = timed(generate(cache_implementation="static"))
    return out


def tower_paths(model, args) -> dict:
    tower = vision_tower(model)
    layers = VisionGeometry.from_model(model).layers_to_run
    device = next(tower.parameters()).device
    tiles = torch.randn(5, 3, 336, 336, dtype=model.dtype, device=device)
    with torch.inference_mode():
        out = {"eager_s": timed(lambda: run_tower(tower, tiles, layers))}
        if not args.skip_compile:
            for index, layer in enumerate(tower.encoder.layers):
                tower.encoder.layers[index] = torch.compile(layer)
            out["compile_first_call_s"] = first_call(lambda: run_tower(tower, tiles, layers))
            out["compiled_s"] = timed(lambda: run_tower(tower, tiles, layers))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "bench", "7b"], default="bench")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=620)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    model, _ = load_model(f"hired/{args.model}-llava-next")
    result = {
        "flags": sorted(cpu_flags() & {"avx2", "avx512_bf16", "amx_bf16"}),
        "dtype": str(model.dtype),
        "threads": torch.get_num_threads(),
        "load_before": os.getloadavg(),
    }
    result["llm"] = llm_paths(model, args)
    print(json.dumps(result), flush=True)
    result["tower_5_tiles"] = tower_paths(model, args)
    result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
