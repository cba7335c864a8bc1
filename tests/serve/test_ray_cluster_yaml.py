"""deploy/ray-cluster-gpu.yaml: a Ray cluster-launcher file whose `emote serve` command is a real one."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from engine.cli import build_parser

yaml = pytest.importorskip("yaml", exc_type=ImportError, reason="PyYAML is not installed")

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "deploy" / "ray-cluster-gpu.yaml"


def serve_command() -> list[str]:
    """The ``emote serve`` command the file's comments give (after ``ray exec``), as arguments."""
    comments = "".join(line.lstrip("#").strip() + " " if line.startswith("#") else "\n"
                       for line in CLUSTER_YAML.read_text().splitlines())
    match = re.search(r"'(emote serve [^']+)'", comments.replace("\\ ", ""))
    assert match, "no 'emote serve ...' command in the comments"
    return shlex.split(match[1])[1:]


def test_the_cluster_file_is_an_aws_cluster_with_a_gpu_pool():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    (gpu,) = [t for name, t in types.items() if name != config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    assert gpu["node_config"]["InstanceType"].startswith(("g5.", "g6.", "g6e.", "p4", "p5"))
    assert 1 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]
    setup = " ".join(config["setup_commands"] + config["worker_setup_commands"])
    assert "[ray]" in setup and "[gpu,ray]" in setup


def test_its_serve_command_parses_and_matches_the_gpu_pool():
    args = build_parser().parse_args(serve_command())
    assert args.command == "serve" and args.ray and args.address == "auto" and args.device == "cuda"
    assert args.host == "0.0.0.0" and args.token
    low, high = (int(n) for n in args.autoscale.split(".."))
    gpu = yaml.safe_load(CLUSTER_YAML.read_text())["available_node_types"]["gpu"]
    assert (low, high) == (gpu["min_workers"], gpu["max_workers"])


def test_the_cluster_file_follows_rays_schema():
    pytest.importorskip("ray", exc_type=ImportError, reason="ray is not installed")
    jsonschema = pytest.importorskip("jsonschema", exc_type=ImportError, reason="jsonschema is not installed")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load(CLUSTER_YAML.read_text()), schema)
