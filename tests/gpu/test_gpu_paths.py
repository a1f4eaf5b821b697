"""GPU paths against the exact CPU/fp32 path: nvJPEG decode, GPU letterbox, fp16 / bf16, CUDA graphs,
channels_last, torch.compile. Fast modes must match the exact mode for >= 97% of its boxes at IoU >= 0.9."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yoloray.config import EngineConfig
from yoloray.detector import Detector
from yoloray.fidelity import compare
from yoloray.vision.decode import decode_cpu, decode_jpegs_gpu, probe
from yoloray.vision.letterbox import letterbox_cpu, letterbox_gpu

JPEGS = ["bus", "zidane", "wide_crop", "tall_small", "fullhd", "exif6"]
SHAPE = (384, 640)


@pytest.fixture(scope="module")
def exact(checkpoints, photos):
    det = Detector(EngineConfig(model=str(checkpoints["v8"]), imgsz=SHAPE, conf=0.3, device="cuda", batch_size=8))
    return det.detect([photos[n].read_bytes() for n in JPEGS])


def test_nvjpeg_decode_close_to_libjpeg(photos):
    datas = [photos[n].read_bytes() for n in JPEGS]
    gpu = decode_jpegs_gpu(datas, torch.device("cuda"))
    for d, t in zip(datas, gpu):
        assert t is not None
        cpu = decode_cpu(d, probe(d, 10**9))[..., ::-1]  # BGR -> RGB
        g = t.permute(1, 2, 0).cpu().numpy()
        assert g.shape == cpu.shape  # EXIF orientation applied on the GPU too
        diff = np.abs(g.astype(int) - cpu.astype(int))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4  # IDCT implementations differ slightly


def test_gpu_letterbox_within_one_level_of_cpu(photos):
    for n in JPEGS:
        d = photos[n].read_bytes()
        im = decode_cpu(d, probe(d, 10**9))
        ref = letterbox_cpu(im, SHAPE)[..., ::-1].astype(np.float32) / 255
        t = torch.from_numpy(np.ascontiguousarray(im[..., ::-1])).permute(2, 0, 1).cuda()
        out = torch.empty((3, *SHAPE), device="cuda")
        letterbox_gpu(t, SHAPE, out)
        diff = np.abs(out.permute(1, 2, 0).cpu().numpy() - ref)
        assert diff.max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize(
    "fields",
    [
        {"decode": "gpu"},
        {"precision": "fp16"},
        {"precision": "bf16"},
        {"precision": "fp16", "channels_last": True, "cuda_graph": True},
        {"precision": "fp16", "channels_last": True, "cuda_graph": True, "decode": "gpu", "reduced_decode": True},
    ],
)
def test_fast_modes_match_exact(checkpoints, photos, exact, fields):
    det = Detector(
        EngineConfig(model=str(checkpoints["v8"]), imgsz=SHAPE, conf=0.3, device="cuda", batch_size=8, **fields)
    ).warmup()
    fast = det.detect([photos[n].read_bytes() for n in JPEGS])
    assert fast.errors == [None] * len(JPEGS)
    assert exact.offsets[-1] > 50
    fid = compare(exact, fast, iou=0.9, score_tol=0.05)
    assert fid.rate >= 0.97, (fields, fid)


def test_cuda_graph_pads_short_batches(checkpoints, photos):
    cfg = EngineConfig(model=str(checkpoints["v8"]), imgsz=SHAPE, conf=0.3, device="cuda", batch_size=4, cuda_graph=True)
    det = Detector(cfg).warmup()
    eager = Detector(cfg.model_copy(update={"cuda_graph": False})).warmup()
    imgs = [photos[n].read_bytes() for n in JPEGS[:3]]  # 3 < batch 4: padded
    a, b = det.detect(imgs), eager.detect(imgs)
    assert compare(b, a, iou=0.999, score_tol=1e-4).rate == 1.0


def test_torch_compile_matches_eager(checkpoints, photos):
    base = EngineConfig(model=str(checkpoints["v8"]), imgsz=SHAPE, conf=0.3, device="cuda", batch_size=4, precision="fp16")
    eager = Detector(base).warmup()
    compiled = Detector(base.model_copy(update={"backend": "torch-compile"})).warmup()
    imgs = [photos[n].read_bytes() for n in JPEGS]
    assert compare(eager.detect(imgs), compiled.detect(imgs), iou=0.9, score_tol=0.05).rate >= 0.97
