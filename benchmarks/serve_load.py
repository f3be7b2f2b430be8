"""Serve load benchmark (issue 5): a bounded load run against the chat completions endpoint on
loopback, HiRED at a 20% budget vs full (no dropping), in one run against one server.

    python benchmarks/serve_load.py [--requests 200] [--concurrency 16] [--model hired/tiny-llava-next]

It starts a local Ray cluster and the Serve application (``pipeline.serve``) on 127.0.0.1,
warms it up, then for each arm sends ``--requests`` chat completions from ``--concurrency``
client threads over real HTTP, each request carrying a PNG as a data: URL (a rotation of images
of different sizes). The full arm uses the per-request override ``"hired": {"method": "full"}``,
so both arms share the server, its batching and its warm replicas.

Reported per arm: latency p50 / p95 / mean (client-side, request sent -> whole JSON answer),
requests per second (requests / wall time of the arm), errors (non-200 or wrong shape), mean
visual tokens per image, and the server's batch-size counts; then the full / HiRED ratios.
The load generator runs on the same machine, so on a small CPU it competes with the server.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import requests

from pipeline.data.synthetic import random_image

SIZES = [(480, 640), (672, 672), (600, 1000), (1000, 600), (336, 336), (768, 1024), (500, 500), (720, 1280)]
PROMPT = "Describe the image."


@dataclass
class ArmResult:
    name: str
    requests: int
    errors: int
    p50_s: float
    p95_s: float
    mean_s: float
    requests_per_s: float
    visual_tokens: float
    batches: dict[str, dict[str, int]]


def image_urls() -> list[str]:
    urls = []
    for i, (h, w) in enumerate(SIZES):
        buffer = io.BytesIO()
        random_image(h, w, seed=i).save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return urls


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_arm(name: str, url: str, model: str, urls: list[str], override: dict | None, args: argparse.Namespace) -> ArmResult:
    session = requests.Session()
    # enough pooled connections for every client thread, or threads queue for a socket
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=args.concurrency))
    before = session.get(f"{url}/v1/stats", timeout=30).json()

    def one(i: int) -> tuple[float, int | None]:
        content = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": urls[i % len(urls)]}}]
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": args.max_tokens}
        if override:
            body["hired"] = override
        start = time.perf_counter()
        try:
            reply = session.post(f"{url}/v1/chat/completions", json=body, timeout=300)
            ok = reply.status_code == 200 and "choices" in reply.json()
            tokens = reply.json()["usage"]["visual_tokens"] if ok else None
        except (requests.RequestException, ValueError, KeyError):
            tokens = None
        return time.perf_counter() - start, tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        outcomes = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - start
    after = session.get(f"{url}/v1/stats", timeout=30).json()
    latencies = [t for t, tokens in outcomes if tokens is not None]
    tokens = [tokens for _, tokens in outcomes if tokens is not None]
    return ArmResult(
        name=name,
        requests=args.requests,
        errors=args.requests - len(latencies),
        p50_s=percentile(latencies, 50) if latencies else float("nan"),
        p95_s=percentile(latencies, 95) if latencies else float("nan"),
        mean_s=statistics.fmean(latencies) if latencies else float("nan"),
        requests_per_s=len(latencies) / wall,
        visual_tokens=statistics.fmean(tokens) if tokens else float("nan"),
        batches={side: _batch_delta(before[side]["by_size"], after[side]["by_size"]) for side in ("vision", "llm")},
    )


def _batch_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Batches by size during the arm (the server's counters are cumulative)."""
    delta = {size: n - before.get(size, 0) for size, n in after.items()}
    return {size: n for size, n in sorted(delta.items(), key=lambda kv: int(kv[0])) if n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hired/tiny-llava-next")
    parser.add_argument("--requests", type=int, default=200, help="requests per arm")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads")
    parser.add_argument("--budget", default="0.2", help="HiRED arm budget")
    parser.add_argument("--max-tokens", type=int, default=16, help="completion tokens per request")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=50.0)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    from ray import serve

    from hired_ops import DropConfig
    from pipeline.model.config import ModelConfig
    from pipeline.serve.app import start
    from pipeline.serve.config import ServeConfig

    config = ServeConfig(
        model=ModelConfig(name=args.model),
        drop=DropConfig(budget=args.budget),
        allowed_methods=("hired", "full"),
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
        max_ongoing_requests=max(64, 4 * args.concurrency),
        max_tokens_limit=max(64, args.max_tokens),
    )
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir="/tmp/hired-ray-bench")
    try:
        url = start(config, port=args.port)
        urls = image_urls()
        warm = argparse.Namespace(**{**vars(args), "requests": 2 * args.max_batch_size})
        for override in (None, {"method": "full"}):  # first batches pay for lazy initialisation
            run_arm("warm-up", url, config.served_model_name, urls, override, warm)
        arms = [
            run_arm(f"hired {args.budget}", url, config.served_model_name, urls, None, args),
            run_arm("full", url, config.served_model_name, urls, {"method": "full"}, args),
        ]
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"\n{args.model}: {args.requests} requests per arm at concurrency {args.concurrency}, "
          f"max_tokens {args.max_tokens}, max batch {args.max_batch_size}, batch wait {args.batch_wait_ms:g} ms; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| arm | visual tokens | p50 s | p95 s | mean s | req/s | errors | LLM batches by size |")
    print("|---|---|---|---|---|---|---|---|")
    for arm in arms:
        print(f"| {arm.name} | {arm.visual_tokens:.0f} | {arm.p50_s:.3f} | {arm.p95_s:.3f} | {arm.mean_s:.3f} | "
              f"{arm.requests_per_s:.2f} | {arm.errors} | {arm.batches['llm']} |")
    hired, full = arms
    print(f"\nfull / hired: p50 {full.p50_s / hired.p50_s:.2f}x, p95 {full.p95_s / hired.p95_s:.2f}x, "
          f"throughput hired / full {hired.requests_per_s / full.requests_per_s:.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "arms": [asdict(a) for a in arms]}, out, indent=2)


if __name__ == "__main__":
    main()
