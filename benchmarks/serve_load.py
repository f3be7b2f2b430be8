"""Serve load benchmark (issues 5 and 11): bounded load runs against the chat completions
endpoint on loopback, in one run against one server.

    python benchmarks/serve_load.py [--scenario dropping|hostile|mixed] [--requests N] [--concurrency C]

``--scenario dropping`` (issue 5): HiRED at a 20% budget vs full (no dropping).
``--scenario hostile`` (issue 11): a clean arm of good requests, then the same good requests with
a tenth as many hostile ones mixed in (over-long prompts, malformed and too deeply nested bodies,
bytes that are not an image) plus ``--disconnects`` streamed requests whose clients hang up after
the first event. Reported: 5xx answers (must be 0), every hostile answer's status, p50/p95 of the
good requests in both arms and their ratio (target within 1.3x), and the LLM replica's resident
memory before and after the hostile arm (target within 10%).
``--scenario mixed`` (issue 25): a mix of lengths, ``--long-share`` of the requests (10%) at
``--long-tokens`` (512) and the rest at ``--max-tokens`` (16), at ``--concurrency`` 32. Reported:
p50/p95 of the short and of the long requests, completion tokens/s overall, and the LLM
replica's resident memory before and after. Run it on the code before continuous batching with
``PYTHONPATH`` pointing at a checkout of that code (``--max-num-seqs`` is ignored there).

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
import http.client
import io
import json
import os
import platform
import socket
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from urllib.parse import urlsplit

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
    statuses: dict[str, int] = field(default_factory=dict)  # status counts of the hostile requests
    server_errors: int = 0  # 5xx answers of any request
    disconnects: int = 0


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


def good_body(i: int, model: str, urls: list[str], args: argparse.Namespace, override: dict | None) -> dict:
    content = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": urls[i % len(urls)]}}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": args.max_tokens}
    if override:
        body["hired"] = override
    return body


def hostile_request(i: int, model: str) -> dict:
    """``requests.post`` keyword arguments of the i-th hostile request (each kind in turn)."""
    kind = i % 4
    if kind == 0:  # ~9k tokens: past the tiny model's 4096 positions
        return {"json": {"model": model, "messages": [{"role": "user", "content": "lorem ipsum dolor " * 3000}]}}
    if kind == 1:
        return {"data": b'{"model": "' + model.encode() + b'", "messages": [', "headers": {"Content-Type": "application/json"}}
    if kind == 2:
        return {"data": b"[" * 50_000 + b"]" * 50_000, "headers": {"Content-Type": "application/json"}}
    not_image = "data:image/png;base64," + base64.b64encode(b"<html>not an image</html>").decode()
    content = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": not_image}}]
    return {"json": {"model": model, "messages": [{"role": "user", "content": content}]}}


def disconnect(url: str, body: dict) -> bool:
    """A streamed request whose client hangs up after the first event; True if it got that far."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body | {"stream": True}), {"Content-Type": "application/json"})
        reply = connection.getresponse()
        ok = reply.status == 200 and reply.readline().startswith(b"data: ")
        connection.sock.shutdown(socket.SHUT_RDWR)
        return ok
    except (OSError, AttributeError):  # refused, reset, or the socket already gone
        return False
    finally:
        connection.close()


def run_arm(
    name: str, url: str, model: str, urls: list[str], override: dict | None, args: argparse.Namespace, hostile: bool = False
) -> ArmResult:
    session = requests.Session()
    # enough pooled connections for every client thread, or threads queue for a socket
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=args.concurrency))
    before = session.get(f"{url}/v1/stats", timeout=30).json()
    # the good requests, then one hostile request per ten good ones and the disconnecting clients,
    # spread evenly through the run
    jobs: list[tuple[str, int]] = [("good", i) for i in range(args.requests)]
    if hostile:
        extra = [("hostile", i) for i in range(args.requests // 10)] + [("disconnect", i) for i in range(args.disconnects)]
        for n, job in enumerate(extra):
            jobs.insert(round((n + 0.5) * len(jobs) / len(extra)), job)

    def one(job: tuple[str, int]) -> tuple[str, float, int | None, int | None]:
        kind, i = job
        start = time.perf_counter()
        if kind == "disconnect":
            body = good_body(i, model, urls, args, override) | {"max_tokens": args.disconnect_tokens}
            return kind, time.perf_counter() - start, None, 0 if disconnect(url, body) else None
        kwargs = {"json": good_body(i, model, urls, args, override)} if kind == "good" else hostile_request(i, model)
        try:
            reply = session.post(f"{url}/v1/chat/completions", timeout=300, **kwargs)
            ok = kind == "good" and reply.status_code == 200 and "choices" in reply.json()
            return kind, time.perf_counter() - start, reply.status_code, reply.json()["usage"]["visual_tokens"] if ok else None
        except (requests.RequestException, ValueError, KeyError):
            return kind, time.perf_counter() - start, None, None

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        outcomes = list(pool.map(one, jobs))
    wall = time.perf_counter() - start
    after = session.get(f"{url}/v1/stats", timeout=30).json()
    good = [(t, tokens) for kind, t, _, tokens in outcomes if kind == "good" and tokens is not None]
    latencies = [t for t, _ in good]
    tokens = [tokens for _, tokens in good]
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
        statuses=dict(Counter(str(status) for kind, _, status, _ in outcomes if kind == "hostile")),
        server_errors=sum(1 for _, _, status, _ in outcomes if status is not None and status >= 500),
        disconnects=sum(1 for kind, _, _, got in outcomes if kind == "disconnect" and got == 0),
    )


@dataclass
class MixedResult:
    requests: int
    errors: int
    short_p50_s: float
    short_p95_s: float
    long_p50_s: float
    long_p95_s: float
    completion_tokens: int
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s


def run_mixed(url: str, model: str, urls: list[str], args: argparse.Namespace) -> MixedResult:
    """Every ``round(1 / long_share)``-th request asks for ``long_tokens``, the rest for ``max_tokens``."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=args.concurrency))
    every = round(1 / args.long_share)

    def one(i: int) -> tuple[bool, float, int | None]:
        body = good_body(i, model, urls, args, None) | ({"max_tokens": args.long_tokens} if i % every == every - 1 else {})
        start = time.perf_counter()
        try:
            reply = session.post(f"{url}/v1/chat/completions", json=body, timeout=600)
            tokens = reply.json()["usage"]["completion_tokens"] if reply.status_code == 200 else None
        except (requests.RequestException, ValueError, KeyError):
            tokens = None
        return i % every == every - 1, time.perf_counter() - start, tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        outcomes = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - start
    short = [t for long, t, tokens in outcomes if not long and tokens is not None]
    long = [t for is_long, t, tokens in outcomes if is_long and tokens is not None]
    return MixedResult(
        requests=args.requests,
        errors=sum(1 for *_, tokens in outcomes if tokens is None),
        short_p50_s=percentile(short, 50), short_p95_s=percentile(short, 95),
        long_p50_s=percentile(long, 50), long_p95_s=percentile(long, 95),
        completion_tokens=sum(tokens for *_, tokens in outcomes if tokens is not None),
        wall_s=wall,
    )


def llm_replica_rss() -> int:
    """Resident bytes of the LLM replica's process (it reports its pid; the server is local)."""
    import psutil
    from ray import serve

    pid = serve.get_deployment_handle("HiredLLM", app_name="hired").describe.remote().result()["pid"]
    return psutil.Process(pid).memory_info().rss


def _batch_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Batches by size during the arm (the server's counters are cumulative)."""
    delta = {size: n - before.get(size, 0) for size, n in after.items()}
    return {size: n for size, n in sorted(delta.items(), key=lambda kv: int(kv[0])) if n}


def print_arms(arms: list[ArmResult]) -> None:
    print("| arm | visual tokens | p50 s | p95 s | mean s | req/s | errors | 5xx | LLM batches by size |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm in arms:
        print(f"| {arm.name} | {arm.visual_tokens:.0f} | {arm.p50_s:.3f} | {arm.p95_s:.3f} | {arm.mean_s:.3f} | "
              f"{arm.requests_per_s:.2f} | {arm.errors} | {arm.server_errors} | {arm.batches['llm']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("dropping", "hostile", "mixed"), default="dropping")
    parser.add_argument("--model", default="hired/tiny-llava-next")
    parser.add_argument("--requests", type=int, default=200, help="good requests per arm")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads")
    parser.add_argument("--disconnects", type=int, default=20, help="hostile scenario: clients that hang up mid-stream")
    parser.add_argument("--disconnect-tokens", type=int, default=512, help="max_tokens of the abandoned streams")
    parser.add_argument("--budget", default="0.2", help="HiRED budget")
    parser.add_argument("--max-tokens", type=int, default=16, help="completion tokens per request")
    parser.add_argument("--long-share", type=float, default=0.1, help="mixed scenario: share of long requests")
    parser.add_argument("--long-tokens", type=int, default=512, help="mixed scenario: max_tokens of the long requests")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=8, help="LLM requests decoding at once (continuous batching)")
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

    engine = {"max_num_seqs": args.max_num_seqs} if "max_num_seqs" in {f.name for f in fields(ServeConfig)} else {}
    config = ServeConfig(
        **engine,
        model=ModelConfig(name=args.model),
        drop=DropConfig(budget=args.budget),
        allowed_methods=("hired", "full"),
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
        max_ongoing_requests=max(64, 4 * args.concurrency),
        max_tokens_limit=max(64, args.max_tokens, args.disconnect_tokens, args.long_tokens),
    )
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir="/tmp/hired-ray-bench")
    memory: dict[str, int] = {}
    try:
        url = start(config, port=args.port)
        urls = image_urls()
        name = config.served_model_name
        warm = argparse.Namespace(**{**vars(args), "requests": 2 * args.max_batch_size})
        for override in (None, {"method": "full"}):  # first batches pay for lazy initialisation
            run_arm("warm-up", url, name, urls, override, warm)
        if args.scenario == "mixed":
            memory["before"] = llm_replica_rss()
            mixed = run_mixed(url, name, urls, args)
            time.sleep(5)
            memory["after"] = llm_replica_rss()
        elif args.scenario == "dropping":
            arms = [
                run_arm(f"hired {args.budget}", url, name, urls, None, args),
                run_arm("full", url, name, urls, {"method": "full"}, args),
            ]
        else:
            arms = [run_arm("clean", url, name, urls, None, args)]
            memory["before"] = llm_replica_rss()
            arms.append(run_arm("hostile", url, name, urls, None, args, hostile=True))
            time.sleep(5)  # abandoned rows end at their next step; let the last batch finish
            memory["after"] = llm_replica_rss()
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"\n{args.model}: {args.requests} good requests per arm at concurrency {args.concurrency}, "
          f"max_tokens {args.max_tokens}, max batch {args.max_batch_size}, batch wait {args.batch_wait_ms:g} ms; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    if args.scenario == "mixed":
        print(f"code: {engine and 'continuous batching, max_num_seqs ' + str(args.max_num_seqs) or 'serve.batch groups'}; "
              f"{args.long_share:.0%} of requests at {args.long_tokens} tokens, the rest at {args.max_tokens}")
        print("| requests | errors | short p50 s | short p95 s | long p50 s | long p95 s | completion tokens | wall s | tokens/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| {mixed.requests} | {mixed.errors} | {mixed.short_p50_s:.3f} | {mixed.short_p95_s:.3f} | {mixed.long_p50_s:.3f} | "
              f"{mixed.long_p95_s:.3f} | {mixed.completion_tokens} | {mixed.wall_s:.1f} | {mixed.tokens_per_s:.1f} |")
        print(f"LLM replica RSS: {memory['before'] / 2**20:.0f} MiB before, {memory['after'] / 2**20:.0f} MiB after "
              f"({memory['after'] / memory['before'] - 1:+.1%})")
        if args.json:
            with open(args.json, "w") as out:
                json.dump({"args": vars(args), "mixed": asdict(mixed), "llm_rss_bytes": memory}, out, indent=2)
        return
    print_arms(arms)
    if args.scenario == "dropping":
        hired, full = arms
        print(f"\nfull / hired: p50 {full.p50_s / hired.p50_s:.2f}x, p95 {full.p95_s / hired.p95_s:.2f}x, "
              f"throughput hired / full {hired.requests_per_s / full.requests_per_s:.2f}x")
    else:
        clean, hostile = arms
        print(f"\nhostile requests by status: {hostile.statuses}; disconnected mid-stream: {hostile.disconnects} "
              f"of {args.disconnects}; 5xx answers: {clean.server_errors + hostile.server_errors}")
        print(f"good requests, hostile / clean: p50 {hostile.p50_s / clean.p50_s:.2f}x, p95 {hostile.p95_s / clean.p95_s:.2f}x")
        print(f"LLM replica RSS: {memory['before'] / 2**20:.0f} MiB before, {memory['after'] / 2**20:.0f} MiB after "
              f"({memory['after'] / memory['before'] - 1:+.1%})")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "arms": [asdict(a) for a in arms], "llm_rss_bytes": memory}, out, indent=2)


if __name__ == "__main__":
    main()
