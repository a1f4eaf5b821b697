"""ONNX Runtime on the GPU and the artifact cache across processes, against the exact torch path (fp32, TF32 off)
on the demo detector's held-out frames.

Tolerances: ORT CUDA fp32 as exact mode (>= 99% of boxes at IoU >= 0.99, score within 1e-3: cuDNN may pick other
convolution algorithms than torch); fp16 (with and without ORT CUDA graphs) and the TensorRT provider as every
fast mode (>= 97% at IoU >= 0.9, score within 0.05; held-out mAP50-95 within 0.01). Needs onnxruntime-gpu; the
TensorRT rows also need TensorRT's libraries (skipped without them: not run on the project's machines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from yoloray.config import Profile
from yoloray.detector import Detector
from yoloray.engines import ort_providers
from yoloray.fidelity import compare
from yoloray.profile import EXACT_PATH

sys.path.insert(0, str(Path(__file__).parents[1]))
from unit.test_demo_detector import held_out_map  # noqa: E402

SHAPE = (384, 640)
ort = pytest.importorskip("onnxruntime")
NO_CUDA_EP = ort_providers.missing("cuda", "cuda")
NO_TRT = ort_providers.missing("tensorrt", "cuda")
needs_cuda_ep = pytest.mark.skipif(NO_CUDA_EP is not None, reason=str(NO_CUDA_EP))
needs_trt = pytest.mark.skipif(NO_TRT is not None, reason=str(NO_TRT))


@pytest.fixture(scope="module")
def frames(held_out):
    return [f.read_bytes() for f in sorted(Path(held_out.images_val).glob("*.jpg"))]


@pytest.fixture(scope="module")
def exact(frames):
    return Detector(Profile(imgsz=SHAPE, device="cuda", batch_size=8, **EXACT_PATH)).detect(frames)


def _config(tmp_path, **fields) -> Profile:
    return Profile.parse({**EXACT_PATH, "imgsz": SHAPE, "device": "cuda", "batch_size": 8, "backend": "onnxruntime",
                          "cache_dir": str(tmp_path / "cache"), **fields})  # EXACT_PATH pins backend torch


@needs_cuda_ep
def test_ort_cuda_fp32_matches_exact(frames, exact, tmp_path):
    det = Detector(_config(tmp_path, provider="cuda")).warmup()
    assert det.engine.provider == "cuda"
    out = det.detect(frames)
    assert exact.offsets[-1] > 100
    assert compare(exact, out, iou=0.99, score_tol=1e-3).rate >= 0.99


FAST = [
    pytest.param({"provider": "cuda", "precision": "fp16"}, marks=needs_cuda_ep),
    pytest.param({"provider": "cuda", "precision": "fp16", "cuda_graph": True}, marks=needs_cuda_ep),
    pytest.param({"provider": "cuda", "precision": "fp16", "channels_last": True, "cuda_graph": True},
                 marks=needs_cuda_ep),  # prefer_nhwc
    pytest.param({"provider": "cuda", "precision": "fp16", "conv_algo_search": "heuristic",
                  "cudnn_max_workspace": True}, marks=needs_cuda_ep),
    pytest.param({"provider": "tensorrt", "precision": "fp16"}, marks=needs_trt),
]


@pytest.mark.parametrize("fields", FAST, ids=lambda f: "+".join(f"{k}={v}" for k, v in f.items()))
def test_ort_fast_modes_match_exact(frames, exact, held_out, tmp_path, fields):
    det = Detector(_config(tmp_path, **fields)).warmup()
    fast = det.detect(frames)
    assert fast.errors == [None] * len(frames)
    fid = compare(exact, fast, iou=0.9, score_tol=0.05)
    assert fid.rate >= 0.97, (fields, fid)
    files = sorted(Path(held_out.images_val).glob("*.jpg"))
    low = {"conf": 0.001}
    m_exact = held_out_map(Detector(Profile(imgsz=SHAPE, device="cuda", batch_size=8, **EXACT_PATH, **low)), files, held_out,
                           tmp_path)
    m_fast = held_out_map(Detector(_config(tmp_path, **fields, **low)).warmup(), files, held_out, tmp_path)
    assert abs(m_exact - m_fast) <= 0.01, (fields, m_exact, m_fast)


@needs_cuda_ep
def test_ort_cuda_graph_pads_short_batches(frames, tmp_path):
    cfg = _config(tmp_path, provider="cuda", precision="fp16")
    eager = Detector(cfg).warmup()
    graph = Detector(cfg.replace(cuda_graph=True, micro_batch=4)).warmup()
    assert graph.engine.static_batch == 4
    imgs = frames[:5]  # 5 -> two replays of 4 (padded)
    assert compare(eager.detect(imgs), graph.detect(imgs), iou=0.99, score_tol=1e-3).rate >= 0.99


BUILD = """
import json, sys, time
t0 = time.perf_counter()
from yoloray.config import Profile
from yoloray.detector import Detector
det = Detector(Profile.parse(json.loads(sys.argv[1]))).warmup()
events = getattr(det.engine, "artifact_events", None) or det.engine.cache.events
print(json.dumps({"events": [e[2] for e in events], "start_s": time.perf_counter() - t0}))
"""


def _start(fields: dict, inductor_dir: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}  # no warm inductor cache on this disk
    out = subprocess.run([sys.executable, "-X", "faulthandler", "-c", BUILD, json.dumps(fields)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, (out.returncode, out.stdout[-2000:], out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fields", [
    {"backend": "torch-compile", "precision": "fp16", "channels_last": True},
    pytest.param({"backend": "onnxruntime", "provider": "cuda", "precision": "fp16"}, marks=needs_cuda_ep),
], ids=lambda f: f["backend"])
def test_artifacts_built_once_loaded_by_another_process(tmp_path, fields):
    """Two actors in turn: the first builds and stores, the second (a new process, empty inductor cache dir)
    loads. Start-up seconds are printed for the report, never asserted."""
    fields = {**fields, "imgsz": list(SHAPE), "device": "cuda", "batch_size": 8, "cache_dir": str(tmp_path / "c")}
    first, second = _start(fields, tmp_path / "inductor-1"), _start(fields, tmp_path / "inductor-2")
    print(f"{fields['backend']}: cold start {first['start_s']:.1f} s, warm {second['start_s']:.1f} s")
    assert "built" in first["events"] and second["events"] and set(second["events"]) == {"hit"}
