"""``hired train-testbed``: train the small LLaVA-NeXT testbed model on synthetic scenes.

Reproducible from ``--seed``; about 30 minutes on two (shared) CPU cores with the defaults. Losses go to
MLflow (experiment ``hired-testbed``), the checkpoint to ``--output`` (``from_pretrained`` loads it).
"""

from __future__ import annotations

import argparse

from pipeline.testbed.train import TestbedTrainConfig

Config = TestbedTrainConfig


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hired train-testbed``."""
    parser = subparsers.add_parser(
        "train-testbed",
        help="train the testbed LLaVA-NeXT on synthetic scenes (CPU, ~30 min)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--cls-steps", type=int, default=Config.cls_steps, help="stage 0: CLS objective on the tower")
    parser.add_argument("--caption-steps", type=int, default=Config.caption_steps, help="stage 1: captions")
    parser.add_argument("--instruct-steps", type=int, default=Config.instruct_steps, help="stage 2: questions")
    parser.add_argument("--batch-size", type=int, default=Config.batch_size, help="scenes per step")
    parser.add_argument("--cls-lr", type=float, default=Config.cls_lr)
    parser.add_argument("--lr", type=float, default=Config.lr, help="peak learning rate of stages 1 and 2")
    parser.add_argument("--cls-weight", type=float, default=Config.cls_weight, help="CLS objective weight in stage 2")
    parser.add_argument("--per-task", type=int, default=Config.per_task, help="questions per task per image")
    parser.add_argument("--output", default=Config.output, help="checkpoint directory")
    parser.add_argument("--threads", type=int, default=Config.threads, help="torch threads")
    parser.add_argument("--tracking-uri", default=Config.tracking_uri, help="MLflow tracking URI")
    parser.add_argument("--experiment", default=Config.experiment)
    parser.add_argument("--no-tracking", dest="tracking", action="store_false", help="do not log to MLflow")
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and save; prints the final losses and the wall time."""
    from pipeline.testbed.train import train

    config = TestbedTrainConfig(
        seed=args.seed,
        cls_steps=args.cls_steps,
        caption_steps=args.caption_steps,
        instruct_steps=args.instruct_steps,
        batch_size=args.batch_size,
        cls_lr=args.cls_lr,
        lr=args.lr,
        cls_weight=args.cls_weight,
        per_task=args.per_task,
        output=args.output,
        threads=args.threads,
        tracking_uri=args.tracking_uri if args.tracking else None,
        experiment=args.experiment,
    )
    for key, value in train(config).items():
        print(f"{key}: {value:.4f}")
    return 0
