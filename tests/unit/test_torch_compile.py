"""backend torch-compile on the CPU: the model is compiled ahead of time once into the artifact cache, a second
engine (here, and in another process) loads it without tracing or compiling, and its detections match the exact
path. Where the ahead-of-time compile refuses, the engine falls back to torch.compile and says so.

Tolerance: exact mode (every reference box matched at IoU >= 0.99, score within 1e-3, no extra box): Inductor's
fp32 kernels compute the same convolutions as eager torch, fused. One compile of the demo detector (YOLOv8n)
takes one to two minutes on the 2-core development machine; every other engine here loads it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch._dynamo.eval_frame import OptimizedModule

from yoloray.config import Profile
from yoloray.detector import Detector
from yoloray.engines import build_engine
from yoloray.engines.base import EngineError
from yoloray.engines.torch_compile import CompiledForward
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
    assert isinstance(engine._forward, CompiledForward)
    assert [e[2] for e in engine.artifact_events] == ["built", "built"]  # the function, Inductor's files
    assert len(list(Path(cfg.cache_dir).glob("torch-compile-aot/*/blob"))) == 1
    assert engine.static_batch == 4  # compiled for one input shape: short batches are padded


def test_second_engine_loads_without_compiling(compiled, monkeypatch):
    cfg, first = compiled
    calls = []
    monkeypatch.setattr(OptimizedModule, "_aot_compile", lambda self, inputs: calls.append(inputs))
    second = build_engine(cfg, torch.device("cpu"))
    assert calls == [] and [e[2] for e in second.artifact_events] == ["hit", "hit"]
    x = torch.rand(4, 3, *SHAPE)
    assert torch.allclose(second(x), first(x), atol=1e-5)


def test_another_process_loads_it(compiled, engine_in_new_process):
    cfg, _ = compiled
    got = engine_in_new_process(cfg, "(type(e._forward).__name__, [k[2] for k in e.artifact_events])")
    assert got == "('CompiledForward', ['hit', 'hit'])"


def test_detections_match_the_exact_path(compiled, held_out):
    cfg, _ = compiled
    imgs = [f.read_bytes() for f in sorted(Path(held_out.images_val).glob("*.jpg"))]
    exact = Detector(cfg.replace(backend="torch")).detect(imgs)
    fast = Detector(cfg).warmup().detect(imgs)  # loads the stored function; 5+ images: batches padded to 4
    assert fast.errors == [None] * len(imgs)
    assert exact.offsets[-1] > 100
    fid = compare(exact, fast, iou=0.99, score_tol=1e-3)
    assert fid.rate >= 0.99 and fid.extra == 0, fid


def test_an_input_of_another_shape_is_refused(compiled):
    _, engine = compiled
    with pytest.raises(EngineError, match=r"compiled for \(4, 3, 384, 640\) torch.float32 on cpu, got \(4, 3, 256"):
        engine._forward(torch.zeros(4, 3, 256, 256))


def test_a_refused_ahead_of_time_compile_falls_back_to_torch_compile(compiled, monkeypatch, caplog):
    cfg, _ = compiled

    def refuse(self, inputs):
        raise RuntimeError("graph break in forward")

    monkeypatch.setattr(OptimizedModule, "_aot_compile", refuse)
    with caplog.at_level(logging.WARNING, logger="yoloray.engines.torch_backend"):
        engine = build_engine(cfg.replace(imgsz=(256, 256)), torch.device("cpu"))  # another shape: not cached
    assert isinstance(engine._forward, OptimizedModule) and not isinstance(engine._forward, CompiledForward)
    assert "ahead-of-time compile failed: RuntimeError: graph break in forward" in caplog.text
    assert "traces the model again in every process" in caplog.text
