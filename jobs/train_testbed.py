"""``hired train-testbed``: train the testbed LLaVA-NeXT (a small tower and SmolLM2-135M) on synthetic scenes.

Reproducible from ``--seed``, and resumable: run the same command again after a stop and each
stage goes on from its last checkpoint in ``--work-dir``. About 80 minutes on two CPU cores with
the defaults (docs/testbed.md); a GPU is used where there is one, and bf16 autocast where bf16 is native
(GPU, AMX or AVX512-BF16 CPUs). Losses go to MLflow (experiment
``hired-testbed``), the trained parts to ``--output`` (loaded by name as ``hired/testbed-llava-next``).
"""

from __future__ import annotations

import argparse

from jobs.flags import add_config_arguments, build
from pipeline.testbed.train import TestbedTrainConfig


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hired train-testbed``; its flags are ``TestbedTrainConfig``'s fields."""
    parser = subparsers.add_parser(
        "train-testbed",
        help="train the testbed LLaVA-NeXT on synthetic scenes (resumable; CPU ~80 min)",
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
