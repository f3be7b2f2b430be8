"""``hired evaluate MANIFEST``: accuracy of methods x budgets on a labelled set, like the paper's
Table 3.

    hired evaluate samples/eval/vqa.jsonl --methods hired,full --budgets 0.2,0.4
    hired evaluate s3://bucket/docvqa.parquet --task docvqa --model /ckpt/llava-next-7b \\
        --methods hired,spatial --budgets 0.2,0.4 --vision-num-gpus 0.5 --llm-num-gpus 0.5

Every setting runs the dataset job (same options as ``hired caption``) into
``<output>/<setting>/`` and is scored with the task's metric; each is an MLflow child run under
one parent run that holds the table. See :mod:`pipeline.experiments.evaluation` for the manifest columns,
scoring and resuming, and :mod:`pipeline.experiments.scoring` for the metrics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.caption import add_job_arguments, job_config, tracking_config
from pipeline.experiments.tasks import TASKS

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EVAL = REPO / "samples" / "eval"
# the sweep a bare `hired evaluate` runs
METHODS, BUDGETS = "hired,full", "0.2,0.4"


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


def sweep_parser(
    subparsers: argparse._SubParsersAction, name: str, doc: str, summary: str, input_default: str, input_help: str
) -> argparse.ArgumentParser:
    """A sub-command over a sweep: its parser (``conflict_handler="resolve"``, see
    :func:`add_sweep_arguments`) with the optional positional ``input``."""
    parser = subparsers.add_parser(name, help=summary, description=doc.split("\n\n")[0], conflict_handler="resolve")
    parser.add_argument("input", nargs="?", default=input_default, help=input_help)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sweep_parser(
        subparsers, "evaluate", __doc__, "accuracy of methods x budgets on a labelled set (the paper's Table 3)",
        str(SAMPLE_EVAL / "vqa.jsonl"),
        "labelled Parquet or JSONL manifest, local or s3://, gs://, http(s):// (default: the bundled samples/eval/vqa.jsonl)",
    )
    parser.add_argument("--output", "-o", default="outputs/eval", help="root folder; one sub-folder per setting (default: %(default)s)")
    parser.add_argument(
        "--task", choices=sorted(TASKS), default=None,
        help="sets the prompt and the metric (default: the manifest's 'task' column)",
    )
    add_job_arguments(parser)
    add_sweep_arguments(parser, methods=METHODS, budgets=BUDGETS)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.experiments.evaluation import (
        EvalConfig,
        SettingResult,
        run_evaluation,
    )
    from pipeline.experiments.settings import sweep
    from pipeline.tracking.live import ProgressPrinter

    settings = sweep(args.methods, args.budgets)
    # the sweep's --methods/--budgets replace the job's single --method/--budget: each setting
    # applies its own to the job's dropping
    config = EvalConfig(job=job_config(args), settings=settings, task=args.task)
    tracking = tracking_config(args)

    def progress(result: SettingResult) -> None:
        headline = ", ".join(f"{name} {value:.3f}" for name, value in result.metrics.items())
        print(f"[{result.setting.name}] {headline} ({result.scored_rows} scored, {result.failed_rows} failed; "
              f"{result.new_rows} answered now) -> {result.output}", flush=True)

    report = run_evaluation(config, tracking, on_result=progress, watch=ProgressPrinter)
    print()
    print(f"{report.task.name} on {report.manifest} ({report.task.metric} first; percent):")
    print(report.to_markdown())
    if report.parent_run_id:
        print(f"MLflow: parent run {report.parent_run_id} in experiment {args.experiment!r} at {tracking.tracking_uri}")
    return 0
