"""Pipeline benchmark (issue 3): the Ray Data job vs a bare single-process loop doing the same
work on the same images and model, in one run; pool overlap; bytes between the pools.

    python benchmarks/caption_job.py [--images 6] [--size bench] [--json OUT]

What is timed:
* loop: for each batch, read + decode + preprocess, vision tower + dropping, batched generate.
  The model is loaded before the clock starts.
* pipeline, total: ``run_job`` end to end (listing, Ray Data, actor start-up and model loading,
  writing Parquet).
* pipeline, processing window: from the start of the first actor call to the end of the last one.
  Actor start-up and model loading are a fixed cost per job (seconds, against hours for a real
  data set), so the ratio to the loop uses this window.
* both sides run with the defaults a user gets: Ray's CPU count, the pools' automatic resources
  (pipeline/batch/resources.py), dtype "auto", torch's own thread count in the loop.
* overlap: seconds both actor pools were busy at once, over the shorter pool's busy time.
* bytes: kept features sent from the vision to the LLM pool per image (``feature_bytes``).
* live metrics: the pipeline runs twice, without and with live MLflow metrics (an MLflow run in
  a SQLite store in the work folder, a step every ``--live-interval-s`` seconds, as ``hired
  caption`` logs them); ``live_vs_quiet`` is the ratio of their processing windows' throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from hired_ops import DropConfig
from pipeline.batch.config import JobConfig, PoolConfig
from pipeline.batch.driver import run_job
from pipeline.data.images import decode_image
from pipeline.data.synthetic import random_image
from pipeline.model.builtin import save_model
from pipeline.model.config import ModelConfig
from pipeline.model.generation import GenerateOptions
from pipeline.model.vlm import HiredVLM
from pipeline.tracking.live import LiveMetrics
from pipeline.tracking.runs import TrackingConfig, start_job_run

SIZES = [(672, 672), (600, 1000), (1000, 600), (480, 640), (900, 900), (500, 1200)]


def make_images(folder: Path, count: int, offset: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        height, width = SIZES[(i + offset) % len(SIZES)]
        random_image(height, width, seed=i + offset).save(folder / f"img_{i + offset:04d}.png")


def loop(model_dir: str, folder: Path, config: JobConfig) -> float:
    """The same work in one process, no Ray: returns wall seconds (model load excluded)."""
    vlm = HiredVLM.from_pretrained(model_dir, drop=config.drop, transfer_dtype=config.model.transfer_dtype)
    options = config.generate
    paths = sorted(folder.iterdir())
    batch = config.vision.batch_size
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        images = [decode_image(p.read_bytes(), str(p)) for p in paths[i : i + batch]]
        encoded = vlm.encode(images)
        vlm.generate(encoded, [config.prompt] * len(encoded), options)
    return time.perf_counter() - start


def window(summary) -> float:
    """Seconds from the first actor call's start to the last one's end."""
    spans = summary.spans["vision"] + summary.spans["llm"]
    return max(end for _, end in spans) - min(start for start, _ in spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", default="bench", choices=["tiny", "bench"])
    parser.add_argument("--batch-size", type=int, default=PoolConfig().batch_size)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--live-interval-s", type=float, default=1.0, help="live metric steps in the second run")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    cores = os.cpu_count() or 2
    # Ray's own CPU count and the pools' default resources: what `hired caption` gets
    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir="/tmp/hired-ray")
    work = Path(tempfile.mkdtemp(prefix="hired-bench-"))
    model_dir = str(save_model(work / "model", "llava-next", args.size, dtype=torch.bfloat16))
    small = work / "images"
    make_images(small, args.images)

    def job(folder: Path, output: str, budget: str | None = "0.2", method: str = "hired") -> JobConfig:
        return JobConfig(
            input=str(folder), output=str(work / output), model=ModelConfig(name=model_dir),
            drop=DropConfig(method=method, budget=budget),
            generate=GenerateOptions(max_new_tokens=args.max_new_tokens), resume=False,
            vision=PoolConfig(batch_size=args.batch_size),
            llm=PoolConfig(batch_size=args.batch_size),
            decode_batch_size=args.batch_size,
        )

    loop_s = loop(model_dir, small, job(small, "unused"))
    pipe_n = run_job(job(small, "out-hired"))
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{work / 'mlflow.db'}", experiment="bench", log_system_metrics=False)
    with start_job_run(tracking, {}) as run, LiveMetrics(run, args.live_interval_s) as live:
        pipe_live = run_job(job(small, "out-live"), on_progress=live)
    pipe_full = run_job(job(small, "out-full", budget=None, method="full"))
    window_s, live_window_s = window(pipe_n), window(pipe_live)
    busy = min(pipe_n.busy_s("vision"), pipe_n.busy_s("llm"))
    bytes_20 = pipe_n.table.column("feature_bytes").to_numpy().mean()
    bytes_full = pipe_full.table.column("feature_bytes").to_numpy().mean()
    result = {
        "machine": f"{platform.machine()}, {cores} cores, torch {torch.__version__}",
        "model": f"{args.size}-llava-next",
        "images": args.images,
        "loop_images_per_s": args.images / loop_s,
        "pipeline_images_per_s_total": args.images / pipe_n.wall_s,
        "pipeline_images_per_s_window": args.images / window_s,
        "ratio_window_vs_loop": loop_s / window_s,
        "ratio_total_vs_loop": loop_s / pipe_n.wall_s,
        "ratio_window_vs_loop_live": loop_s / live_window_s,
        "live_vs_quiet": window_s / live_window_s,
        "live_steps": live.steps_logged,
        "live_interval_s": args.live_interval_s,
        "pipeline_window_live_s": live_window_s,
        "load_average": os.getloadavg(),
        "loop_s": loop_s,
        "pipeline_window_s": window_s,
        "pipeline_total_s": pipe_n.wall_s,
        "pipeline_full_total_s": pipe_full.wall_s,
        "overlap_s": pipe_n.overlap_s(),
        "overlap_fraction_of_shorter_pool": pipe_n.overlap_s() / busy if busy else 0.0,
        "busy_s": {"vision": pipe_n.busy_s("vision"), "llm": pipe_n.busy_s("llm")},
        "feature_bytes_per_image": {"hired-20%": float(bytes_20), "full": float(bytes_full)},
        "bytes_ratio_full_vs_20": float(bytes_full / bytes_20),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
