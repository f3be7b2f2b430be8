"""``hired benchmark``: throughput, time to first token and peak memory of methods x budgets x
batch sizes on one model, like the paper's Table 4.

    hired benchmark --model hired/bench-llava-next --methods full,hired --budgets 0.4,0.2 \\
        --batch-sizes 1,2,4 --repeats 3 --max-new-tokens 16

Runs in this process, without Ray; prints a Table-4-style table, ratios against full and every
number, writes them to ``--output``, and logs one MLflow child run per cell under a parent run.
What each timer includes: see :mod:`pipeline.benchmarking` (in short: from preprocessing, image
decode excluded, to the first token / the last token).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.caption import SAMPLE_IMAGES, add_model_arguments, add_tracking_arguments
from jobs.evaluate import add_sweep_arguments, comma_list
from pipeline.config import DEFAULT_PROMPT


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
    parser = subparsers.add_parser(
        "benchmark",
        help="throughput, TTFT and peak memory of methods x budgets x batch sizes (the paper's Table 4)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "input", nargs="?", default=str(SAMPLE_IMAGES),
        help="images to run: folder, glob, image or manifest (default: the bundled sample images)",
    )
    parser.add_argument(
        "--output", "-o", type=Path, default=Path("outputs/benchmark"), help="folder for table.md and table.csv"
    )
    add_model_arguments(parser)
    add_sweep_arguments(parser, methods="full,hired", budgets="0.4,0.2")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--batch-sizes", type=batch_sizes, default=[1, 2, 4], help="comma list (default: 1,2,4)")
    timing.add_argument("--repeats", type=int, default=3, help="timed requests per cell; the median is reported")
    timing.add_argument("--warmup", type=int, default=1, help="untimed requests per cell first")
    timing.add_argument("--max-new-tokens", type=int, default=16)
    timing.add_argument(
        "--no-ignore-eos", dest="ignore_eos", action="store_false",
        help="stop at end of sequence (default: decode exactly --max-new-tokens, so cells do equal work)",
    )
    timing.add_argument("--prompt", default=DEFAULT_PROMPT)
    add_tracking_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.benchmarking import TABLE_CSV, TABLE_MARKDOWN, BenchConfig, BenchResult, run_benchmark
    from pipeline.evaluation import sweep
    from pipeline.tracking import TrackingConfig

    config = BenchConfig(
        input=args.input,
        settings=sweep(args.methods, args.budgets),
        batch_sizes=tuple(args.batch_sizes),
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        max_new_tokens=args.max_new_tokens,
        ignore_eos=args.ignore_eos,
        prompt=args.prompt,
        alpha=args.alpha,
        l_init=args.l_init,
        l_final=args.l_final,
        newlines=args.newlines,
        seed=args.seed,
    )
    tracking = TrackingConfig(
        tracking_uri=args.tracking_uri, experiment=args.experiment, run_name=args.run_name, enabled=args.tracking
    )

    def progress(result: BenchResult) -> None:
        if result.out_of_memory:
            print(f"[{result.setting.name} b{result.batch_size}] out of memory", flush=True)
            return
        print(
            f"[{result.setting.name} b{result.batch_size}] {result.median('throughput'):.2f} tok/s, "
            f"TTFT {result.median('ttft_s'):.2f} s, {result.median('visual_tokens'):.0f} visual tokens/image",
            flush=True,
        )

    report = run_benchmark(config, tracking, on_result=progress)
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
