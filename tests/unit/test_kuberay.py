"""The KubeRay manifests (deploy/kuberay/) are valid RayJob / RayService objects, checked offline.

Each RayJob / RayService document is validated against its CRD's `openAPIV3Schema` (KubeRay's CRDs, kept
beside the repository in ../shared/kuberay/; YOLORAY_KUBERAY_CRDS overrides the folder) with `jsonschema`,
plus what the API server would silently prune: a field the schema does not know (a typo) fails here. Then
what yoloray needs from them: GPU worker groups that autoscale, entrypoints that yoloray's own parsers accept,
and a Serve config that passes `yoloray serve`'s check.
"""

from __future__ import annotations

import os
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kuberay").glob("*.yaml"))
CRD_DIR = Path(os.environ.get("YOLORAY_KUBERAY_CRDS") or ROOT.parent / "shared" / "kuberay")
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}


def documents() -> list[tuple[str, dict]]:
    return [(f"{p.name}#{i}", d) for p in MANIFESTS for i, d in enumerate(yaml.safe_load_all(p.read_text())) if d]


def ray_documents(kind: str | None = None) -> list[tuple[str, dict]]:
    return [(n, d) for n, d in documents() if d["kind"] in CRD_FILES and (kind is None or d["kind"] == kind)]


@cache
def crd_schema(kind: str) -> dict:
    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"KubeRay CRD {path} not found (CI has ../shared/kuberay beside the clone; set "
                    "YOLORAY_KUBERAY_CRDS to the folder that holds ray.io_rayjobs.yaml)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1.4 MB
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


@cache
def crd_validator(kind: str):
    """A validator for the CRD's schema, built once (jsonschema.validate re-checks a 1 MB schema per call)."""
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.validators.validator_for({})(crd_schema(kind))


def unknown_fields(value, schema: dict, where: str = "") -> list[str]:
    """Paths of keys the schema does not declare (Kubernetes would drop them without a word)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out = []
    if isinstance(value, dict) and schema.get("type") == "object":
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                out += unknown_fields(v, props[k], f"{where}.{k}")
            elif isinstance(extra, dict):
                out += unknown_fields(v, extra, f"{where}.{k}")
            elif props is not None and not extra:
                out.append(f"{where}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += unknown_fields(v, schema["items"], f"{where}[{i}]")
    return out


def test_the_manifests_exist():
    kinds = sorted(d["kind"] for _, d in ray_documents())
    assert kinds == ["RayJob", "RayJob", "RayService"], kinds


@pytest.mark.parametrize("name,doc", ray_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_valid_against_the_crd(name, doc):
    schema = crd_schema(doc["kind"])
    assert doc["apiVersion"] == "ray.io/v1"
    crd_validator(doc["kind"]).validate(doc)
    assert unknown_fields(doc["spec"], schema["properties"]["spec"], "spec") == []


def test_a_typo_is_caught():
    """The checks above would fail on a misspelt field and a wrong type."""
    jsonschema = pytest.importorskip("jsonschema")
    _, doc = ray_documents("RayJob")[0]
    schema = crd_schema("RayJob")
    bad = yaml.safe_load(yaml.safe_dump(doc))
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    assert unknown_fields(bad["spec"], schema["properties"]["spec"], "spec") == [
        "spec.rayClusterSpec.workerGroupSpecs[0].maxReplica"
    ]
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplicas"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        crd_validator("RayJob").validate(bad)


def cluster_of(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


@pytest.mark.parametrize("name,doc", ray_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_gpu_workers_autoscale(name, doc):
    cluster = cluster_of(doc)
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"].startswith("2.60")
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # metrics: every node exports on the same port, so one Prometheus scrape config finds them all
    ports = {g["rayStartParams"]["metrics-export-port"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]}
    assert ports == {"8080"}


def test_entrypoints_parse():
    from yoloray.cli import build_parser
    from yoloray.tune.sweep import build_parser as tune_parser

    for name, doc in ray_documents("RayJob"):
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "yoloray", name
        if argv[1] == "infer":
            args = build_parser().parse_args(argv[1:])
            assert args.address == "auto" and args.out.startswith("s3://")
        else:
            assert argv[1] == "tune", name
            args = tune_parser().parse_args(argv[2:])
            assert args.address == "auto" and args.out.startswith("/runs/")


def test_serve_config_passes_yoloray_check(tmp_path):
    from yoloray.serve.app import applications_from, load_serve_config

    (_, doc), = ray_documents("RayService")
    path = tmp_path / "serve.yaml"
    path.write_text(doc["spec"]["serveConfigV2"])
    schema = load_serve_config(path)
    apps = applications_from(schema, source="rayservice.yaml")
    assert [a["name"] for a in apps] == ["yoloray"]
    (deployment,) = schema.applications[0].deployments
    d = deployment.model_dump(exclude_unset=True)
    assert d["ray_actor_options"]["num_gpus"] == 1
    assert d["autoscaling_config"]["max_replicas"] > d["autoscaling_config"]["min_replicas"]
