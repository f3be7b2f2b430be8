"""The dataset job's LLM stage on answers of mixed length (issue 25): images/s of
``LLMStage.__call__`` in process, no Ray, so that only the stage's scheduling differs.

    python benchmarks/llm_stage.py [--rows 32] [--rows-per-call 8] [--max-num-seqs 8] [--json OUT]

Rows are the bundled held-out scenes (``samples/eval``) of the default model (the testbed trained
here, which ends its answers by itself), alternating a short question from ``vqa.jsonl`` (answers
of one or two tokens) with a request for a detailed description (tens of tokens), so captions end
at very different steps. The decode and vision stages run first, untimed; then the rows go to the
LLM stage in calls of ``--rows-per-call`` rows, as Ray Data would hand an actor its batches.

Before continuous batching the stage ran each length group of a call to completion (a call of 8
rows holds 8 rows until its longest answer ends); with it, a call keeps at most
``--max-num-seqs`` rows decoding and admits the next row as one ends. Run the code before it
with ``PYTHONPATH`` pointing at a checkout of that code (``--max-num-seqs`` is ignored there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.batch.config import JobConfig
from pipeline.batch.stages import LLMStage, VisionStage, decode_batch
from pipeline.model.config import ModelConfig
from pipeline.model.generation import GenerateOptions

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "eval"
DESCRIBE = "Describe the image in detail: every object, its colour, shape and position."


def rows(count: int) -> dict[str, np.ndarray]:
    """``count`` input rows: (id, path, prompt), a short question and a long description in turn."""
    entries = [json.loads(line) for line in (SAMPLES / "vqa.jsonl").read_text().splitlines()]
    ids, paths, prompts = [], [], []
    for n in range(count):
        entry = entries[n // 2 % len(entries)]
        ids.append(f"row-{n}")
        paths.append(str(SAMPLES / entry["image"]))
        prompts.append(entry["question"] if n % 2 == 0 else DESCRIBE)
    return {"id": np.array(ids, dtype=object), "path": np.array(paths, dtype=object), "prompt": np.array(prompts, dtype=object)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hired/testbed-llava-next")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--rows-per-call", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    engine = {"max_num_seqs": args.max_num_seqs} if "max_num_seqs" in {f.name for f in dataclasses.fields(JobConfig)} else {}
    config = JobConfig(
        input="unused", output="unused", model=ModelConfig(name=args.model, dtype="float32"),
        generate=GenerateOptions(max_new_tokens=args.max_new_tokens), **engine,
    )
    vision = VisionStage(config, args.threads)
    batch = decode_batch(rows(args.rows), vision.vlm.processor.image_processor, config.decode, None)
    batch = vision(batch)
    llm = LLMStage(config, args.threads)
    llm({k: v[:2] for k, v in batch.items()})  # warm-up
    outputs = []
    start = time.perf_counter()
    for first in range(0, args.rows, args.rows_per_call):
        outputs.append(llm({k: v[first : first + args.rows_per_call] for k, v in batch.items()}))
    seconds = time.perf_counter() - start
    generated = np.concatenate([o["generated_tokens"] for o in outputs])
    errors = [e for o in outputs for e in o["error"] if e]
    result = {
        "code": f"continuous batching, max_num_seqs {args.max_num_seqs}" if engine else "length groups run to completion",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "rows": args.rows,
        "rows_per_call": args.rows_per_call,
        "seconds": seconds,
        "images_per_s": args.rows / seconds,
        "generated_tokens": {"total": int(generated.sum()), "min": int(generated.min()), "max": int(generated.max())},
        "errors": errors,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
