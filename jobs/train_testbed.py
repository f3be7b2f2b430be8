"""``hired train-testbed``: train the small LLaVA-NeXT testbed model on synthetic scenes.

Reproducible from ``--seed``; about 30 minutes on two (shared) CPU cores with the defaults. Losses go to
MLflow (experiment ``hired-testbed``), the checkpoint to ``--output`` (``from_pretrained`` loads it).
"""

from __future__ import annotations

import argparse

from jobs.flags import add_config_arguments, build
from pipeline.testbed.train import TestbedTrainConfig


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hired train-testbed``; its flags are ``TestbedTrainConfig``'s fields."""
    parser = subparsers.add_parser(
        "train-testbed",
        help="train the testbed LLaVA-NeXT on synthetic scenes (CPU, ~30 min)",
        description=__doc__.split("\n\n")[0],
    )
    add_config_arguments(parser, TestbedTrainConfig, helps={"tracking_uri": "MLflow tracking URI; none logs nothing"})
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and save; prints the final losses and the wall time."""
    from pipeline.testbed.train import train

    for key, value in train(build(TestbedTrainConfig, args)).items():
        print(f"{key}: {value:.4f}")
    return 0
