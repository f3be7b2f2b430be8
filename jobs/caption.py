"""``hired caption INPUT --output OUT``: caption (or answer per-row questions about) a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from hired_ops import METHODS
from pipeline.config import DEFAULT_PROMPT, JobConfig, PoolConfig
from pipeline.loading import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "samples" / "images"


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The model and how it drops tokens (method and budget excepted), as every job names them."""
    model = parser.add_argument_group("model and dropping")
    model.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, checkpoint directory or hub id")
    model.add_argument("--alpha", type=float, default=0.5, help="share of the budget for the full image")
    model.add_argument("--l-init", type=int, default=0, help="ViT layer whose CLS attention allocates budgets")
    model.add_argument("--l-final", type=int, default=None, help="ViT layer whose CLS attention ranks patches")
    model.add_argument("--newlines", default="auto", choices=["auto", "rows", "none"])
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    model.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    model.add_argument("--seed", type=int, default=0)
    return model


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the job's MLflow run goes."""
    tracking = parser.add_argument_group("MLflow")
    tracking.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else ./mlflow.db")
    tracking.add_argument("--experiment", default="hired")
    tracking.add_argument("--run-name", default=None)
    tracking.add_argument("--no-tracking", dest="tracking", action="store_false", help="do not log to MLflow")


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every dataset job shares, named as ``JobConfig``'s fields."""
    model = add_model_arguments(parser)
    model.add_argument("--method", default="hired", choices=METHODS)
    model.add_argument("--budget", default="0.2", help="fraction of the model's maximum (0.2, 20%%) or tokens (576)")
    model.add_argument("--max-new-tokens", type=int, default=32)
    model.add_argument("--temperature", type=float, default=0.0)
    pools = parser.add_argument_group("Ray pools")
    for role in ("vision", "llm"):
        pools.add_argument(f"--{role}-pool-size", type=int, default=1, help=f"{role} actors")
        pools.add_argument(f"--{role}-batch-size", type=int, default=8, help=f"rows per {role} call")
        pools.add_argument(
            f"--{role}-num-gpus", type=float, default=None,
            help="GPUs per actor, fractions allowed (default: 0.5 when the cluster has GPUs, else 0)",
        )
        pools.add_argument(f"--{role}-num-cpus", type=float, default=0.5, help="CPUs per actor")
    pools.add_argument("--decode-batch-size", type=int, default=8)
    pools.add_argument("--transfer-dtype", default="float16", choices=["float16", "float32"])
    data = parser.add_argument_group("data")
    data.add_argument("--limit", type=int, default=None, help="process at most this many inputs")
    data.add_argument("--no-resume", dest="resume", action="store_false", help="redo ids already in the output")
    data.add_argument("--max-image-pixels", type=int, default=64_000_000, help="decompression-bomb limit")
    add_tracking_arguments(parser)


def job_config(args: argparse.Namespace, **overrides) -> JobConfig:
    """A validated ``JobConfig`` from parsed arguments."""
    pools = {
        role: PoolConfig(
            size=getattr(args, f"{role}_pool_size"),
            batch_size=getattr(args, f"{role}_batch_size"),
            num_gpus=getattr(args, f"{role}_num_gpus"),
            num_cpus=getattr(args, f"{role}_num_cpus"),
        )
        for role in ("vision", "llm")
    }
    values = dict(
        input=args.input,
        output=args.output,
        model=args.model,
        method=args.method,
        budget=None if args.method not in ("hired", "spatial", "random") else args.budget,
        alpha=args.alpha,
        l_init=args.l_init,
        l_final=args.l_final,
        newlines=args.newlines,
        prompt=getattr(args, "prompt", DEFAULT_PROMPT),
        vision=pools["vision"],
        llm=pools["llm"],
        decode_batch_size=args.decode_batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        device=args.device,
        dtype=args.dtype,
        transfer_dtype=args.transfer_dtype,
        resume=args.resume,
        limit=args.limit,
        max_image_pixels=args.max_image_pixels,
        seed=args.seed,
    )
    values.update(overrides)
    return JobConfig(**values)


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
    parser.add_argument("--output", "-o", default="outputs/captions", help="folder for the Parquet files")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="instruction for rows without their own")
    add_job_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from pipeline.job import run_job
    from pipeline.tracking import track_job

    config = job_config(args)
    with track_job(args, config, dataset=config.input) as tracker:
        summary = run_job(config)
        tracker.log_summary(summary, summary.figures)
    print(summary.describe())
    if tracker.run.enabled:
        print(f"MLflow run {tracker.run.run_id} in {tracker.run.tracking_uri}")
    return 0
