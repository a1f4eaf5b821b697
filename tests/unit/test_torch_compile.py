"""backend torch-compile on the CPU: the AOTInductor package is built once into the artifact cache, a second
engine (here, and in another process) loads it without compiling, and its detections match the exact path.

Tolerance: exact mode (every reference box matched at IoU >= 0.99, score within 1e-3, no extra box): Inductor's
fp32 kernels compute the same convolutions as eager torch, fused. One compile of the demo detector (YOLOv8n) takes
about two minutes on the 2-core development machine; every other engine here loads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yoloray.config import Profile
from yoloray.detector import Detector
from yoloray.engines import build_engine
from yoloray.engines import torch_backend as backend
from yoloray.fidelity import compare
from yoloray.profile import EXACT_PATH

SHAPE = (384, 640)


@pytest.fixture(scope="module")
def compiled(demo_model, tmp_path_factory):
    cache = tmp_path_factory.mktemp("compile-cache")
    cfg = Profile.parse({**EXACT_PATH, "model": demo_model, "backend": "torch-compile", "device": "cpu",
                         "imgsz": SHAPE, "batch_size": 4, "conf": 0.25, "cache_dir": str(cache)})
    return cfg, build_engine(cfg, torch.device("cpu"))


def test_compiled_once_into_the_cache(compiled):
    cfg, engine = compiled
    assert [e[2] for e in engine.artifact_events] == ["built"]
    assert len(list(Path(cfg.cache_dir).glob("torch-compile/*/model.pt2"))) == 1
    assert engine.static_batch == 4  # compiled for one input shape: short batches are padded


def test_second_engine_loads_without_compiling(compiled, monkeypatch):
    cfg, first = compiled

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again a package the cache holds")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    second = build_engine(cfg, torch.device("cpu"))
    assert [e[2] for e in second.artifact_events] == ["hit"]
    x = torch.rand(4, 3, *SHAPE)
    assert torch.allclose(second(x), first(x), atol=1e-5)


def test_another_process_loads_the_package(compiled):
    cfg, _ = compiled
    code = ("import sys, torch; from yoloray.config import Profile; from yoloray.engines import build_engine; "
            "e = build_engine(Profile.parse(eval(sys.argv[1])), torch.device('cpu')); "
            "print([k[2] for k in e.artifact_events])")
    out = subprocess.run([sys.executable, "-c", code, repr(cfg.model_dump())], capture_output=True, text=True,
                         check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "['hit']"


def test_detections_match_the_exact_path(compiled, held_out):
    cfg, _ = compiled
    imgs = [f.read_bytes() for f in sorted(Path(held_out.images_val).glob("*.jpg"))]
    exact = Detector(cfg.replace(backend="torch")).detect(imgs)
    fast = Detector(cfg).warmup().detect(imgs)  # loads the package; 5+ images: batches padded to 4
    assert fast.errors == [None] * len(imgs)
    assert exact.offsets[-1] > 100
    fid = compare(exact, fast, iou=0.99, score_tol=1e-3)
    assert fid.rate >= 0.99 and fid.extra == 0, fid


def test_a_model_export_refuses_is_one_clear_error(compiled, monkeypatch):
    cfg, _ = compiled

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.export, "export", refuse)
    with pytest.raises(backend.EngineError, match="could not compile .* unsupported operator.*use backend torch"):
        build_engine(cfg.replace(imgsz=(256, 256)), torch.device("cpu"))  # another shape: not in the cache
