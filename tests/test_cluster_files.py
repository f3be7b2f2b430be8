"""Cluster files stay in step with the CLI: their commands parse with today's options."""

from __future__ import annotations

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
    workers = spec["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_launcher_config_installs_with_the_bootstrap_script():
    config = yaml.safe_load((REPO / "cluster" / "launcher" / "cluster.yaml").read_text())
    assert config["head_node_type"] in config["available_node_types"]
    assert any("scripts/bootstrap" in command for command in config["setup_commands"])
    assert (REPO / "scripts" / "bootstrap").exists()
