"""HiRED as one step of a Ray Data pipeline: read_images -> processor -> filter -> write_parquet.

    python examples/processor_pipeline.py [--images samples/images] [--output outputs/processed]
        [--model hired/testbed-llava-next]

The images' own columns (here ``path``) come through; each row gains ``generated_text`` and the
accounting columns. Rows whose answer is short are filtered out before writing, as a user's
quality filter would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ray

from pipeline.batch.config import HiredProcessorConfig
from pipeline.batch.processor import build_processor
from pipeline.model.config import ModelConfig
from pipeline.model.generation import GenerateOptions

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=str(REPO / "samples" / "images"))
    parser.add_argument("--output", default="outputs/processed")
    parser.add_argument("--model", default=ModelConfig().name)
    parser.add_argument("--min-words", type=int, default=3)
    args = parser.parse_args()

    config = HiredProcessorConfig(model=ModelConfig(name=args.model), generate=GenerateOptions(max_new_tokens=24))
    processor = build_processor(
        config,
        preprocess=lambda row: {**row, "prompt": "Describe the image in one sentence."},
        postprocess=lambda row: {**row, "words": len((row["generated_text"] or "").split())},
    )
    images = ray.data.read_images(args.images, include_paths=True, mode="RGB")
    answered = processor(images).filter(lambda row: row["error"] is None and row["words"] >= args.min_words)
    answered.write_parquet(args.output)
    for row in ray.data.read_parquet(args.output).take(3):
        print(f"{Path(row['path']).name}: {row['generated_text']} ({row['visual_tokens']} visual tokens)")


if __name__ == "__main__":
    main()
