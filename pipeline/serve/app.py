"""Building and starting the Serve application: three deployments bound into one app."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ray import serve

from .config import API_KEY_ENV, ServeConfig
from .deployments import HiredLLM, HiredVision
from .ingress import HiredIngress

logger = logging.getLogger("ray.serve")


def build_application(config: ServeConfig) -> serve.Application:
    """The three deployments bound into one Serve application."""
    common = {"max_ongoing_requests": config.max_ongoing_requests}
    vision = HiredVision.options(
        name="HiredVision", num_replicas=config.vision.num_replicas, ray_actor_options=config.vision.actor_options(), **common
    ).bind(config)
    llm = HiredLLM.options(
        name="HiredLLM", num_replicas=config.llm.num_replicas, ray_actor_options=config.llm.actor_options(), **common
    ).bind(config)
    return HiredIngress.options(
        name="HiredIngress", num_replicas=config.ingress.num_replicas, ray_actor_options=config.ingress.actor_options(),
        **common,
    ).bind(config, vision, llm)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for a Serve config YAML (``import_path: pipeline.serve.app:build_app``).

    ``args`` are :class:`ServeConfig` fields (``ingress``/``vision``/``llm`` as mappings). Without
    an ``api_key`` arg the key comes from ``$HIRED_API_KEY`` where the application is built, so
    it can stay out of the YAML (set it in the cluster's environment or the app's runtime_env).
    """
    args = dict(args)
    if args.get("api_key") is None and os.environ.get(API_KEY_ENV):
        args["api_key"] = os.environ[API_KEY_ENV]
    return build_application(ServeConfig.from_dict(args))


def wait_until_healthy(url: str, timeout_s: float = 120.0) -> None:
    """Poll ``{url}/health`` until it answers 200; raise RuntimeError after ``timeout_s``."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last: str = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=15) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last = str(error)
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} did not become healthy within {timeout_s:.0f} s (last: {last})")


def start(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, name: str = "hired") -> str:
    """Deploy the application on the connected Ray cluster (starting Serve's HTTP proxy on
    ``host:port``), wait until it answers, and return its base URL (without ``/v1``)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_application(config), name=name, route_prefix="/", blocking=False)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_until_healthy(url)
    return url
