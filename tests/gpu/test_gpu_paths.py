"""GPU paths against the exact CPU/fp32 path, with the demo detector's real detections on held-out frames and
real photos: GPU JPEG decode (nvImageCodec and torchvision's nvJPEG), GPU letterbox, fp16 / bf16, channels_last, CUDA graphs, torch.compile.
Fast modes: >= 97% of exact-mode boxes at IoU >= 0.9 (score within 0.05), held-out mAP50-95 within 0.01."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from yoloray.config import Profile
from yoloray.data.sink import detections_to_table, write_parquet_atomic
from yoloray.detector import Detector
from yoloray.evaluate import evaluate
from yoloray.fidelity import compare
from yoloray.profile import EXACT_PATH
from yoloray.vision.decode import decode_cpu, probe
from yoloray.vision.decoders.nvimgcodec import nvimgcodec_missing
from yoloray.vision.decoders.stills import open_gpu_decoder
from yoloray.vision.letterbox import letterbox_cpu, letterbox_gpu

SHAPE = (384, 640)
EXACT = EXACT_PATH  # every speed knob off (an unset knob is `auto`, which on CUDA means the fast settings)
PHOTOS = ["bus", "zidane", "wide_crop", "tall_small", "fullhd", "exif6"]


@pytest.fixture(scope="module")
def images(held_out, photos):
    files = sorted(Path(held_out.images_val).glob("*.jpg")) + [photos[n] for n in PHOTOS]
    return files, [f.read_bytes() for f in files]


def _map(det, held_out, tmp_path) -> float:
    files = sorted(Path(held_out.images_val).glob("*.jpg"))
    dets = det.detect([f.read_bytes() for f in files])
    t = detections_to_table(dets, [f"images/val/{f.name}" for f in files], [str(f) for f in files], None, None, det.key)
    p = tmp_path / f"{det.key}.parquet"
    write_parquet_atomic(t, str(p))
    return evaluate(p, held_out.labels_val)["map50_95"]


@pytest.fixture(scope="module")
def frames(held_out):
    """Fast-mode fidelity is judged on held-out frames, where the demo detector's boxes are real; on the
    photos it only has low-confidence guesses that flicker with any pixel change."""
    return [f.read_bytes() for f in sorted(Path(held_out.images_val).glob("*.jpg"))]


@pytest.fixture(scope="module")
def exact(frames):
    det = Detector(Profile(imgsz=SHAPE, device="cuda", batch_size=8, **EXACT))
    return det.detect(frames)


GPU_DECODERS = ["torchvision", pytest.param("nvimgcodec", marks=pytest.mark.skipif(
    nvimgcodec_missing() is not None, reason=str(nvimgcodec_missing())))]


@pytest.mark.parametrize("decoder", GPU_DECODERS)
def test_gpu_decode_close_to_libjpeg(images, decoder):
    datas = [d for d in images[1] if probe(d, 10**9).orientation == 1]  # EXIF-rotated ones: next test
    gpu = open_gpu_decoder(decoder, torch.device("cuda"))
    assert gpu.name == decoder
    for d, t in zip(datas, gpu.decode(datas)):
        assert t is not None
        cpu = decode_cpu(d, probe(d, 10**9))[..., ::-1]  # BGR -> RGB
        g = t.permute(1, 2, 0).cpu().numpy()
        assert g.shape == cpu.shape
        diff = np.abs(g.astype(int) - cpu.astype(int))
        # nvJPEG upsamples chroma differently from libjpeg: measured mean ~1 level, p99 up to 11 on a small image
        # (torchvision); the hardware engines are held to the same bound
        assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 16


def test_exif_rotated_jpeg_with_gpu_decode(photos):
    """torchvision's batched nvJPEG ignores EXIF orientation, so the Detector decodes such files on the CPU:
    same size and boxes as the exact path."""
    data = photos["exif6"].read_bytes()
    assert probe(data, 10**9).orientation == 6
    base = Profile(imgsz=SHAPE, device="cuda", conf=0.05, **EXACT)
    exact = Detector(base).detect([data])
    gpu = Detector(base.replace(decode="gpu")).detect([data])
    assert (gpu.widths[0], gpu.heights[0]) == (exact.widths[0], exact.heights[0]) == (720, 1280)
    assert compare(exact, gpu, iou=0.99, score_tol=1e-3).rate == 1.0


def test_gpu_letterbox_within_one_level_of_cpu(images):
    for d in images[1]:
        im = decode_cpu(d, probe(d, 10**9))
        ref = letterbox_cpu(im, SHAPE)[..., ::-1].astype(np.float32) / 255
        t = torch.from_numpy(np.ascontiguousarray(im[..., ::-1])).permute(2, 0, 1).cuda()
        out = torch.empty((1, 3, *SHAPE), device="cuda")
        letterbox_gpu(t[None], SHAPE, out)
        assert np.abs(out[0].permute(1, 2, 0).cpu().numpy() - ref).max() <= 1 / 255 + 1e-6


FAST = [
    {"decode": "gpu", "gpu_decoder": "torchvision"},
    pytest.param({"decode": "gpu", "gpu_decoder": "nvimgcodec"}, marks=pytest.mark.skipif(
        nvimgcodec_missing() is not None, reason=str(nvimgcodec_missing()))),
    {"precision": "fp16"},
    {"precision": "bf16"},
    {"precision": "fp16", "channels_last": True, "cuda_graph": True},
    {"precision": "fp16", "channels_last": True, "cuda_graph": True, "decode": "gpu"},
    {"precision": "fp16", "channels_last": True, "cuda_graph": True, "decode": "gpu", "micro_batch": 4},
    {"precision": "fp16", "channels_last": True, "cuda_graph": True, "reduced_decode": True},
    {"precision": "fp16", "channels_last": True, "cuda_graph": True, "decode": "hybrid", "reduced_decode": True},
    {"precision": "fp16", "channels_last": True, "backend": "torch-compile"},
    {"precision": "fp16", "channels_last": True, "backend": "torch-compile", "decode": "gpu", "micro_batch": 4},
]


@pytest.mark.parametrize("fields", FAST, ids=lambda f: "+".join(f"{k}={v}" for k, v in f.items()))
def test_fast_modes_match_exact(frames, exact, held_out, tmp_path, fields):
    base = Profile(imgsz=SHAPE, device="cuda", batch_size=8, **EXACT)
    det = Detector(Profile.parse({**base.model_dump(), **fields})).warmup()
    fast = det.detect(frames)
    assert fast.errors == [None] * len(frames)
    assert exact.offsets[-1] > 100
    fid = compare(exact, fast, iou=0.9, score_tol=0.05)
    assert fid.rate >= 0.97, (fields, fid)
    low = {"conf": 0.001}
    m_exact = _map(Detector(base.replace(**low)), held_out, tmp_path)
    m_fast = _map(Detector(Profile.parse({**base.model_dump(), **fields, **low})).warmup(), held_out, tmp_path)
    assert abs(m_exact - m_fast) <= 0.01, (fields, m_exact, m_fast)


def test_cuda_graph_pads_short_batches(frames):
    cfg = Profile(imgsz=SHAPE, device="cuda", batch_size=8, **{**EXACT, "cuda_graph": True, "precision": "fp16"})
    det = Detector(cfg).warmup()
    eager = Detector(cfg.replace(cuda_graph=False)).warmup()
    imgs = frames[:5]  # 5 < batch 8: padded
    assert compare(eager.detect(imgs), det.detect(imgs), iou=0.99, score_tol=1e-3).rate >= 0.99
    micro = Detector(cfg.replace(micro_batch=4)).warmup()  # 5 -> 2 replays of 4 (padded)
    assert compare(eager.detect(imgs), micro.detect(imgs), iou=0.99, score_tol=1e-3).rate >= 0.99


def test_batch_job_with_upstream_cpu_decode_and_concurrent_calls(held_out, tmp_path):
    """`decode: hybrid` in a batch job: Ray tasks letterbox half the frames on the CPU, the actor GPU-decodes
    the rest, two calls run at once in the actor. Every frame gets a row; mAP within 0.01 of the exact path."""
    import ray

    from yoloray.batch import ActorOptions, run_job

    fast = {"precision": "fp16", "channels_last": True, "cuda_graph": True, "decode": "hybrid",
            "reduced_decode": True, "hybrid_cpu_share": 0.5}
    base = Profile(imgsz=SHAPE, device="cuda", batch_size=8, conf=0.001, **EXACT)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = run_job([str(held_out.images_val)], str(tmp_path / "hybrid"), Profile.parse({**base.model_dump(), **fast}),
                          ActorOptions(calls_per_actor=2, gpus_per_actor=1))
    finally:
        if started:
            ray.shutdown()
    frames = sorted(Path(held_out.images_val).glob("*.jpg"))
    assert summary.images == len(frames) and not summary.errors
    m_fast = evaluate(tmp_path / "hybrid", held_out.labels_val)["map50_95"]
    m_exact = _map(Detector(base), held_out, tmp_path)
    assert abs(m_exact - m_fast) <= 0.01, (m_exact, m_fast)


def test_auto_profile_on_cuda_matches_exact(frames, exact, held_out, tmp_path):
    """The CUDA defaults (every knob auto: fp16, channels_last, CUDA graphs, batch 128 in forwards of 32, hybrid
    decode) pass the fast-mode tolerances against the exact path."""
    det = Detector(Profile(device="cuda")).warmup()
    resolved = det.config
    assert (resolved.precision, resolved.cuda_graph, resolved.batch_size, resolved.micro_batch) == ("fp16", True, 128, 32)
    assert resolved.imgsz == (640, 640)  # no sample: square; the frames' rectangle needs a sample (infer/detect)
    det = Detector(Profile(imgsz=SHAPE, device="cuda")).warmup()
    fid = compare(exact, det.detect(frames), iou=0.9, score_tol=0.05)
    assert fid.rate >= 0.97, fid
    m_exact = _map(Detector(Profile(imgsz=SHAPE, device="cuda", batch_size=8, conf=0.001, **EXACT)), held_out, tmp_path)
    m_auto = _map(Detector(Profile(imgsz=SHAPE, device="cuda", conf=0.001)).warmup(), held_out, tmp_path)
    assert abs(m_exact - m_auto) <= 0.01, (m_exact, m_auto)
