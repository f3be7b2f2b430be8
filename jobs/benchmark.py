"""``hired benchmark``: throughput, time to first token and peak memory of methods x budgets x
batch sizes on one model, like the paper's Table 4.

    hired benchmark --model hired/bench-llava-next --methods full,hired --budgets 0.4,0.2 \\
        --batch-sizes 1,2,4 --repeats 3 --max-new-tokens 16

Runs in this process, without Ray; prints a Table-4-style table, ratios against full and every
number, writes them to ``--output``, and logs one MLflow child run per cell under a parent run.
What each timer includes: see :mod:`pipeline.experiments.benchmarking` (in short: from preprocessing, image
decode excluded, to the first token / the last token).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.caption import (
    SAMPLE_IMAGES,
    add_model_arguments,
    add_tracking_arguments,
    drop_config,
    generate_options,
    model_config,
    tracking_config,
)
from jobs.evaluate import add_sweep_arguments, comma_list, sweep_parser
from jobs.flags import add_config_arguments, build, field_default
from pipeline.experiments.benchmarking import BenchConfig
from pipeline.model.generation import GenerateOptions

# the sweep a bare `hired benchmark` runs
METHODS, BUDGETS = "full,hired", "0.4,0.2"


def batch_sizes(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``."""
    try:
        sizes = [int(item) for item in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are whole numbers, e.g. 1,2,4; got {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return sizes


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sweep_parser(
        subparsers, "benchmark", __doc__,
        "throughput, TTFT and peak memory of methods x budgets x batch sizes (the paper's Table 4)",
        str(SAMPLE_IMAGES), "images to run: folder, glob, image or manifest (default: the bundled sample images)",
    )
    parser.add_argument(
        "--output", "-o", type=Path, default=Path("outputs/benchmark"),
        help="folder for table.md and table.csv (default: %(default)s)",
    )
    add_model_arguments(parser)
    add_sweep_arguments(parser, methods=METHODS, budgets=BUDGETS)
    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--batch-sizes", type=batch_sizes, default=list(field_default(BenchConfig, "batch_sizes")),
        help="comma list (default: %(default)s)",
    )
    add_config_arguments(timing, BenchConfig, only=("repeats", "warmup", "ignore_eos", "prompt"))
    add_config_arguments(
        timing, GenerateOptions, only=("max_new_tokens",),
        defaults={"max_new_tokens": field_default(BenchConfig, "generate").max_new_tokens},
    )
    add_tracking_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.experiments.benchmarking import BenchResult, run_benchmark
    from pipeline.experiments.settings import TABLE_CSV, TABLE_MARKDOWN, sweep

    config = build(
        BenchConfig, args, only=("repeats", "warmup", "ignore_eos", "prompt"),
        input=args.input,
        settings=sweep(args.methods, args.budgets),
        batch_sizes=tuple(args.batch_sizes),
        model=model_config(args),
        drop=drop_config(args),
        generate=generate_options(args, fields=("max_new_tokens",)),
    )
    tracking = tracking_config(args)

    def progress(result: BenchResult) -> None:
        if result.out_of_memory:
            print(f"[{result.setting.name} b{result.batch_size}] out of memory", flush=True)
            return
        print(
            f"[{result.setting.name} b{result.batch_size}] {result.median('throughput'):.2f} tok/s, "
            f"TTFT {result.median('ttft_s'):.2f} s, {result.median('visual_tokens'):.0f} visual tokens/image",
            flush=True,
        )

    report = run_benchmark(config, tracking, on_result=progress, on_start=lambda label: print(f"[{label}]", flush=True))
    markdown = report.markdown()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / TABLE_MARKDOWN).write_text(markdown + "\n")
    (args.output / TABLE_CSV).write_text(report.to_csv())
    print()
    print(markdown)
    print(f"\nwrote {args.output / TABLE_MARKDOWN} and {args.output / TABLE_CSV}")
    if report.parent_run_id:
        print(f"MLflow: parent run {report.parent_run_id} in experiment {args.experiment!r} at {tracking.tracking_uri}")
    return 0
