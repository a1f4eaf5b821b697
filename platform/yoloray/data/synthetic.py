"""Sample footage on disk: rendered scenes (data/scene.py) written as datasets in every input format.

``generate()`` renders frames in worker processes (output does not depend on the worker count), JPEG-encodes
each once and writes the same bytes as an ultralytics folder dataset, WebDataset tar shards, a zip and a
Parquet file, plus a continuous video clip with per-frame labels, encoded as H.264 (clip.mp4) and HEVC
(clip_hevc.mp4) with PyAV, a keyframe every 15 frames.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from pathlib import Path

import cv2
import numpy as np

from yoloray.data.scene import CLASS_NAMES, render_frame, render_video_frame

FORMATS = ("folder", "tar", "zip", "parquet", "video")


def labels_text(labels: np.ndarray) -> str:
    """YOLO label file text: one `class cx cy w h` line per row."""
    return "".join(f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)


def _job(video: bool, seed: int, i: int, width: int, height: int, frames: int) -> tuple[np.ndarray | bytes, str]:
    """Worker task: a video frame as raw BGR, or a still JPEG-encoded (quality 70-95) once, here."""
    if video:
        img, labels = render_video_frame(seed, i, width, height, frames)
        return img, labels_text(labels)
    img, labels = render_frame(seed, i, width, height)
    quality = int(np.random.default_rng([seed, 4, i]).integers(70, 96))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for frame {i}")
    return buf.tobytes(), labels_text(labels)


def is_val(index: int, val_fraction: float) -> bool:
    """Deterministic split: frame i is val when floor((i+1)*f) > floor(i*f) (every 5th frame for 0.2)."""
    return math.floor((index + 1) * val_fraction + 1e-9) > math.floor(index * val_fraction + 1e-9)


@dataclass
class SampleData:
    """Paths of what generate() wrote."""

    root: Path
    images_train: Path
    images_val: Path
    labels_train: Path
    labels_val: Path
    dataset_yaml: Path
    tar_shards: list[Path]
    zip_path: Path | None
    parquet_path: Path | None
    video_path: Path | None
    video_labels: Path | None
    frames: int
    video_hevc_path: Path | None = None


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


VIDEO_CODECS = {"h264": "libx264", "hevc": "libx265"}  # PyAV's FFmpeg (the PyPI wheel) has both encoders


def write_clip(path: Path, frames, width: int, height: int, fps: float, codec: str = "h264", gop: int = 15,
               crf: int = 20, open_gop: bool = True, x264: dict | None = None) -> None:
    """Encode BGR frames into an mp4 with PyAV: H.264 (libx264, closed GOPs) or HEVC (libx265; open GOPs, its
    default, unless `open_gop` is False), a keyframe every `gop` frames, B-frames on (so presentation order
    differs from decode order, as in camera archives). `x264`: libx264 options over these (e.g. `{"bf": "0"}`)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(VIDEO_CODECS[codec], rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "h264":
            stream.options = {"g": str(gop), "keyint_min": str(gop), "crf": str(crf), "preset": "veryfast", **(x264 or {})}
        else:
            stream.options = {"crf": str(crf), "preset": "veryfast",
                              "x265-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"
                                             + ("" if open_gop else ":open-gop=0")}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _write_video(data: SampleData, frames, width: int, height: int, fps: float) -> None:
    """clip.mp4 (H.264) and clip_hevc.mp4 (HEVC) of the same frames; labels once per frame in clip_labels/."""
    data.video_labels.mkdir(exist_ok=True)
    images = []
    for t, (img, txt) in enumerate(frames):
        images.append(img)
        (data.video_labels / f"frame_{t:06d}.txt").write_text(txt)
    write_clip(data.video_path, images, width, height, fps, "h264")
    write_clip(data.video_hevc_path, images, width, height, fps, "hevc")


def _mp_context():
    """No fork: a forked child deadlocks on OpenCV's (or Ray's, torch's) threads. Callers' scripts need a
    `__main__` guard, as with any spawn-style pool."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _counted(items: Iterator, progress: Callable[[int], None] | None) -> Iterator:
    for item in items:
        if progress is not None:
            progress(1)
        yield item


def generate(out: str | Path, frames: int = 200, seed: int = 0, width: int = 1920, height: int = 1080,
             val_fraction: float = 0.2, formats: Iterable[str] = FORMATS, shard_size: int = 100,
             video_frames: int = 60, fps: float = 30.0, workers: int | None = None,
             progress: Callable[[int], None] | None = None) -> SampleData:
    """Render `frames` labelled stills (+ a clip) under `out`; the folder dataset is always written.
    `progress(n)` is called as each still or clip frame has been rendered."""
    formats = set(formats)
    if formats - set(FORMATS):
        raise ValueError(f"unknown formats {sorted(formats - set(FORMATS))}; choose from {FORMATS}")
    if shard_size < 1 or frames < 0 or not 0 <= val_fraction < 1:
        raise ValueError("need shard_size >= 1, frames >= 0 and 0 <= val_fraction < 1")
    root = Path(out).resolve()
    dirs = {f"{k}_{s}": root / k / s for k in ("images", "labels") for s in ("train", "val")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASS_NAMES))
    (root / "dataset.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    has = formats.__contains__
    data = SampleData(root, dirs["images_train"], dirs["images_val"], dirs["labels_train"], dirs["labels_val"],
                      root / "dataset.yaml", [], root / "archive.zip" if has("zip") else None,
                      root / "images.parquet" if has("parquet") else None, root / "clip.mp4" if has("video") else None,
                      root / "clip_labels" if has("video") else None, frames,
                      root / "clip_hevc.mp4" if has("video") else None)
    workers = max(1, workers or os.cpu_count() or 1)
    with ExitStack() as stack:
        pool = stack.enter_context(ProcessPoolExecutor(workers, _mp_context(), cv2.setNumThreads, (1,))) if workers > 1 else None
        pmap = partial(pool.map, chunksize=max(1, min(8, frames // (4 * workers)))) if pool else map
        zf = stack.enter_context(zipfile.ZipFile(data.zip_path, "w")) if data.zip_path else None
        if data.parquet_path:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([("key", pa.string()), ("image", pa.binary()), ("labels", pa.string())])
            pqw = stack.enter_context(pq.ParquetWriter(data.parquet_path, schema))
        stills = _counted(pmap(_job, repeat(False), repeat(seed), range(frames), repeat(width), repeat(height),
                               repeat(0)), progress)
        for start in range(0, frames, shard_size):  # one shard / Parquet row group at a time
            chunk = [(f"frame_{i:06d}", *next(stills)) for i in range(start, min(start + shard_size, frames))]
            for i, (name, jpg, txt) in enumerate(chunk, start):
                split = "val" if is_val(i, val_fraction) else "train"
                (dirs[f"images_{split}"] / f"{name}.jpg").write_bytes(jpg)
                (dirs[f"labels_{split}"] / f"{name}.txt").write_text(txt)
                if zf:
                    zf.writestr(zipfile.ZipInfo(f"{name}.jpg", (1980, 1, 1, 0, 0, 0)), jpg)
            if has("tar"):
                data.tar_shards.append(root / "shards" / f"shard-{start // shard_size:06d}.tar")
                data.tar_shards[-1].parent.mkdir(exist_ok=True)
                with tarfile.open(data.tar_shards[-1], "w", format=tarfile.USTAR_FORMAT) as tar:
                    for name, jpg, txt in chunk:
                        _tar_add(tar, f"{name}.jpg", jpg)
                        _tar_add(tar, f"{name}.txt", txt.encode())
            if data.parquet_path:
                keys, jpgs, txts = zip(*chunk, strict=True)
                pqw.write_table(pa.table([[f"{k}.jpg" for k in keys], list(jpgs), list(txts)], schema=schema))
        if data.video_path:
            vmap = partial(pool.map, chunksize=1) if pool else map
            clip = _counted(vmap(_job, repeat(True), repeat(seed), range(video_frames), repeat(width), repeat(height),
                                 repeat(video_frames)), progress)
            _write_video(data, clip, width, height, fps)
    return data
