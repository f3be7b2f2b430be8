"""Instruction-aware selection where there is no real question (issue 23): the caption job's
fixed prompt, HiRED against ``hired-cdpp`` at the same budgets, scored by object recall.

    python benchmarks/caption_recall.py [--scenes 60] [--methods hired,hired-cdpp] [--budgets 0.1,0.2]
        [--threads 2] [--model hired/testbed-llava-next] [--split heldout]

Captions the dense held-out scenes of the testbed (the images of ``outputs/eval/dense``,
regenerated from their seeds, so each scene's object list is known), or with ``--split check``
the check set's (``pipeline.testbed.make_eval_set``), to judge a training run on, with the
caption job's defaults: its prompt ("Describe the image in one sentence.") and generation
options. Object recall of one caption is the share of the scene's objects it names by label
("red circle", "character 7"; :func:`pipeline.testbed.questions.named_objects`). Each setting
reports the mean over scenes with a 95% bootstrap interval over scenes, and its paired
difference from the first method at the same budget.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hired_ops import DropConfig
from pipeline.experiments.intervals import draw_groups, percentile_interval
from pipeline.experiments.settings import sweep
from pipeline.model.generation import DEFAULT_PROMPT, GenerateOptions
from pipeline.model.vlm import HiredVLM
from pipeline.testbed.make_eval_set import EVAL_SEED, SPLITS, eval_scene
from pipeline.testbed.questions import named_objects
from pipeline.testbed.scenes import render


def recalls(vlm: HiredVLM, scenes, drop: DropConfig, batch: int) -> list[float]:
    """Per scene, the object recall of its caption under ``drop`` (the job's prompt and options)."""
    out = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start : start + batch]
        results = vlm.run([render(s) for s in chunk], DEFAULT_PROMPT, GenerateOptions(), drop)
        out += [named_objects(r.text, s) / len(s.things) for r, s in zip(results, chunk)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hired/testbed-llava-next")
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--methods", default="hired,hired-cdpp", help="the first is the reference")
    parser.add_argument("--budgets", default="0.1,0.2")
    parser.add_argument("--batch", type=int, default=8, help="images per call (the job's LLM batch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--split", choices=SPLITS, default="heldout")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vlm = HiredVLM.from_pretrained(args.model)
    scenes = [eval_scene(index, EVAL_SEED, "dense", args.split) for index in range(args.scenes)]
    methods = args.methods.split(",")
    draws = draw_groups(range(len(scenes)))
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads; {len(scenes)} dense {args.split} scenes")
    print("| setting | object recall | 95% interval | minus " + methods[0] + " | paired 95% interval | s |")
    print("|---|---|---|---|---|---|")
    for budget in args.budgets.split(","):
        reference = None
        for setting in sweep(methods, [budget]):
            start = time.perf_counter()
            values = recalls(vlm, scenes, setting.apply(DropConfig()), args.batch)
            seconds = time.perf_counter() - start
            resampled = [sum(values[i] for i in draw) / len(draw) for draw in draws]
            mean = sum(values) / len(values)
            low, high = percentile_interval(resampled)
            cells = [setting.name, f"{mean:.3f}", f"[{low:.3f}, {high:.3f}]", "", ""]
            if reference is None:
                reference = values
            else:
                difference = [sum(values[i] - reference[i] for i in draw) / len(draw) for draw in draws]
                d_low, d_high = percentile_interval(difference)
                cells[3:5] = [f"{mean - sum(reference) / len(reference):+.3f}", f"[{d_low:+.3f}, {d_high:+.3f}]"]
            print("| " + " | ".join(cells) + f" | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
