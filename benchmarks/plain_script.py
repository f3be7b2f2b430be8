"""What a user would run instead of ``hired caption``: the stock processor and ``model.generate``
over a folder, every visual token kept, batches of images, nothing else.

    python benchmarks/plain_script.py FOLDER --model DIR [--batch-size 4] [--max-new-tokens 32]
        [--dtype float32|bfloat16|auto]

Prints one JSON line: images, load_s (imports excluded, model + processor load), run_s. The
dtype defaults to what ``from_pretrained`` gives (the checkpoint's, fp32 for the bench model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

PROMPT = "Describe the image in one sentence."  # the job's default prompt
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "auto": "auto"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="auto")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=DTYPES[args.dtype]).eval()
    load_s = time.perf_counter() - start
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    paths = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    start = time.perf_counter()
    answers = 0
    for i in range(0, len(paths), args.batch_size):
        images = [Image.open(p).convert("RGB") for p in paths[i : i + args.batch_size]]
        inputs = processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
        with torch.inference_mode():
            output = model.generate(
                **inputs.to(model.dtype), max_new_tokens=args.max_new_tokens, do_sample=False
            )
        answers += len(processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    run_s = time.perf_counter() - start
    json.dump({"images": answers, "load_s": load_s, "run_s": run_s, "dtype": str(model.dtype)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
