"""``hired serve``: the OpenAI-compatible chat completions endpoint on Ray Serve.

Starts (or joins, with ``--address``) a Ray cluster, deploys :mod:`pipeline.serve`'s
application, prints the URL and serves until Ctrl-C (or SIGTERM). For a cluster deployment from a
config file instead, see ``cluster/serve/serve_config.yaml`` (``serve deploy``).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from hired_ops import BUDGETED
from jobs.caption import DECODE_FLAGS, add_model_arguments, drop_config, model_config
from jobs.flags import add_config_arguments, build
from pipeline.data.images import DecodeLimits
from pipeline.serve.config import API_KEY_ENV, DeploymentResources, ServeConfig

SERVE_FIELDS = (
    "served_model_name", "allowed_methods", "min_budget", "max_budget", "default_max_tokens", "max_tokens_limit",
    "max_image_bytes", "max_images_per_request", "max_model_len", "max_batch_size", "batch_wait_timeout_s",
    "max_num_seqs", "max_num_batched_tokens", "max_ongoing_requests",
)
DEPLOYMENT = DeploymentResources()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="serve OpenAI-compatible chat completions with token dropping (Ray Serve)",
        description=(
            "Serve POST /v1/chat/completions, GET /v1/models[/ID], GET /v1/stats, GET|HEAD /health and /docs. "
            "Requests carry images as data: URLs (each gets the budget) and may override method and budget with "
            "an extension field "
            '"hired": {"method": ..., "budget": ...} inside the limits set here.'
        ),
    )
    add_model_arguments(parser)
    limits = parser.add_argument_group("limits on requests")
    add_config_arguments(limits, ServeConfig, only=SERVE_FIELDS)
    add_config_arguments(limits, DecodeLimits, only=("max_pixels",), flags=DECODE_FLAGS)
    limits.add_argument(
        "--allow-image-host", action="append", default=[], metavar="HOST[:PORT]",
        help="allow remote http(s) image URLs on this host (repeatable) (default: none, every remote URL is refused)",
    )
    limits.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; unset means no authentication)",
    )
    scale = parser.add_argument_group("scaling (per model deployment)")
    scale.add_argument("--vision-replicas", type=int, default=DEPLOYMENT.num_replicas, help="vision deployment replicas (default: %(default)s)")
    scale.add_argument("--llm-replicas", type=int, default=DEPLOYMENT.num_replicas, help="LLM deployment replicas (default: %(default)s)")
    scale.add_argument("--num-cpus", type=float, default=DEPLOYMENT.num_cpus, help="CPUs per model replica (default: %(default)s)")
    scale.add_argument("--num-gpus", type=float, default=DEPLOYMENT.num_gpus, help="GPUs per model replica (default: %(default)s)")
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 for all interfaces)")
    net.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    net.add_argument("--address", help="Ray cluster to join, e.g. auto (default: a running local one, else a new one)")
    return parser


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The :class:`ServeConfig` the flags describe (validated)."""

    def resources(replicas: int) -> DeploymentResources:
        return DeploymentResources(num_replicas=replicas, num_cpus=args.num_cpus, num_gpus=args.num_gpus)

    return build(
        ServeConfig, args, only=SERVE_FIELDS,
        model=model_config(args),
        drop=drop_config(args),
        decode=build(DecodeLimits, args, only=("max_pixels",), flags=DECODE_FLAGS),
        allowed_image_hosts=tuple(args.allow_image_host),
        api_key=args.api_key or None,
        vision=resources(args.vision_replicas),
        llm=resources(args.llm_replicas),
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # flag errors surface before Ray starts
    import ray
    from ray import serve

    from pipeline.serve.app import start

    ray.init(address=args.address, include_dashboard=False, ignore_reinit_error=True)
    try:
        url = start(config, host=args.host, port=args.port)
        budget = f", budget {config.drop.budget}" if config.drop.method in BUDGETED else ""
        auth = "bearer token required" if config.api_key else "no authentication"
        print(f"hired serve: {config.served_model_name} ({config.drop.method}{budget}) at {url}/v1 ({auth}); Ctrl-C to stop", flush=True)
        stop = threading.Event()
        # Ctrl-C and SIGTERM (docker stop, kill) both shut down cleanly; handling SIGINT here also
        # works where a launching shell left it ignored (background jobs of scripts)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    except KeyboardInterrupt:  # Ctrl-C while the deployment is still starting
        pass
    finally:
        serve.shutdown()
    return 0
