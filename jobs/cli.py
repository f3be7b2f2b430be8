"""The ``hired`` command: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Each sub-command lives in its own module exposing ``add_parser(subparsers)`` and ``run(args)``.
COMMANDS = ("caption", "evaluate", "benchmark", "serve", "compare", "train_testbed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hired",
        description="HiRED on Ray: budgeted visual-token dropping for high-resolution VLMs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"jobs.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Local runs should never wait on hub retries or phone home; users can override both.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        # errors a user can cause come with a message that says what to do; no traceback
        print(f"hired {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
