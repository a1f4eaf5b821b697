"""Profiles: `auto` resolved once for the hardware and the inputs; explicit values win or fail clearly; the defaults
reproduce ultralytics' default predict (issue 16: >= 99% of boxes at IoU >= 0.99 on held-out 1080p frames)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from yoloray.config import ConfigError, Profile
from yoloray.fidelity import compare, from_ultralytics
from yoloray.profile import Hardware, Sample, auto_imgsz, rect_imgsz, resolve, summary
from yoloray.results import Detections

H200 = Hardware.of_gpu(1, "NVIDIA H200", 139.8, 16)
FULLHD = Sample(((1920, 1080),) * 4, ("jpeg",) * 4)


@pytest.mark.parametrize("size, shape", [((1920, 1080), (384, 640)), ((1280, 720), (384, 640)), ((640, 480), (480, 640)),
                                         ((1080, 1920), (640, 384)), ((1000, 1000), (640, 640)), ((1100, 620), (384, 640))])
def test_rect_imgsz_is_ultralytics_rect_letterbox(size, shape):
    """The shape ultralytics' LetterBox(auto=True) gives a frame at imgsz 640 (checked against it here)."""
    from ultralytics.data.augment import LetterBox

    assert rect_imgsz(size) == shape
    w, h = size
    assert LetterBox((640, 640), auto=True, stride=32)(image=np.zeros((h, w, 3), np.uint8)).shape[:2] == shape


def test_mixed_or_missing_sample_gets_square_640():
    assert auto_imgsz(None) == (640, 640)
    assert auto_imgsz(Sample(((1920, 1080), (1280, 1024)), ("jpeg", "jpeg"))) == (640, 640)


def test_cuda_defaults_are_the_fastest_measured():
    p = resolve(Profile(model="yolov8n.yaml"), H200, FULLHD)
    assert p.is_resolved() and p.device == "cuda"
    assert (p.precision, p.batch_size, p.micro_batch, p.imgsz, p.cuda_graph, p.channels_last) == (
        "fp16", 128, 32, (384, 640), True, True)
    assert (p.decode, p.hybrid_cpu_share, p.reduced_decode) == ("hybrid", 0.15, False)
    assert (p.actors_per_gpu, p.calls_per_actor, p.batches_per_call) == (3, 2, 4)
    few_cores = resolve(Profile(model="yolov8n.yaml"), Hardware.of_gpu(1, "NVIDIA H200", 139.8, 4), FULLHD)
    assert few_cores.decode == "gpu"  # hybrid was measured with 16 cores per GPU
    png = resolve(Profile(model="yolov8n.yaml"), H200, Sample(((1920, 1080),), ("other",)))
    assert png.decode == "cpu"  # the GPU decoder only takes JPEG
    footage = Sample(((1920, 1080),) * 2, ("video",) * 2)
    from dataclasses import replace

    nvdec = resolve(Profile(model="yolov8n.yaml"), replace(H200, nvdec=True), footage)
    assert (nvdec.decode, nvdec.actors_per_gpu, nvdec.calls_per_actor) == ("gpu", 2, 14)  # 2 actors x 2 calls per NVDEC engine
    no_nvdec = resolve(Profile(model="yolov8n.yaml"), H200, footage)  # PyNvVideoCodec missing: PyAV upstream
    assert (no_nvdec.decode, no_nvdec.actors_per_gpu, no_nvdec.calls_per_actor) == ("cpu", 3, 2)


def test_cpu_defaults_and_resolved_values_stay():
    p = resolve(Profile(model="yolov8n.yaml"), Hardware(cpus=2), FULLHD)
    assert (p.device, p.backend, p.precision, p.batch_size, p.cuda_graph, p.decode, p.imgsz) == (
        "cpu", "onnxruntime", "fp32", 16, False, "cpu", (384, 640))
    assert resolve(p, H200, FULLHD) == p  # nothing left to resolve: a resolved profile runs as written


def test_cpu_backend_is_onnxruntime_fp32_unless_told_otherwise():
    """backend auto: ONNX Runtime's CPU provider at fp32 on a CPU (the fastest exact CPU engine), torch on CUDA;
    a backend given, or a value only torch honours, keeps torch."""
    cpu = Hardware(cpus=2)
    p = resolve(Profile(model="yolov8n.yaml"), cpu, FULLHD)
    assert (p.backend, p.provider, p.precision, p.channels_last, p.micro_batch) == (
        "onnxruntime", "cpu", "fp32", False, None)
    assert resolve(Profile(model="yolov8n.yaml", device="cpu"), H200, FULLHD).backend == "onnxruntime"
    assert resolve(Profile(model="yolov8n.yaml"), H200, FULLHD).backend == "torch"
    assert resolve(Profile(model="yolov8n.yaml", backend="torch"), cpu, FULLHD).backend == "torch"
    for needs_torch in ({"precision": "bf16"}, {"channels_last": True}):
        assert resolve(Profile(model="yolov8n.yaml", **needs_torch), cpu, FULLHD).backend == "torch", needs_torch
    int8 = resolve(Profile(model="yolov8n.yaml", precision="int8", calibration="frames/"), cpu, FULLHD)
    assert (int8.backend, int8.precision) == ("onnxruntime", "int8")  # int8 only when asked for
    on_gpu = resolve(Profile(model="yolov8n.yaml", provider="cuda"), H200, FULLHD)
    assert (on_gpu.backend, on_gpu.precision, on_gpu.cuda_graph) == ("onnxruntime", "fp16", False)


def test_explicit_values_win_and_impossible_ones_fail():
    p = resolve(Profile(model="yolov8n.yaml", batch_size=48, imgsz=640, decode="gpu", calls_per_actor=1), H200, FULLHD)
    assert (p.batch_size, p.imgsz, p.decode, p.calls_per_actor) == (48, (640, 640), "gpu", 1)
    assert p.micro_batch is None  # 32 does not divide 48: one forward per batch, never a changed batch size
    compiled = resolve(Profile(model="yolov8n.yaml", backend="torch-compile"), H200, FULLHD)
    assert compiled.cuda_graph is False  # torch.compile captures its own graphs
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve(Profile(model="yolov8n.yaml", precision="fp16"), Hardware(cpus=2), FULLHD)
    with pytest.raises(ConfigError, match="no CUDA GPU was found"):
        resolve(Profile(model="yolov8n.yaml", device="cuda"), Hardware(cpus=2), FULLHD)


def test_summary_marks_what_auto_chose():
    given = Profile(model="yolov8n.yaml", batch_size=64)
    text = summary(resolve(given, H200, FULLHD), H200, FULLHD, set(given.auto_fields()))
    assert "batch_size=64 " in text and "precision=fp16*" in text and "imgsz=384x640*" in text
    assert "1 x NVIDIA H200 140 GiB, 7 JPEG / 7 NVDEC engines, 16 CPUs" in text


def test_sample_of_images(photos):
    s = Sample.of_images([photos["fullhd"].read_bytes(), photos["bus"].read_bytes(), b"not an image"])
    assert s.frame_sizes == ((1920, 1080), (810, 1080)) and s.jpeg


def _rows_to_detections(rows: list[dict]) -> Detections:
    d = Detections.empty(len(rows))
    boxes = [[x["x1"], x["y1"], x["x2"], x["y2"]] for r in rows for x in r["detections"]]
    d.boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    d.scores = np.asarray([x["score"] for r in rows for x in r["detections"]], np.float32)
    d.class_ids = np.asarray([x["class_id"] for r in rows for x in r["detections"]], np.int16)
    d.offsets[1:] = np.cumsum([len(r["detections"]) for r in rows])
    return d


def test_detect_defaults_agree_with_ultralytics_predict(demo_model, held_out, capsys):
    """`yoloray detect FRAMES` with no flags vs ultralytics `YOLO(weights).predict(FRAMES)` with its defaults, on
    the CPU, on held-out 1080p frames: the same rect input (384x640), >= 99% of boxes at IoU >= 0.99."""
    from ultralytics import YOLO

    from yoloray.cli import main

    files = sorted(Path(held_out.images_val).glob("*.jpg"))[:12]
    assert main(["detect", *map(str, files), "--json"]) == 0
    ours = _rows_to_detections(json.loads(capsys.readouterr().out))
    ref = from_ultralytics(YOLO(demo_model).predict([str(f) for f in files], device="cpu", verbose=False))
    assert ref.offsets[-1] > 50
    fid = compare(ref, ours, iou=0.99, score_tol=1e-3)
    assert fid.rate >= 0.99, fid
