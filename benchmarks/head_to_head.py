"""Head to head (issue 17): this project against what a user would run instead, same model, same
images, one run.

    python benchmarks/head_to_head.py [--model bench|7b] [--images 4 12] [--max-new-tokens 32]
        [--height 480 --width 640] [--batch-size 4] [--skip-processes] [--json OUT]

(a) Whole processes, as a user runs them (each a subprocess, defaults on both sides):
    ``hired caption FOLDER --method hired --budget 0.2`` against ``benchmarks/plain_script.py``
    (stock processor -> ``model.generate``, every visual token, batch ``--batch-size``), at two
    folder sizes. Time per image free of start-up = (wall_2 - wall_1) / (images_2 - images_1);
    start-up = wall_1 - images_1 * time per image (imports, Ray, model load). The plain script
    runs twice: at its own default dtype (the checkpoint's) and at the job's dtype, so one
    ratio is "defaults against defaults" and one "same dtype". The job's own columns say where
    its time went (decode, vision, generate, per image).
(b) In process, steady state (the model loaded once, one warm-up batch): this project's two
    halves (encode+drop, then generate) at 20% and 40% against processor -> ``model.generate``
    at full tokens, same batches, same dtype (the job's "auto"): images/s, time to first token
    (from the batch's start, so the tower counts), peak memory (see ``PeakMemory``), and
    the tower's own time per image (the floor for any budget).

Numbers depend on the machine's CPU flags and load: both are printed with the results. The
``7b`` model (Vicuna-7B shapes with the CLIP-L/336 tower, random weights built on the device) is
for a GPU: timers are CUDA-synchronised and memory is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from hired_ops import DropConfig, vision_tower
from hired_ops.vision import run_tower
from pipeline.data.synthetic import random_image
from pipeline.model.builtin import save_model
from pipeline.model.generation import DEFAULT_PROMPT, GenerateOptions
from pipeline.model.loading import cpu_flags, load_model, pick_device, pick_dtype
from pipeline.model.pixels import uint8_tiles
from pipeline.model.vlm import HiredVLM, _FirstTokenClock

REPO = Path(__file__).resolve().parents[1]
FLAGS_OF_NOTE = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict:
    """CPU model, the flags that decide the dtype, cores, load average, GPU if any."""
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {
        "cpu": model,
        "cpu_flags": [f for f in FLAGS_OF_NOTE if f in cpu_flags()],
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def make_folder(folder: Path, count: int, height: int, width: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        random_image(height, width, seed=i).save(folder / f"img_{i:04d}.png")
    return folder


# -- (a) whole processes -------------------------------------------------------------------------


def timed_process(command: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


def per_image(walls: dict[int, float]) -> dict:
    """Time per image free of start-up, and the start-up, from walls at two image counts."""
    (n1, w1), (n2, w2) = sorted(walls.items())
    slope = (w2 - w1) / (n2 - n1)
    return {"walls_s": {str(n): w for n, w in walls.items()}, "s_per_image": slope, "startup_s": w1 - n1 * slope}


def whole_processes(args, model_dir: str, folders: dict[int, Path], work: Path, job_dtype: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # a local job, as a user on this machine starts it
    python = sys.executable
    tokens = ["--max-new-tokens", str(args.max_new_tokens)]
    job_walls, plain_walls, same_walls, where = {}, {}, {}, {}
    for count, folder in folders.items():
        out = work / f"job-{count}"
        job = [python, "-m", "jobs.cli", "caption", str(folder), "--output", str(out), "--model", model_dir]
        job_walls[count], _ = timed_process(job + ["--method", "hired", "--budget", "0.2", "--no-tracking", *tokens], env)
        plain = [python, "benchmarks/plain_script.py", str(folder), "--model", model_dir, "--batch-size", str(args.batch_size), *tokens]
        plain_walls[count], _ = timed_process(plain, env)
        same_walls[count], _ = timed_process(plain + ["--dtype", job_dtype], env)
        table = pq.read_table(str(out))
        where = {f"{c}_mean": float(np.mean(table.column(c).to_numpy())) for c in ("decode_s", "vision_s", "generate_s", "pixel_bytes")}
    job, plain, same = per_image(job_walls), per_image(plain_walls), per_image(same_walls)
    return {
        "job": job | {"dtype": job_dtype, "where_time_goes_per_row": where},
        "plain_default_dtype": plain,
        "plain_same_dtype": same | {"dtype": job_dtype},
        "speedup_vs_plain_defaults": plain["s_per_image"] / job["s_per_image"],
        "speedup_vs_plain_same_dtype": same["s_per_image"] / job["s_per_image"],
    }


# -- (b) in process -------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory during a block. CUDA: the allocator's peak above the block's start. CPU: the
    process's peak resident set, model included, sampled every 5 ms (torch's CPU allocations are
    invisible to tracemalloc, and freed memory stays cached, so "above the start" reads ~0 after
    a warm-up)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        self.base, self.running = 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, _rss() - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.running = False
            self.thread.join()


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady(run_batch: Callable[[list], float], batches: list[list], device: torch.device) -> dict:
    """Time ``run_batch`` (returns its TTFT) over ``batches`` after one warm-up batch."""
    run_batch(batches[0])
    ttfts = []
    with PeakMemory(device) as memory:
        _sync(device)
        start = time.perf_counter()
        for batch in batches:
            ttfts.append(run_batch(batch))
        _sync(device)
        wall = time.perf_counter() - start
    images = sum(len(b) for b in batches)
    return {"images_per_s": images / wall, "s_per_image": wall / images, "ttft_s": float(np.mean(ttfts)), "peak_mem_mb": memory.peak / 2**20}


def in_process(args, model, processor, images: list) -> dict:
    device = next(model.parameters()).device
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    vlm = HiredVLM(model, processor)
    options = GenerateOptions(max_new_tokens=args.max_new_tokens)
    text = vlm.format_prompt(DEFAULT_PROMPT)

    def stock(batch: list) -> float:
        start, clock = time.perf_counter(), _FirstTokenClock()
        inputs = processor(images=batch, text=[text] * len(batch), return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            model.generate(**inputs.to(model.dtype), max_new_tokens=args.max_new_tokens, do_sample=False, logits_processor=[clock])
        return clock.first - start

    def ours(budget: str) -> Callable[[list], float]:
        def run(batch: list) -> float:
            start = time.perf_counter()
            encoded = vlm.encode(batch, DropConfig(method="hired", budget=budget))
            _sync(device)
            encode_s = time.perf_counter() - start
            return encode_s + vlm.generate(encoded, [DEFAULT_PROMPT] * len(batch), options)[0].ttft_s

        return run

    results = {"stock_full_tokens": steady(stock, batches, device)}
    for budget in ("0.2", "0.4"):
        results[f"hired_{budget}"] = steady(ours(budget), batches, device)
        results[f"hired_{budget}"]["speedup_vs_stock"] = results["stock_full_tokens"]["s_per_image"] / results[f"hired_{budget}"]["s_per_image"]
    results["tower_s_per_image"] = tower_time(vlm, images)
    return results


def tower_time(vlm: HiredVLM, images: list) -> float:
    """The vision tower alone (all partitions, the layers LLaVA reads), per image."""
    tower = vision_tower(vlm.model)
    tiles = [vlm.tower_input(torch.from_numpy(uint8_tiles(vlm.processor.image_processor, image))) for image in images]
    with torch.inference_mode():
        run_tower(tower, tiles[0], vlm.geometry.layers_to_run)
        _sync(vlm.device)
        start = time.perf_counter()
        for pixels in tiles:
            run_tower(tower, pixels, vlm.geometry.layers_to_run)
        _sync(vlm.device)
    return (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["bench", "7b"], default="bench")
    parser.add_argument("--images", type=int, nargs=2, default=[4, 12], metavar=("SMALL", "LARGE"), help="(a): the two folder sizes; (b) uses LARGE")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=GenerateOptions().max_new_tokens)
    parser.add_argument("--skip-processes", action="store_true", help="only (b); (a) needs Ray and a saved model")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    small, large = sorted(args.images)
    if small >= large:
        raise SystemExit("--images needs two different counts")
    work = Path(tempfile.mkdtemp(prefix="hired-h2h-"))
    folders = {n: make_folder(work / f"images-{n}", n, args.height, args.width) for n in (small, large)}
    device = pick_device()
    dtype = str(pick_dtype(device)).removeprefix("torch.")
    result = {"machine_before": machine(), "model": f"hired/{args.model}-llava-next", "dtype_auto": dtype, "args": vars(args)}
    if not args.skip_processes:
        if args.model != "bench":
            raise SystemExit("(a) runs the saved bench model; pass --skip-processes with --model 7b")
        model_dir = str(save_model(work / "model", "llava-next", "bench", dtype=torch.bfloat16))
        result["a_whole_processes"] = whole_processes(args, model_dir, folders, work, dtype)
        print(json.dumps({"a_whole_processes": result["a_whole_processes"]}), flush=True)  # in case (b) is cut short
    model, processor = load_model(f"hired/{args.model}-llava-next", device=str(device))
    images = [random_image(args.height, args.width, seed=i) for i in range(large)]
    result["b_in_process"] = in_process(args, model, processor, images)
    if "a_whole_processes" in result:
        job = result["a_whole_processes"]["job"]["s_per_image"]
        result["job_vs_in_process_at_20"] = job / result["b_in_process"]["hired_0.2"]["s_per_image"]
    result["machine_after"] = machine()
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
