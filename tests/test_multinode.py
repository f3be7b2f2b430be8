"""A caption job on a real multi-node Ray cluster (head + two workers, all on 127.0.0.1 inside a
network namespace the test makes), submitted with ``ray job submit``; a worker node is killed
mid-job and every row is still written exactly once. Needs root (``unshare -n``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipeline.data.synthetic import random_image
from tests.conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for unshare -n"),
]

ROWS = 16


def test_worker_node_lost_mid_job_every_row_once(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(ROWS):
        random_image(300 + 10 * i, 400, seed=i).save(folder / f"img_{i:02d}.png")
    out, result_file = tmp_path / "out", tmp_path / "result.json"
    scenario = f"ip link set lo up && exec {sys.executable} {REPO / 'tests' / 'multinode.py'} {folder} {out} {result_file}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(["unshare", "-n", "sh", "-c", scenario], env=env, capture_output=True, text=True, timeout=480)
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    assert result.get("returncode") == 0, (done.stderr[-3000:], result.get("logs"))
    assert result["running_at_kill"] and result["rows_before_kill"] < ROWS, "the node must be lost mid-job"
    ids = [i for path in sorted(out.glob("*.parquet")) for i in pq.read_table(path, columns=["id"]).column("id").to_pylist()]
    assert sorted(ids) == [f"img_{i:02d}.png" for i in range(ROWS)], "every row exactly once"
    assert result["nodes_with_tasks"] == 2, "both worker nodes did work"
