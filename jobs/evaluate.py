"""``hired evaluate MANIFEST``: accuracy of methods x budgets on a labelled set, like the paper's
Table 3.

    hired evaluate samples/eval/vqa.jsonl --methods hired,full --budgets 0.2,0.4
    hired evaluate s3://bucket/docvqa.parquet --task docvqa --model /ckpt/llava-next-7b \\
        --methods hired,spatial --budgets 0.2,0.4 --vision-num-gpus 0.5 --llm-num-gpus 0.5

Every setting runs the dataset job (same options as ``hired caption``) into
``<output>/<setting>/`` and is scored with the task's metric; each is an MLflow child run under
one parent run that holds the table. See :mod:`pipeline.evaluation` for the manifest columns,
scoring and resuming, and :mod:`pipeline.scoring` for the metrics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.caption import add_job_arguments, job_config
from pipeline.scoring import TASKS

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EVAL = REPO / "samples" / "eval"


def comma_list(text: str) -> list[str]:
    """``"hired, full"`` -> ``["hired", "full"]``; an empty list is an argument error."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def add_sweep_arguments(parser: argparse.ArgumentParser, methods: str, budgets: str) -> None:
    """``--methods`` and ``--budgets`` as comma lists; ``--method`` / ``--budget`` are aliases.

    The parser must be built with ``conflict_handler="resolve"``: the aliases take over the
    single-valued ``--method`` / ``--budget`` of :func:`jobs.caption.add_job_arguments`, so one
    spelling cannot be silently ignored in favour of the other.
    """
    grid = parser.add_argument_group("sweep (every method x every budget)")
    grid.add_argument(
        "--methods", "--method", dest="methods", type=comma_list, default=comma_list(methods),
        help=f"comma list of methods (default: {methods}); full and prumerge run once, whatever the budgets",
    )
    grid.add_argument(
        "--budgets", "--budget", dest="budgets", type=comma_list, default=comma_list(budgets),
        help=f"comma list of budgets: fractions (0.2, 20%%) or token counts (576) (default: {budgets})",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="accuracy of methods x budgets on a labelled set (the paper's Table 3)",
        description=__doc__.split("\n\n")[0],
        conflict_handler="resolve",
    )
    parser.add_argument(
        "input", nargs="?", default=str(SAMPLE_EVAL / "vqa.jsonl"),
        help="labelled Parquet or JSONL manifest, local or s3://, gs://, http(s):// "
        "(default: the bundled samples/eval/vqa.jsonl)",
    )
    parser.add_argument("--output", "-o", default="outputs/eval", help="root folder; one sub-folder per setting")
    parser.add_argument(
        "--task", choices=sorted(TASKS), default=None,
        help="sets the prompt and the metric (default: the manifest's 'task' column)",
    )
    add_job_arguments(parser)
    add_sweep_arguments(parser, methods="hired,full", budgets="0.2,0.4")
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluation import EvalConfig, SettingResult, run_evaluation, sweep
    from pipeline.tracking import TrackingConfig

    settings = sweep(args.methods, args.budgets)
    # job_config builds one job from single-valued --method/--budget; the sweep replaces both per
    # setting, so the first setting stands in for them here
    single = argparse.Namespace(**vars(args), method=settings[0].method, budget=settings[0].budget)
    config = EvalConfig(job=job_config(single), settings=settings, task=args.task)
    tracking = TrackingConfig(
        tracking_uri=args.tracking_uri, experiment=args.experiment, run_name=args.run_name, enabled=args.tracking
    )

    def progress(result: SettingResult) -> None:
        headline = ", ".join(f"{name} {value:.3f}" for name, value in result.metrics.items())
        print(f"[{result.setting.name}] {headline} ({result.scored_rows} scored, {result.failed_rows} failed; "
              f"{result.new_rows} answered now) -> {result.output}", flush=True)

    report = run_evaluation(config, tracking, on_result=progress)
    print()
    print(f"{report.task.name} on {report.manifest} ({report.task.metric} first; percent):")
    print(report.to_markdown())
    if report.parent_run_id:
        print(f"MLflow: parent run {report.parent_run_id} in experiment {args.experiment!r} at {tracking.tracking_uri}")
    return 0
