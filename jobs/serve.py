"""``hired serve``: the OpenAI-compatible chat completions endpoint on Ray Serve.

Starts (or joins, with ``--address``) a Ray cluster, deploys :mod:`pipeline.serving`'s
application, prints the URL and serves until Ctrl-C (or SIGTERM). For a cluster deployment from a
config file instead, see ``cluster/serve/serve_config.yaml`` (``serve deploy``).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from hired_ops import BUDGETED, METHODS
from pipeline.loading import DEFAULT_MODEL

API_KEY_ENV = "HIRED_API_KEY"  # same name as pipeline.serving.API_KEY_ENV (not imported: it pulls in Ray)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="serve OpenAI-compatible chat completions with token dropping (Ray Serve)",
        description=(
            "Serve POST /v1/chat/completions, GET /v1/models, GET /v1/stats and GET /health. Requests carry one "
            "image as a data: URL and may override method and budget with an extension field "
            '"hired": {"method": ..., "budget": ...} inside the limits set here.'
        ),
    )
    model = parser.add_argument_group("model and dropping")
    model.add_argument("--model", default=DEFAULT_MODEL, help="built-in name, checkpoint directory or hub id (default: %(default)s)")
    model.add_argument("--served-model-name", help="name clients pass as 'model' (default: --model)")
    model.add_argument("--method", default="hired", choices=METHODS, help="default drop method (default: %(default)s)")
    model.add_argument("--budget", default="0.2", help="default budget: fraction (0.2), percentage (20%%) or tokens (576)")
    model.add_argument("--alpha", type=float, default=0.5, help="HiRED's full-image share of the budget (default: %(default)s)")
    model.add_argument("--device", help="cpu, cuda, ... (default: cuda when a replica has a GPU, else the CPU)")
    model.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), help="model dtype (default: auto)")

    limits = parser.add_argument_group("limits on requests")
    limits.add_argument("--allowed-methods", default=",".join(METHODS), help="comma-separated methods requests may pick (default: all)")
    limits.add_argument("--min-budget", default="1", help="smallest budget a request may ask for, tokens or fraction (default: 1 token)")
    limits.add_argument("--max-budget", help="largest budget a request may ask for (default: the model's maximum)")
    limits.add_argument("--default-max-tokens", type=int, default=64, help="completion length when a request sets none")
    limits.add_argument("--max-tokens-limit", type=int, default=512, help="most completion tokens a request may ask for")
    limits.add_argument("--max-image-bytes", type=int, default=20 * 2**20, help="encoded image size limit (default: 20 MiB)")
    limits.add_argument("--max-image-pixels", type=int, default=36_000_000, help="decoded image size limit")
    limits.add_argument(
        "--allow-image-host", action="append", default=[], metavar="HOST[:PORT]",
        help="allow remote http(s) image URLs on this host (repeatable); remote URLs are refused otherwise",
    )
    limits.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}; unset means no authentication)",
    )

    scale = parser.add_argument_group("batching and scaling")
    scale.add_argument("--max-batch-size", type=int, default=8, help="requests per batch (default: %(default)s)")
    scale.add_argument("--batch-wait-ms", type=float, default=50.0, help="how long a batch waits to fill (default: %(default)s)")
    scale.add_argument("--vision-replicas", type=int, default=1, help="vision deployment replicas")
    scale.add_argument("--llm-replicas", type=int, default=1, help="LLM deployment replicas")
    scale.add_argument("--num-cpus", type=float, default=0.5, help="CPUs per model replica (default: %(default)s)")
    scale.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model replica (default: %(default)s)")
    scale.add_argument("--torch-threads", type=int, help="torch threads per model replica (default: its whole CPUs, >= 1)")

    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; 0.0.0.0 for all interfaces)")
    net.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    net.add_argument("--address", help="Ray cluster to join (e.g. auto); default: a running local one, else a new one")
    return parser


def config_from_args(args: argparse.Namespace):
    """The :class:`pipeline.serving.ServeConfig` the flags describe (validated)."""
    from pipeline.serving import DeploymentResources, ServeConfig

    per_replica = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    return ServeConfig(
        model=args.model,
        served_model_name=args.served_model_name,
        method=args.method,
        budget=args.budget,
        alpha=args.alpha,
        allowed_methods=args.allowed_methods,  # comma-separated; ServeConfig splits it
        min_budget=args.min_budget,
        max_budget=args.max_budget,
        default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000.0,
        max_ongoing_requests=max(64, 4 * args.max_batch_size),
        allowed_image_hosts=tuple(args.allow_image_host),
        api_key=args.api_key or None,
        device=args.device,
        dtype=args.dtype,
        torch_threads=args.torch_threads,
        vision=DeploymentResources(num_replicas=args.vision_replicas, **per_replica),
        llm=DeploymentResources(num_replicas=args.llm_replicas, **per_replica),
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # flag errors surface before Ray starts
    import ray
    from ray import serve

    from pipeline.serving import start

    ray.init(address=args.address, include_dashboard=False, ignore_reinit_error=True)
    try:
        url = start(config, host=args.host, port=args.port)
        budget = f", budget {config.budget}" if config.method in BUDGETED else ""
        auth = "bearer token required" if config.api_key else "no authentication"
        print(f"hired serve: {config.served_model_name} ({config.method}{budget}) at {url}/v1 ({auth}); Ctrl-C to stop", flush=True)
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
