"""Testbed benchmark (issue 22): what the pretrained testbed costs a job, before and after.

    python benchmarks/testbed_load.py [--before DIR] [--json OUT]

* load: :func:`pipeline.model.replica.load_half` as an actor runs it at start-up (both halves,
  two threads), each in a fresh process: the testbed by name with an empty cache (the package's
  GGUF dequantised, the parts merged, both written to the cache), with only the base cached
  (merge), and with both cached (a plain ``from_pretrained``, what every actor after the first
  pays); ``--before`` times a whole-checkpoint folder too (the from-scratch testbed's weights).
* caption: ``hired caption`` on the bundled sample images at its defaults, as the demo runs it,
  for the shipped testbed and for ``--before``; images/s is the job's own figure (the processing
  window, from the first actor call to the last).

The CPU's model and flags and the load average are printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTBED = "hired/testbed-llava-next"
LOAD = """
import sys, time, torch
start = time.perf_counter()
from hired_ops import DropConfig
from pipeline.model.config import ModelConfig
from pipeline.model.replica import load_half
imported = time.perf_counter()
load_half(ModelConfig(name=sys.argv[1]), DropConfig(), sys.argv[2], 2)
print(time.perf_counter() - imported)
"""


def load_seconds(name: str, half: str, cache: Path) -> float:
    """Seconds ``load_half`` takes in a fresh process (imports excluded)."""
    env = {**os.environ, "HIRED_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", LOAD, name, half], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def caption_images_per_s(model: str, cache: Path, work: Path) -> dict:
    """``hired caption`` on the sample images at its defaults; the job's reported images/s."""
    env = {**os.environ, "HIRED_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    output = work / f"captions-{len(list(work.iterdir()))}"
    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "hired"), "caption", str(REPO / "samples" / "images"), "--output", str(output),
         "--model", model],  # MLflow on, as at the defaults: ./mlflow.db in the work folder
        env=env, cwd=work, capture_output=True, text=True, check=True,
    )
    rate = re.search(r"([\d.]+) images/s", done.stdout)
    return {"images_per_s": float(rate.group(1)) if rate else None, "wall_s": time.perf_counter() - start,
            "summary": done.stdout.strip().splitlines()[-3:]}


def machine() -> dict:
    flags = set()
    if Path("/proc/cpuinfo").exists():
        line = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), "")
        flags = set(line.split(":", 1)[-1].split())
    name = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    return {"cpu": name, "flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}), "cores": os.cpu_count(),
            "load": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="a whole checkpoint folder to compare with (e.g. the from-scratch testbed)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="hired-bench-") as scratch:
        cache, work = Path(scratch) / "cache", Path(scratch) / "work"
        work.mkdir()
        result["load_cold_s"] = load_seconds(TESTBED, "language", cache)  # dequantise + merge + write both
        shutil.rmtree(next(p for p in cache.iterdir() if p.is_dir() and p.name.startswith("weights-")))
        result["load_base_cached_s"] = load_seconds(TESTBED, "language", cache)  # merge only
        result["load_warm_s"] = {half: load_seconds(TESTBED, half, cache) for half in ("vision", "language")}
        result["caption"] = caption_images_per_s(TESTBED, cache, work)
        if args.before:
            result["before_load_s"] = {half: load_seconds(args.before, half, cache) for half in ("vision", "language")}
            result["before_caption"] = caption_images_per_s(args.before, cache, work)
    result["machine"]["load_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    if args.before:
        print(f"warm load (language half): {result['load_warm_s']['language']:.1f} s vs {result['before_load_s']['language']:.1f} s before; "
              f"cold {result['load_cold_s']:.1f} s; caption {result['caption']['images_per_s']} vs "
              f"{result['before_caption']['images_per_s']} images/s before")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
