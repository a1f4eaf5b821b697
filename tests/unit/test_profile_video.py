"""Profiles for video inputs: the sample of a job's video units carries the frames' size and codec from the
index of the first video files (made on the driver for the sample, nothing decoded), so `yoloray infer VIDEOS`
/ `yoloray detect CLIP` with no flags resolve the video defaults (the clip's rect letterbox, NVDEC where it
runs, 2 actors x 2 calls per NVDEC engine), not the JPEG ones."""

from __future__ import annotations

import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest

from yoloray.config import Profile
from yoloray.data import video_index
from yoloray.data.inputs import SourceOptions
from yoloray.data.synthetic import write_clip
from yoloray.data.units import list_units
from yoloray.profile import Hardware, Sample, resolve

H200_NVDEC = replace(Hardware.of_gpu(1, "NVIDIA H200", 139.8, 16), nvdec=True)
CPU = Hardware(cpus=2)
W, H, N, GOP = 256, 192, 24, 12  # 4:3, so the rectangle (480x640) is the clip's own, not 16:9's or the square


def video_unit(start: int, stop: int, width: int = 1920, height: int = 1080, codec: str = "h264", **extra) -> dict:
    """A keyframe segment as data/video_index.py `video_units` lists it."""
    pts = [512 * i for i in range(start, stop)]
    return {"unit_id": f"video:cam.mp4#frames={start}-{stop}", "kind": "video", "root": "/data", "source": "cam.mp4",
            "prefix": "cam.mp4", "rel": "cam.mp4", "start": start, "stop": stop, "seek_pts": pts[0], "pts": pts,
            "keep": list(range(start, stop)), "time_base": [1, 15360], "first_pts": 0, "codec": codec,
            "width": width, "height": height, "colorspace": 1, "color_range": 1, "open_gop": False, **extra}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A folder holding one small generated H.264 clip (W x H, keyframes every GOP frames)."""
    d = tmp_path_factory.mktemp("clip")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (H, W, 3), np.uint8) for _ in range(N)]
    write_clip(d / "clip.mp4", frames, W, H, 30, "h264", gop=GOP)
    return d


def test_1080p_video_units_resolve_the_video_defaults():
    units = [video_unit(0, 5), video_unit(5, 125), video_unit(125, 245)]
    sample = Sample.of_units(units)
    assert sample.frame_sizes == ((1920, 1080),) * 8 and set(sample.codecs) == {"video:h264"}
    assert sample.video and not sample.jpeg
    p = resolve(Profile(model="yolov8n.yaml"), H200_NVDEC, sample)
    assert (p.imgsz, p.decode, p.precision, p.batch_size) == ((384, 640), "gpu", "fp16", 128)
    assert (p.actors_per_gpu, p.calls_per_actor, p.batches_per_call) == (2, 14, 4)  # 2 actors x 2 calls per NVDEC engine
    cpu = resolve(Profile(model="yolov8n.yaml"), CPU, sample)
    assert (cpu.device, cpu.backend, cpu.precision, cpu.batch_size, cpu.imgsz, cpu.decode) == (
        "cpu", "onnxruntime", "fp32", 16, (384, 640), "cpu")
    assert (cpu.actors_per_gpu, cpu.calls_per_actor, cpu.batches_per_call) == (1, 1, 4)


def test_video_units_that_cannot_be_read_are_not_sampled():
    broken = {"unit_id": "video:bad.mp4", "kind": "video", "root": "/data", "source": "bad.mp4", "prefix": "bad.mp4",
              "rel": "bad.mp4", "error": "cannot open video: ValueError: no video stream in the file"}
    sample = Sample.of_units([broken, video_unit(0, 3, 1280, 720, "hevc")])
    assert sample.frame_sizes == ((1280, 720),) * 3 and sample.codecs == ("video:hevc",) * 3
    assert Sample.of_units([broken]) == Sample()


def test_sample_of_a_listed_clip_has_its_frame_size(clip_dir, monkeypatch):
    """Through the real listing (data/units.py: the clip is one file unit) and the sample's own index of it
    (data/video_index.py): the clip's size; the kept frames of every segment count (every 5th of 24 frames in
    two segments: 5)."""
    monkeypatch.setattr(video_index, "SEGMENT_MIN_FRAMES", 1)  # a segment per GOP
    options = SourceOptions(video_stride=5)
    (unit,) = list_units([str(clip_dir / "clip.mp4")], options)
    assert unit["kind"] == "video" and video_index.is_video_file(unit)
    assert len(list(video_index.segments_of([unit], options))) == N // GOP
    units = [unit]
    sample = Sample.of_units(units, options)
    assert sample.frame_sizes == ((W, H),) * 5 and set(sample.codecs) == {"video:h264"}
    p = resolve(Profile(model="yolov8n.yaml"), H200_NVDEC, sample)
    assert (p.imgsz, p.decode, p.actors_per_gpu, p.calls_per_actor) == ((480, 640), "gpu", 2, 14)
    assert resolve(Profile(model="yolov8n.yaml"), CPU, sample).imgsz == (480, 640)


def test_videos_and_stills_together_sample_both(clip_dir, tmp_path):
    """A job of videos and stills: both kinds are sampled, the codecs differ, so decode is the CPU's with the
    stills' layout; the frame sizes differ too, so the input is square 640."""
    shutil.copy(clip_dir / "clip.mp4", tmp_path / "clip.mp4")
    cv2.imwrite(str(tmp_path / "still.jpg"), np.zeros((1080, 1920, 3), np.uint8))
    sample = Sample.of_units(list_units([str(tmp_path)]))
    assert sorted(set(zip(sample.frame_sizes, sample.codecs))) == [((W, H), "video:h264"), ((1920, 1080), "jpeg")]
    p = resolve(Profile(model="yolov8n.yaml"), H200_NVDEC, sample)
    assert (p.imgsz, p.decode, p.actors_per_gpu, p.calls_per_actor) == ((640, 640), "cpu", 3, 2)


def test_detect_samples_a_clip_by_its_index(clip_dir, tmp_path, monkeypatch):
    """`yoloray detect clip.mp4` resolves its profile from the same sample as `infer`; with a still beside the
    clip, both are sampled (as `infer` does)."""
    from yoloray.cli import _detect_profile, build_parser

    monkeypatch.delenv("YOLORAY_PROFILE", raising=False)
    monkeypatch.setattr(Hardware, "local", classmethod(lambda cls: H200_NVDEC))
    clip = clip_dir / "clip.mp4"
    args = build_parser().parse_args(["detect", str(clip), "--model", "yolov8n.yaml"])
    p = _detect_profile(args, [clip])
    assert (p.imgsz, p.decode) == ((480, 640), "gpu")
    still = tmp_path / "still.jpg"
    cv2.imwrite(str(still), np.zeros((H, W, 3), np.uint8))
    args = build_parser().parse_args(["detect", str(still), str(clip), "--model", "yolov8n.yaml"])
    p = _detect_profile(args, [still, clip])
    assert (p.imgsz, p.decode) == ((480, 640), "cpu")  # one size, two kinds of input
