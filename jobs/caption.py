"""``hired caption INPUT --output OUT``: caption (or answer per-row questions about) a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from hired_ops import ALLOCATIONS, METHODS, SELECTIONS, DropConfig
from jobs.flags import add_config_arguments, build
from pipeline.batch.config import JobConfig, PoolConfig
from pipeline.data.images import DecodeLimits
from pipeline.model.config import ModelConfig
from pipeline.model.generation import GenerateOptions
from pipeline.tracking.runs import TrackingConfig

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "samples" / "images"

MODEL_FLAGS = {"name": "model"}
DECODE_FLAGS = {"max_pixels": "max_image_pixels", "max_bytes": "max_image_bytes"}
POOL_FLAGS = {"size": "pool_size"}
TRACKING_FLAGS = {"enabled": "tracking"}
TRACKING_FIELDS = ("tracking_uri", "experiment", "run_name", "enabled", "live_interval_s")
# decoding flags every job takes; the seed is the dropping's (random), shared with sampling
GENERATE_FIELDS = ("max_new_tokens", "temperature", "top_p")
ROLES = ("vision", "llm")
DROP_HELP = {
    "method": f"a preset ({', '.join(METHODS)}) or allocation+selection, e.g. hired+divprune "
    f"(allocations: {', '.join(ALLOCATIONS)}; selections: {', '.join(SELECTIONS)})",
    "seed": "seed of the random method and of sampling",
}


def add_model_arguments(parser: argparse.ArgumentParser, drop_defaults: dict | None = None) -> argparse._ArgumentGroup:
    """The model and how it drops tokens, flags generated from ``ModelConfig`` and ``DropConfig``."""
    group = parser.add_argument_group("model and dropping")
    add_config_arguments(group, ModelConfig, flags=MODEL_FLAGS)
    add_config_arguments(group, DropConfig, defaults=drop_defaults, helps=DROP_HELP)
    return group


def model_config(args: argparse.Namespace) -> ModelConfig:
    return build(ModelConfig, args, flags=MODEL_FLAGS)


def drop_config(args: argparse.Namespace, **given) -> DropConfig:
    return build(DropConfig, args, **given)


def generate_options(args: argparse.Namespace, fields=GENERATE_FIELDS) -> GenerateOptions:
    return build(GenerateOptions, args, only=fields, seed=args.seed)


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the job's MLflow run goes (``TrackingConfig``)."""
    group = parser.add_argument_group("MLflow")
    add_config_arguments(
        group, TrackingConfig, only=TRACKING_FIELDS, flags=TRACKING_FLAGS,
        helps={
            "enabled": "log the job to MLflow (--no-tracking: record nothing)",
            "tracking_uri": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
        },
    )


def tracking_config(args: argparse.Namespace, **given) -> TrackingConfig:
    return build(
        TrackingConfig, args, only=TRACKING_FIELDS, flags=TRACKING_FLAGS, **given
    )


def add_job_arguments(parser: argparse.ArgumentParser, drop_defaults: dict | None = None) -> None:
    """Options every dataset job shares, generated from ``JobConfig`` and the configs it nests."""
    model = add_model_arguments(parser, drop_defaults)
    add_config_arguments(model, GenerateOptions, only=GENERATE_FIELDS)
    pools = parser.add_argument_group("Ray pools")
    for role in ROLES:
        add_config_arguments(pools, PoolConfig, prefix=f"{role}-", flags=POOL_FLAGS)
    add_config_arguments(
        pools, JobConfig, only=("decode_batch_size", "decode_resources", "max_num_seqs", "max_num_batched_tokens", "max_padding")
    )
    data = parser.add_argument_group("data")
    add_config_arguments(data, JobConfig, only=("limit", "resume", "retry_errors", "min_rows_per_file"))
    add_config_arguments(data, DecodeLimits, flags=DECODE_FLAGS)
    add_tracking_arguments(parser)


def job_config(args: argparse.Namespace, **given) -> JobConfig:
    """A validated ``JobConfig`` from parsed arguments (``given`` fields win)."""
    nested = dict(
        model=model_config(args),
        drop=drop_config(args),
        generate=generate_options(args),
        decode=build(DecodeLimits, args, flags=DECODE_FLAGS),
        **{role: build(PoolConfig, args, prefix=f"{role}_", flags=POOL_FLAGS) for role in ROLES},
    )
    only = (
        "input", "output", "prompt", "decode_batch_size", "decode_resources", "max_num_seqs", "max_num_batched_tokens",
        "max_padding", "limit", "resume", "retry_errors", "min_rows_per_file",
    )
    return build(JobConfig, args, only=only, **{**nested, **given})


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "caption",
        help="caption a folder, glob or manifest of images into Parquet",
        description="Caption images (or answer a manifest's per-row questions) on Ray Data, "
        "dropping visual tokens inside a fixed budget. Re-running into the same output resumes.",
    )
    parser.add_argument(
        "input", nargs="?", default=str(SAMPLE_IMAGES),
        help="folder, glob, image, or Parquet/JSONL manifest; local, s3://, gs://, http(s):// "
        "(default: the bundled sample images)",
    )
    parser.add_argument("--output", "-o", default="outputs/captions", help="folder for the Parquet files (default: %(default)s)")
    add_config_arguments(parser, JobConfig, only=("prompt",))
    add_job_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.batch.driver import run_job
    from pipeline.data.storage import filesystem, is_image_path
    from pipeline.tracking.datasets import InputDataset, describe_input
    from pipeline.tracking.live import ProgressPrinter, both
    from pipeline.tracking.results import track_job

    config, tracking = job_config(args), tracking_config(args)
    dataset: InputDataset | str = config.input
    if tracking.enabled:  # a digest of what was read, without reading any image
        fs, path, _ = filesystem(config.input, config.storage_options)
        dataset = describe_input(config.input, fs, path, is_image_path)
    with track_job(tracking, config, dataset, kind="caption") as tracker, tracker.live() as live:
        if tracker.run.ui_url:
            print(f"watch the run at {tracker.run.ui_url}", flush=True)
        summary = run_job(config, on_progress=both(live, ProgressPrinter(tracker.run.name or "caption")))
        tracker.log_summary(summary, summary.figures)
    print(summary.describe())
    if tracker.run.enabled:
        print(f"MLflow run {tracker.run.run_id} in {tracker.run.tracking_uri}")
    return 0
