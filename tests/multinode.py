"""A real three-node Ray cluster on 127.0.0.1 running one caption job submitted with
``ray job submit``; one worker node is killed mid-job. Run by tests/test_multinode.py inside a
network namespace of its own (``unshare -n``), where ``lo`` is the only interface, so every node
is 127.0.0.1 and nothing leaves the namespace.

Usage: python tests/multinode.py INPUT OUTPUT RESULT.json
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
DASHBOARD = "http://127.0.0.1:8265"
GCS = "127.0.0.1:6380"


def ray_start(*args: str, env: dict, log: Path) -> subprocess.Popen:
    """One node; ``--block`` keeps its processes in a session of their own, so killing that
    process group is losing the node (``ray stop`` would stop every Ray process on the host,
    other users' included: never used here)."""
    command = [RAY, "start", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", *args]
    with log.open("w") as handle:
        return subprocess.Popen([*command, "--block"], env=env, start_new_session=True, stdout=handle, stderr=handle)


def wait_for_nodes(count: int, env: dict, deadline: float, temp: str) -> None:
    while time.time() < deadline:
        status = subprocess.run([RAY, "status", "--address", GCS], env=env, capture_output=True, text=True)
        if status.stdout.count("node_") >= count:
            return
        time.sleep(1)
    logs = "".join(p.read_text()[-1500:] for p in sorted(Path(temp).glob("*.log")))
    raise TimeoutError(f"{count} nodes did not come up: {status.stdout[:1500]}\n{logs}")


def main(input_dir: str, output: str, result_path: str) -> None:
    temp = tempfile.mkdtemp(prefix="hired-mn-", dir="/tmp")
    # a loaded two-core host can take longer than Ray's default 30 s to register a raylet
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "PYTHONPATH": str(REPO),
           "RAY_raylet_start_wait_time_s": "150"}
    deadline = time.time() + 180
    nodes = [ray_start("--head", "--port", GCS.split(":")[1], "--num-cpus", "0", "--temp-dir", temp,
                       "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", "8265",
                       env=env, log=Path(temp) / "head.log")]
    workers: list[subprocess.Popen] = []
    result: dict = {}
    try:
        wait_for_nodes(1, env, deadline, temp)
        for i in range(2):  # one at a time: two raylets registering at once overload the GCS here
            workers.append(ray_start(
                "--address", GCS, "--num-cpus", "2", "--resources", json.dumps({"worker": 2}),
                "--dashboard-agent-listen-port", str(52400 + i), "--metrics-export-port", str(52500 + i),
                "--min-worker-port", str(20000 + 1000 * i), "--max-worker-port", str(20999 + 1000 * i),
                "--node-name", f"worker-{i}", env=env, log=Path(temp) / f"worker-{i}.log",
            ))
            wait_for_nodes(2 + i, env, deadline, temp)
        runtime_env = {"env_vars": {k: env[k] for k in ("PYTHONPATH", "RAY_AUTH_MODE", "HF_HUB_OFFLINE") if k in env}}
        entry = [
            sys.executable, "-m", "jobs.cli", "caption", input_dir, "--output", output, "--no-tracking",
            "--model", "hired/tiny-llava-next",
            "--max-new-tokens", "12", "--decode-batch-size", "2", "--min-rows-per-file", "2", "--vision-batch-size", "2", "--llm-batch-size", "2",
            "--vision-resources", json.dumps({"worker": 0.5}), "--llm-resources", json.dumps({"worker": 0.5}),
            "--decode-resources", json.dumps({"worker": 0.25}),
        ]
        job_log = Path(temp) / "job.log"
        with job_log.open("w") as handle:
            submit = subprocess.Popen(
                [RAY, "job", "submit", "--address", DASHBOARD, "--submission-id", "hired-mn",
                 "--runtime-env-json", json.dumps(runtime_env), "--", *entry],
                env=env, stdout=handle, stderr=subprocess.STDOUT, text=True,
            )
        # lose a node mid-job: once the LLM actor is up (the vision pool is working by then) or a
        # first file lands, whichever comes first
        lost = None
        while time.time() < deadline + 90 and submit.poll() is None and lost is None:
            time.sleep(1)
            lost = llm_node(env) if not list(Path(output).glob("*.parquet")) else llm_node(env, any_state=True)
        import pyarrow.parquet as pq

        result["rows_before_kill"] = sum(pq.read_metadata(p).num_rows for p in Path(output).glob("*.parquet"))
        result["running_at_kill"] = submit.poll() is None
        result["killed"] = lost = lost or 0
        os.killpg(workers[lost].pid, signal.SIGKILL)
        workers[lost].wait()
        submit.wait(timeout=max(30, deadline + 200 - time.time()))
        result.update(returncode=submit.returncode, logs=job_log.read_text()[-4000:], nodes_with_tasks=nodes_with_tasks(env))
    finally:
        Path(result_path).write_text(json.dumps(result))
        for node in [*workers, *nodes]:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)


def llm_node(env: dict, any_state: bool = False) -> int | None:
    """The worker index (0 or 1) whose node runs the live LLM actor (None while there is none;
    with ``any_state``, worker 0 then)."""
    from ray.util.state import list_actors, list_nodes

    names = {n.node_id: n.node_name for n in list_nodes(address=DASHBOARD, raise_on_missing_output=False)}
    for actor in list_actors(address=DASHBOARD, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False):
        if "LLMStage" in (actor.class_name or ""):
            return int(names[actor.node_id].rsplit("-", 1)[1])
    return 0 if any_state else None


def nodes_with_tasks(env: dict) -> int:
    """Worker nodes that ran any of the job's Ray Data tasks or actors (from Ray's state API)."""
    import ray
    from ray.util.state import list_actors, list_tasks

    ray.init(address=GCS, log_to_driver=False)
    try:
        nodes = {t.node_id for t in list_tasks(address=DASHBOARD, limit=10000, detail=True, raise_on_missing_output=False)
                 if "MapBatches" in (t.name or "") and t.node_id}
        nodes |= {a.node_id for a in list_actors(address=DASHBOARD, limit=1000, detail=True, raise_on_missing_output=False)
                  if "MapBatches" in (a.class_name or "") and a.node_id}
        return len(nodes)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
