"""Cluster files stay in step with the CLI: their commands parse with today's options."""

from __future__ import annotations

import json
import shlex

import yaml

from jobs.cli import build_parser
from tests.conftest import REPO


def test_kuberay_entrypoint_parses_with_the_cli():
    spec = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob-caption.yaml").read_text())
    assert spec["kind"] == "RayJob"
    command = shlex.split(spec["spec"]["entrypoint"])
    assert command[0] == "hired"
    args = build_parser().parse_args(command[1:])
    assert args.command == "caption" and args.method == "hired" and args.vision_num_gpus == 0.25
    assert args.retry_errors and args.vision_max_size == 8 and args.decode_resources == {"decode_cpu": 1}
    groups = {g["groupName"]: g for g in spec["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    assert groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # every custom resource a pool asks for is declared by some node group
    declared = {name for g in groups.values() for name in _declared(g["rayStartParams"].get("resources", "{}"))}
    asked = set(args.vision_resources) | set(args.llm_resources) | set(args.decode_resources)
    assert asked <= declared, asked - declared
    assert "HF_HUB_OFFLINE" in yaml.safe_load(spec["spec"]["runtimeEnvYAML"])["env_vars"]


def _declared(text: str) -> dict:
    """KubeRay's rayStartParams resources: a JSON object inside one more pair of quotes."""
    return json.loads(json.loads(text)) if text.startswith('"') else json.loads(text)


def test_rayservice_runs_the_serve_app_and_runtime_env_parses():
    spec = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    assert spec["kind"] == "RayService"
    apps = yaml.safe_load(spec["spec"]["serveConfigV2"])["applications"]
    serve = yaml.safe_load((REPO / "cluster" / "serve" / "serve_config.yaml").read_text())["applications"]
    assert apps[0]["import_path"] == serve[0]["import_path"]
    runtime = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert runtime["working_dir"] == "." and ".git" in runtime["excludes"]


def test_launcher_declares_what_the_documented_submit_asks_for():
    config = yaml.safe_load((REPO / "cluster" / "launcher" / "cluster.yaml").read_text())
    declared = {name for node in config["available_node_types"].values() for name in node["resources"]}
    assert {"decode_cpu", "vision_gpu", "llm_gpu"} <= declared


def test_launcher_config_installs_with_the_bootstrap_script():
    config = yaml.safe_load((REPO / "cluster" / "launcher" / "cluster.yaml").read_text())
    assert config["head_node_type"] in config["available_node_types"]
    assert any("scripts/bootstrap" in command for command in config["setup_commands"])
    assert (REPO / "scripts" / "bootstrap").exists()
