"""NVDEC (PyNvVideoCodec) against PyAV and against ultralytics `predict`, on a CUDA machine with
`pip install pynvvideocodec`; skipped elsewhere. H.264 and HEVC must decode on NVDEC; VP9/AV1 clips must give
every frame a row (NVDEC where the GPU has it, else PyAV's fallback).
Tolerances: NVDEC RGB within 3 levels of FFmpeg's (the decoders agree bit for bit; the colour conversions
differ by swscale's truncation); detections >= 97% of ultralytics' boxes at IoU >= 0.9, scores within 0.05."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yoloray.config import Profile
from yoloray.data.inputs import SourceOptions
from yoloray.data.scene import render_video_frame
from yoloray.data.synthetic import write_clip
from yoloray.data.video_index import video_units
from yoloray.profile import EXACT_PATH
from yoloray.vision.decoders.nvdec import NvdecDecoder, nvdec_missing
from yoloray.vision.decoders.pyav import decode_segment

W, H, N = 640, 360, 48
pytestmark = pytest.mark.skipif(nvdec_missing() is not None, reason=str(nvdec_missing()))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_clips")
    frames = [render_video_frame(5, i, W, H, N)[0] for i in range(N)]
    out = {}
    for codec in ("h264", "hevc"):  # closed GOPs (NVDEC decodes these; open-GOP streams go to PyAV)
        out[codec] = d / f"{codec}.mp4"
        write_clip(out[codec], frames, W, H, 30, codec, gop=12, open_gop=False)
    out["hevc-open"] = d / "hevc-open.mp4"
    write_clip(out["hevc-open"], frames, W, H, 30, "hevc", gop=12)
    return out


def _units(path, **kw):
    base = {"kind": "video", "root": str(path.parent), "source": str(path), "prefix": path.name}
    return video_units(base, SourceOptions(**kw), min_frames=1)


@pytest.mark.parametrize("codec", ["h264", "hevc"])
@pytest.mark.parametrize("stride", [1, 3])  # every frame; every third (read by index whatever `read` says)
@pytest.mark.parametrize("read", ["sequential", "index"])
def test_nvdec_frames_match_pyav(clips, codec, stride, read, caplog):
    dec = NvdecDecoder(torch.device("cuda"), (384, 640), 16, read=read)
    units = _units(clips[codec], video_stride=stride)
    for unit in [*units, *reversed(units)]:  # on from the last segment's end, then seeking back
        cpu = {i: im[..., ::-1] for i, im, err in decode_segment(unit) if err is None}
        got = {}
        for batch in dec.batches(unit):
            assert batch.device_groups, "NVDEC fell back to the CPU"  # the fallback has host frames only
            rgb = batch.device_groups[0].permute(0, 2, 3, 1).cpu().numpy()
            got.update(zip(batch.frame_index.tolist(), rgb))
        assert sorted(got) == sorted(cpu) == unit["keep"]
        worst = max(int(np.abs(got[i].astype(int) - cpu[i]).max()) for i in got)
        assert worst <= 3, worst
    assert "NVDEC could not decode" not in caplog.text and "reads frames by index from now on" not in caplog.text
    assert dec.read == read


def test_open_gop_stream_is_decoded_by_pyav_and_matches(clips, caplog):
    """Open-GOP HEVC (x265's default): NVDEC's leading frames differed from FFmpeg's (up to 211 levels, H200,
    2026-12-01), so such streams go to PyAV whole; every frame still comes, equal to FFmpeg's."""
    dec = NvdecDecoder(torch.device("cuda"), (384, 640), 16, torch.float16)
    for unit in _units(clips["hevc-open"]):
        assert unit["open_gop"]
        cpu = {i: im for i, im, err in decode_segment(unit) if err is None}
        got = {}
        for batch in dec.batches(unit):
            assert not batch.device_groups and len(batch.host_frames) == len(batch)
            got.update(zip(batch.frame_index.tolist(), batch.host_frames))
        assert sorted(got) == sorted(cpu) == unit["keep"]
    assert "open-GOP stream" in caplog.text


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_fused_nv12_input_matches_rgb_then_letterbox(clips, codec):
    """The fused kernel (NVDEC surfaces -> fp16 model input, vision/decoders/nv12.py) against the reference
    conversion then `letterbox_gpu`, on the GPU: within one level (fused multiply-adds)."""
    from yoloray.vision.letterbox import letterbox_gpu

    fused = NvdecDecoder(torch.device("cuda"), (384, 640), 16, torch.float16)
    plain = NvdecDecoder(torch.device("cuda"), (384, 640), 16)
    assert fused.input_dtype == torch.float16, "Triton is missing: the fused path is off"
    for unit in _units(clips[codec]):
        for a, b in zip(fused.batches(unit), plain.batches(unit)):
            (ready,), (rgb,) = a.device_groups, b.device_groups
            assert ready.dtype == torch.float16 and tuple(ready.shape[1:]) == (3, 384, 640)
            ref = torch.empty_like(ready)
            letterbox_gpu(rgb, (384, 640), ref)
            diff = (ready.float() - ref.float()).abs() * 255
            assert float(diff.max()) <= 1.01 and float((diff > 0.01).float().mean()) < 0.01, float(diff.max())


def test_nvdec_detections_match_ultralytics(clips, demo_model):
    from ultralytics import YOLO

    from yoloray.batch.video import SegmentRunner, detect_video
    from yoloray.detector import Detector
    from yoloray.fidelity import compare, from_ultralytics
    from yoloray.results import Detections

    det = Detector(Profile(model=demo_model, imgsz=(384, 640), batch_size=16, device="cuda",
                           **{**EXACT_PATH, "decode": "gpu"})).warmup()
    decoder = SegmentRunner(det, det.key).decoder
    assert type(decoder).__name__ == "NvdecDecoder" and decoder.input_dtype == det.engine.dtype  # the fused path
    rows = detect_video(det, str(clips["h264"]))
    assert [r["frame"] for r in rows] == list(range(N)) and all(r["error"] is None for r in rows)
    ours = Detections.empty(N, det.names)
    ours.offsets[1:] = np.cumsum([len(r["detections"]) for r in rows])
    flat = [d for r in rows for d in r["detections"]]
    ours.boxes = np.asarray([(d["x1"], d["y1"], d["x2"], d["y2"]) for d in flat], np.float32).reshape(-1, 4)
    ours.scores = np.asarray([d["score"] for d in flat], np.float32)
    ours.class_ids = np.asarray([d["class_id"] for d in flat], np.int16)
    ref = from_ultralytics(list(YOLO(demo_model).predict(str(clips["h264"]), imgsz=(384, 640), rect=False,
                                                        device="cuda", stream=True, verbose=False)))
    assert ref.offsets[-1] >= N
    fid = compare(ref, ours, iou=0.9, score_tol=0.05)
    assert fid.rate >= 0.97, fid


@pytest.mark.parametrize("codec,encoder", [("vp9", "libvpx-vp9"), ("av1", "libsvtav1")])
def test_vp9_and_av1_give_every_frame_a_row(tmp_path, codec, encoder):
    import av

    try:
        av.codec.Codec(encoder, "w")
    except Exception:  # noqa: BLE001
        pytest.skip(f"this PyAV build has no {encoder} encoder to make the clip")
    path = tmp_path / f"{codec}.mkv"
    with av.open(str(path), "w") as out:
        s = out.add_stream(encoder, rate=30)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(12):
            for p in s.encode(av.VideoFrame.from_ndarray(render_video_frame(1, i, W, H, 12)[0], format="bgr24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    dec = NvdecDecoder(torch.device("cuda"), (384, 640), 16)
    seen = [i for u in _units(path) for b in dec.batches(u) for i, e in zip(b.frame_index, b.errors) if e is None]
    assert sorted(seen) == list(range(12))
