"""cluster.yaml is a valid Ray cluster launcher config with an autoscaling GPU worker type.

Checked offline: Ray's own JSON schema (ray/autoscaler/ray-schema.json), then the checks `ray up` runs before it
contacts the cloud (`prepare_config` + `validate_config`), then what yoloray needs from it.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    assert isinstance(config, dict)
    return config


def _ray_schema() -> dict:
    spec = importlib.util.find_spec("ray")  # locates the installed package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    if not path.is_file():
        pytest.skip(f"this ray ships no cluster config schema at {path}")
    return json.loads(path.read_text())


def test_matches_rays_cluster_config_schema(cluster):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(cluster, _ray_schema())


def test_passes_rays_offline_config_checks(cluster):
    """What `ray up` does before any cloud call: merge the provider defaults, then validate."""
    pytest.importorskip("jsonschema")
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(json.loads(json.dumps(cluster)))
    util.validate_config(prepared)
    assert prepared["head_node_type"] == cluster["head_node_type"]
    assert prepared["available_node_types"][cluster["head_node_type"]]["max_workers"] == 0


def test_required_top_level_keys(cluster):
    for key in (
        "cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
        "file_mounts", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
    ):
        assert key in cluster, f"cluster.yaml lacks {key!r}"
    assert cluster["provider"]["type"] == "aws" and cluster["provider"].get("region")
    assert cluster["auth"].get("ssh_user")
    assert isinstance(cluster["max_workers"], int) and cluster["max_workers"] > 0


def test_cpu_head_node_type(cluster):
    types = cluster["available_node_types"]
    head = types.get(cluster["head_node_type"])
    assert head is not None, f"head_node_type {cluster['head_node_type']!r} is not in available_node_types"
    assert head.get("min_workers", 0) == 0 and head.get("max_workers", 0) == 0
    assert head["resources"].get("CPU", 0) > 0
    assert head["resources"].get("GPU", 0) == 0
    assert head["node_config"].get("InstanceType")


def test_autoscaling_gpu_worker_type(cluster):
    types = cluster["available_node_types"]
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, "no node type advertises GPUs"
    assert cluster["head_node_type"] not in gpu
    for name, t in gpu.items():
        assert t.get("min_workers", 0) == 0 < t["max_workers"] <= cluster["max_workers"], name
        assert t["resources"].get("CPU", 0) >= 1, f"{name}: reading and decoding need CPUs next to the GPU"
        assert t["node_config"].get("InstanceType"), name
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster["max_workers"]


def test_repo_is_synced_and_installed(cluster):
    mounts = {remote: local for remote, local in cluster["file_mounts"].items()}
    repo = [remote for remote, local in mounts.items() if local in (".", "./")]
    assert repo, f"file_mounts must sync the repository ('.'), got {mounts}"
    remote = repo[0]
    install = [
        c for c in cluster["setup_commands"]
        if re.search(r"pip install\b.*\s-e\s+\.(\s|$|\[)", c) and f"cd {remote}" in c
    ]
    assert install, "setup_commands must `pip install -e .` inside the synced repository"
    assert "-c constraints.txt" in install[0], "install at the pinned versions, so the cluster runs this Ray"
    assert (ROOT / "constraints.txt").is_file()
    excluded = set(cluster.get("rsync_exclude", []))
    assert {".venv", ".git"} <= excluded, "never upload the local virtualenv or git history"


def test_start_commands_start_ray(cluster):
    head = " ; ".join(cluster["head_start_ray_commands"])
    worker = " ; ".join(cluster["worker_start_ray_commands"])
    assert re.search(r"\bray start --head\b", head)
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head, "the head runs the autoscaler"
    assert re.search(r"\bray start --address=\$RAY_HEAD_IP:\d+", worker)
    port = re.search(r"--port=(\d+)", head)
    assert port and f"$RAY_HEAD_IP:{port.group(1)}" in worker, "workers join the head's GCS port"
