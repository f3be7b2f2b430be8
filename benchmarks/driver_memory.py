"""Driver memory as the dataset grows (issue 10): peak RSS of the driver process and time to the
first written row, over inline-bytes Parquet manifests and the same rows as WebDataset shards;
and the output files each run leaves (count, rows per file min / median / max, mean size).

    python benchmarks/driver_memory.py [--sizes 2000 20000 100000] [--limit 500]
        [--full 2000 10000] [--forms parquet webdataset] [--json OUT] [--workdir DIR]

Each measurement is its own process (a fresh driver, a fresh local Ray), with the tiny built-in
model and one new token per row, so the numbers are the data path's, not the model's. Peak RSS
is the driver process's own (``ru_maxrss``), Ray's worker processes not counted. Targets: the
``--limit`` runs within 1.25x of each other across sizes and forms; the full runs too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROWS_PER_FILE = 1000  # rows per Parquet row group and per tar shard


def jpeg_of_about(size: int, seed: int = 0) -> bytes:
    """A noise JPEG of roughly ``size`` bytes (noise does not compress)."""
    side = int((size / 0.94) ** 0.5)
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_inputs(folder: Path, rows: int, image: bytes) -> tuple[Path, str]:
    """``rows`` distinct images (trailing bytes after the JPEG end marker differ, so Parquet can
    not dictionary-encode them away) as one manifest and as shards; returns both inputs."""
    manifest = folder / f"inline-{rows}.parquet"
    shards = folder / f"wds-{rows}"
    if not manifest.exists():
        shards.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(manifest, pa.schema([("image_bytes", pa.binary())])) as writer:
            for start in range(0, rows, ROWS_PER_FILE):
                chunk = [image + i.to_bytes(8, "big") for i in range(start, min(rows, start + ROWS_PER_FILE))]
                writer.write_table(pa.table({"image_bytes": pa.array(chunk, pa.binary())}))
                with tarfile.open(shards / f"shard-{start // ROWS_PER_FILE:05d}.tar", "w") as tar:
                    for offset, data in enumerate(chunk):
                        info = tarfile.TarInfo(f"{start + offset:08d}.jpg")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    last = (rows - 1) // ROWS_PER_FILE
    return manifest, str(shards / f"shard-{{00000..{last:05d}}}.tar")


def measure(input: str, output: str, limit: int | None) -> dict:
    """One job in this process: driver peak RSS and seconds to the first written row."""
    from pipeline.batch.config import JobConfig, PoolConfig
    from pipeline.batch.driver import run_job
    from pipeline.model.config import ModelConfig
    from pipeline.model.generation import GenerateOptions

    start = time.perf_counter()
    first: list[float] = []
    config = JobConfig(
        input=input, output=output, limit=limit, model=ModelConfig(name="hired/tiny-llava-next"),
        generate=GenerateOptions(max_new_tokens=1),
        vision=PoolConfig(batch_size=16), llm=PoolConfig(batch_size=16), decode_batch_size=16,
    )
    summary = run_job(config, figures=0, on_progress=lambda p: first or first.append(time.perf_counter() - start))
    files = sorted(Path(output).glob("*.parquet"))
    rows_per_file = [pq.read_metadata(f).num_rows for f in files]
    return {
        "files": len(files),
        "rows_per_file": [min(rows_per_file, default=0), int(np.median(rows_per_file)) if files else 0, max(rows_per_file, default=0)],
        "kb_per_file": round(sum(f.stat().st_size for f in files) / max(1, len(files)) / 1024, 1),
        "rows": summary.images,
        "errors": summary.errors,
        "wall_s": round(summary.wall_s, 1),
        "first_row_s": round(first[0], 1) if first else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_one(input: str, limit: int | None, workdir: Path) -> dict:
    output = tempfile.mkdtemp(prefix="out-", dir=workdir)
    command = [sys.executable, __file__, "--one", input, "--output", output]
    # always explicit: the child's own --limit default would otherwise cap a full run
    command += ["--limit", "none" if limit is None else str(limit)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 20000, 100000])
    parser.add_argument("--limit", type=lambda text: None if text == "none" else int(text), default=500)
    parser.add_argument("--full", type=int, nargs="*", default=[2000, 10000])
    parser.add_argument("--image-bytes", type=int, default=50_000)
    parser.add_argument("--forms", nargs="*", choices=("parquet", "webdataset"), default=["parquet", "webdataset"])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "hired-driver-memory")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.output, args.limit)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    image = jpeg_of_about(args.image_bytes)
    results = []
    for rows in sorted(set(args.sizes) | set(args.full)):
        manifest, shards = make_inputs(args.workdir, rows, image)
        runs = [("limit", args.limit)] * (rows in args.sizes) + [("full", None)] * (rows in args.full)
        for kind, limit in runs:
            for form, input in (("parquet", str(manifest)), ("webdataset", shards)):
                if form not in args.forms:
                    continue
                result = {"rows_in_input": rows, "run": kind, "form": form, **run_one(input, limit, args.workdir)}
                result["load"] = os.getloadavg()[0]
                print(json.dumps(result), flush=True)
                results.append(result)
    for kind in ("limit", "full"):
        peaks = [r["peak_rss_mb"] for r in results if r["run"] == kind]
        if peaks:
            print(f"{kind}: driver peak RSS {min(peaks):.0f}-{max(peaks):.0f} MB, ratio {max(peaks) / min(peaks):.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
