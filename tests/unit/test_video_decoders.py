"""Video decoders without Ray or a GPU: NVDEC's colour conversion against FFmpeg's and its fused NV12 ->
model-input kernel against the reference (the NVDEC path itself runs in tests/gpu/test_video_gpu.py), and
`Detector.run` over frames in every FrameBatch form."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from yoloray.config import Profile
from yoloray.data.scene import render_video_frame
from yoloray.data.synthetic import write_clip
from yoloray.detector import Detector
from yoloray.vision.decoders.frames import FrameBatch
from yoloray.vision.decoders.nvdec import yuv_to_rgb
from yoloray.vision.letterbox import letterbox_cpu

W, H = 320, 192


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_clip(path, [render_video_frame(1, i, W, H, 4)[0] for i in range(4)], W, H, 30, "h264", gop=2)
    return path


def _nv12(frame) -> torch.Tensor:
    """The frame as NVDEC hands it over: an NV12 surface (Y rows, then interleaved U/V rows)."""
    nv = frame.reformat(format="nv12")
    h, w = frame.height, frame.width
    y = np.frombuffer(nv.planes[0], np.uint8).reshape(h, nv.planes[0].line_size)[:, :w]
    uv = np.frombuffer(nv.planes[1], np.uint8).reshape(h // 2, nv.planes[1].line_size)[:, :w]
    return torch.from_numpy(np.concatenate([y, uv]))


@pytest.mark.parametrize(("matrix", "tag", "full"), [("bt601", None, False), ("bt709", "ITU709", False),
                                                      ("bt601", None, True)])
def test_nv12_to_rgb_within_two_levels_of_ffmpeg(clip, matrix, tag, full):
    with av.open(str(clip)) as c:
        frames = list(c.decode(video=0))
    surfaces = torch.stack([_nv12(f) for f in frames])
    mine = yuv_to_rgb(surfaces, H, W, matrix, full).permute(0, 2, 3, 1).numpy().astype(int)
    kwargs = {"src_colorspace": tag} if tag else {}
    if full:
        kwargs["src_color_range"] = "JPEG"
    ffmpeg = np.stack([f.to_ndarray(format="rgb24", **kwargs) for f in frames]).astype(int)
    diff = np.abs(mine - ffmpeg)
    assert diff.max() <= 2 and diff.mean() < 1.0, (diff.max(), diff.mean())
    if matrix == "bt709":  # the matrix matters: BT.601 on a BT.709 stream is visibly off
        wrong = yuv_to_rgb(surfaces, H, W, "bt601").permute(0, 2, 3, 1).numpy().astype(int)
        assert np.abs(wrong - ffmpeg).max() > 2


_FUSED_CHECK = """
import sys, av, numpy as np, torch
from yoloray.vision.decoders.nv12 import nv12_letterbox
from yoloray.vision.decoders.nvdec import yuv_to_rgb
from yoloray.vision.letterbox import letterbox_gpu
sys.path.insert(0, sys.argv[2])
from test_video_decoders import H, W, _nv12
with av.open(sys.argv[1]) as c:
    surfaces = torch.stack([_nv12(f) for f in c.decode(video=0)])
worst = 0.0
for dst, dtype, matrix, full in [((128, 160), torch.float16, "bt601", False), ((320, 320), torch.float32, "bt709", True),
                                 ((96, 256), torch.float16, "bt709", False)]:
    ref = torch.empty((len(surfaces), 3, *dst), dtype=dtype)
    letterbox_gpu(yuv_to_rgb(surfaces, H, W, matrix, full), dst, ref)
    out = torch.full_like(ref, -1.0)
    nv12_letterbox(surfaces, H, W, dst, out, matrix, full)
    worst = max(worst, float((out.float() - ref.float()).abs().max()) * 255)
print(worst)
"""


def test_fused_nv12_letterbox_matches_convert_then_letterbox(clip, tmp_path):
    """NVDEC's fused path (one Triton kernel: NV12 -> letterboxed model input) against the reference
    (`yuv_to_rgb`, then `letterbox_gpu`), run by Triton's interpreter on the CPU: downscale, upscale and a
    wide pad, both matrices and ranges, fp16 and fp32. Tolerance: one level (the GPU's fused multiply-adds may
    move a value across a truncation step; the interpreter gives the same numbers)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _FUSED_CHECK, str(clip), str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) <= 1.0 + 1e-3, done.stdout


def test_run_takes_device_groups_and_host_frames_alike(clip, checkpoints):
    """The same frames as full-size RGB tensors (what NVDEC gives, letterboxed by run) and as letterboxed BGR
    arrays (what PyAV/OpenCV give) -> the same boxes."""
    det = Detector(Profile(model=str(checkpoints["v8"]), imgsz=(H, W), batch_size=4, device="cpu", conf=0.05))
    with av.open(str(clip)) as c:
        bgr = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    host, device = FrameBatch.empty(4), FrameBatch.empty(4)
    for j, im in enumerate(bgr):
        host.geom.set(j, im.shape[:2], (H, W), im.shape[:2])
        device.geom.set(j, im.shape[:2], (H, W), im.shape[:2])
    host.host_frames = [letterbox_cpu(im, (H, W)) for im in bgr]
    host.slots = device.slots = np.arange(4)
    device.device_groups = [torch.from_numpy(np.stack(bgr)[..., ::-1].copy()).permute(0, 3, 1, 2)]
    a, b = det.run(host), det.run(device)
    ready = torch.empty((4, 3, H, W), dtype=det.engine.dtype)  # model input made upstream (NVDEC's fused path)
    from yoloray.vision.letterbox import letterbox_gpu

    letterbox_gpu(device.device_groups[0], (H, W), ready)
    device.device_groups = [ready]
    c = det.run(device)
    assert len(a) == len(b) == 4 and a.offsets[-1] > 0
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5)
    np.testing.assert_array_equal(b.offsets, c.offsets)
    np.testing.assert_allclose(b.boxes, c.boxes, atol=1e-4)
    assert (a.widths == W).all() and (b.heights == H).all()


def test_pyav_path_matches_ultralytics_predict_on_the_clip(tmp_path, demo_model):
    """Fidelity: `yoloray detect clip.mp4` (PyAV decode, our letterbox/engine/NMS) against ultralytics
    `predict` on the same H.264 clip (its OpenCV reader) at the same input shape: >= 97% of its boxes at
    IoU >= 0.9 with scores within 0.05, like the still-image fast modes."""
    from ultralytics import YOLO

    from yoloray.batch.video import detect_video
    from yoloray.fidelity import compare, from_ultralytics
    from yoloray.results import Detections

    n, shape = 12, (H, W)
    path = tmp_path / "clip.mp4"
    write_clip(path, [render_video_frame(0, i, W, H, n)[0] for i in range(n)], W, H, 30, "h264", gop=6)
    det = Detector(Profile(model=demo_model, imgsz=shape, batch_size=4, device="cpu")).warmup()
    rows = detect_video(det, str(path))
    assert [r["frame"] for r in rows] == list(range(n)) and all(r["error"] is None for r in rows)
    ours = Detections.empty(n, det.names)
    boxes = [[(d["x1"], d["y1"], d["x2"], d["y2"]) for d in r["detections"]] for r in rows]
    ours.offsets[1:] = np.cumsum([len(b) for b in boxes])
    ours.boxes = np.asarray([b for bs in boxes for b in bs], np.float32).reshape(-1, 4)
    ours.scores = np.asarray([d["score"] for r in rows for d in r["detections"]], np.float32)
    ours.class_ids = np.asarray([d["class_id"] for r in rows for d in r["detections"]], np.int16)
    ref = from_ultralytics(list(YOLO(demo_model).predict(str(path), imgsz=shape, rect=False, device="cpu",
                                                        stream=True, verbose=False)))
    assert ref.offsets[-1] >= n, "the demo detector should find parts on the clip"
    fid = compare(ref, ours, iou=0.9, score_tol=0.05)
    assert fid.rate >= 0.97, fid


def test_cpu_share_of_segments_is_a_fixed_pick_per_unit():
    from yoloray.batch.video import frames_per_row, kept_per_segment, on_cpu

    ids = [f"video:/footage/cam{k}.mp4#frames={120 * j}-{120 * (j + 1)}" for k in range(20) for j in range(50)]
    picked = [on_cpu(u, 0.2) for u in ids]
    assert 0.17 < np.mean(picked) < 0.23 and picked == [on_cpu(u, 0.2) for u in ids]
    assert all(on_cpu(u, 1.0) for u in ids) and not any(on_cpu(u, 0.0) for u in ids)
    units = [{"kind": "video", "keep": list(range(100))}] * 3
    assert frames_per_row(kept_per_segment(units), "gpu", 0.3) == 100  # the actor gets whole segments
    assert frames_per_row(kept_per_segment(units), "cpu", 0.3) == 1  # frames, decoded upstream
    assert frames_per_row(kept_per_segment(units), "hybrid", 0.2) == pytest.approx(100 / (0.2 * 100 + 0.8))
    assert frames_per_row(kept_per_segment([*units, {"kind": "tar"}]), "gpu", 0.3) == 1  # stills set the pace of a mixed job
