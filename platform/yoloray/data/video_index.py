"""Videos -> keyframe segments: the container's packets are demuxed (never decoded) to learn every frame's
presentation time and where the keyframes are; a video becomes segments of whole GOPs.

`list_units` (data/units.py) lists a video file as one file unit (`kind: video`, no segment fields) and demuxes
nothing; the file's read task indexes it and yields one reference row per segment (`segments_of`, in
data/readers.py), so indexing runs on the cluster's CPUs, in parallel, as the job streams. The driver indexes
only the few files a sample needs (`segments_of` with `files`: profile.py, batch/video.py, tune/archive.py).

A segment unit (`kind: video`) is: frames [start, stop) in presentation order, the keyframe to seek to, the
presentation timestamps of its frames (container ticks) and the frames to keep (sampling, --start/--end). Frame
N is the N-th frame in presentation order; its `ts` is (pts - first pts) x time base, in seconds, so variable
frame rates and B-frames get their true times. Short GOPs are merged until a segment has at least
`SEGMENT_MIN_FRAMES` frames, so a unit is worth a task. A file that cannot be opened or has no video stream is
one unit that reads as one error row.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from yoloray.data.inputs import SourceOptions, locate

SEGMENT_MIN_FRAMES = 120
SAMPLE_FILES = 8  # video files a driver-side sample (profile, actor call sizing, tune) indexes at most
# PyAV's errors mix in a builtin one (OSError, ValueError, EOFError, RuntimeError, ...); a Matroska file with no
# frames raises its EOFError on open, and is one error row like any file that cannot be opened
OPEN_ERRORS = (OSError, ValueError, IndexError, EOFError, RuntimeError)


@dataclass
class VideoIndex:
    pts: np.ndarray  # int64 container ticks of every frame, presentation order
    keyframes: list[int]  # frame indices (presentation order) of the keyframes, ascending
    time_base: tuple[int, int]
    fps: float | None  # the container's average rate (for --video-fps)
    codec: str
    width: int
    height: int
    colorspace: int  # FFmpeg's AVColorSpace tag (2: unspecified) and AVColorRange (2: full), for NVDEC's conversion
    color_range: int
    open_gop: bool = False  # a frame decoded after a keyframe is shown before it (HEVC CRA leading pictures)

    def ts(self, frames) -> np.ndarray:
        num, den = self.time_base
        return (self.pts[frames] - self.pts[0]) * num / den


def open_video(unit: dict):
    """(container, its first video stream) of a unit's file; local files by path, others through pyarrow."""
    import av
    import pyarrow.fs as pafs

    fs, path = locate(unit)
    container = av.open(path) if isinstance(fs, pafs.LocalFileSystem) else av.open(fs.open_input_file(path))
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream in the file")
    return container, container.streams.video[0]


def stated_frames(unit: dict) -> int | None:
    """The frame count a video file's container states (MP4/MOV sample tables, AVI headers), read without
    demuxing; None when it states none (Matroska) or the file cannot be opened."""
    try:
        container, stream = open_video(unit)
    except OPEN_ERRORS:
        return None
    with container:
        return stream.frames or None


def index_video(unit: dict) -> VideoIndex:
    """The unit's file's index; a local file is indexed once per content (hard links and repeats of one file
    share its inode, so an archive of links is demuxed once)."""
    import pyarrow.fs as pafs

    fs, path = locate(unit)
    if not isinstance(fs, pafs.LocalFileSystem):
        return _demux_index(unit)
    return _LOCAL_INDEXES.get(path, lambda: _demux_index(unit))


class ContentCache:
    """Values made once per content of a local file (`content_id`: hard links and repeats share it), kept up to
    `limit` in total `weight` (1 a value unless given); past it the cache starts again. Thread-safe: `make`
    runs outside the lock, so threads make values for different files at once."""

    def __init__(self, limit: int, weight=None):
        self.limit, self.weight = limit, weight or (lambda value: 1)
        self._values: dict[tuple, object] = {}
        self._total = 0
        self._lock = threading.Lock()

    def get(self, path: str, make):
        content = content_id(path)
        with self._lock:
            value = self._values.get(content)
        if value is None:
            value = make()
            w = self.weight(value)
            with self._lock:
                if content not in self._values and w <= self.limit:
                    if self._total + w > self.limit:
                        self._values.clear()
                        self._total = 0
                    self._values[content] = value
                    self._total += w
        return value

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._total = 0


# Every read worker keeps its own: hard-linked repeats (benchmarks, a tune sample) are demuxed once per worker;
# bounded by frames (8 bytes of pts each), not files, so an archive of long files cannot fill a worker's memory.
_LOCAL_INDEXES = ContentCache(limit=2_000_000, weight=lambda index: len(index.pts))


def content_id(path: str) -> tuple:
    """A local file's content as the caches here know it: device, inode, size, mtime (hard links share it)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _demux_index(unit: dict) -> VideoIndex:
    container, stream = open_video(unit)
    with container:
        pts, key, open_gop, key_pts = [], [], False, None
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:  # the demuxer's final flush packet, or no timestamp
                continue
            pts.append(packet.pts)
            key.append(packet.is_keyframe)
            if packet.is_keyframe:
                key_pts = packet.pts
            elif key_pts is not None and packet.pts < key_pts:
                open_gop = True
        cc = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        tb = stream.time_base
        order = np.argsort(np.asarray(pts, np.int64), kind="stable")
        ordered = np.asarray(pts, np.int64)[order]
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        keyframes = sorted(int(rank[i]) for i, k in enumerate(key) if k)
        full = cc.color_range == 2 or (cc.format is not None and cc.format.name.startswith("yuvj"))
        return VideoIndex(ordered, keyframes, (tb.numerator, tb.denominator), float(rate) if rate else None,
                          cc.name, cc.width, cc.height, int(cc.colorspace), 2 if full else int(cc.color_range),
                          open_gop)


def keep_frame(i: int, fps: float | None, options: SourceOptions) -> bool:
    """Sampling on absolute frame indices: every video_stride-th frame, or frame i when floor(i*video_fps/fps)
    changes (every frame when the container reports no rate)."""
    if options.video_fps is not None and fps and options.video_fps < fps:
        r = options.video_fps / fps
        return i == 0 or math.floor(i * r + 1e-9) != math.floor((i - 1) * r + 1e-9)
    return i % options.video_stride == 0


def index_videos(units: list[dict]) -> list[VideoIndex | Exception]:
    """`index_video` of each unit, or the OPEN_ERRORS exception it raised; each distinct content once, on
    threads. PyAV lets threads overlap part of the open and the demux: on the 2-core development machine, 64
    indexings took 0.55 s in one thread and 0.39 s in two."""
    keys = [_content_key(u) for u in units]
    distinct: dict[tuple, dict] = {}
    for key, unit in zip(keys, units):
        distinct.setdefault(key, unit)

    def one(unit: dict) -> VideoIndex | Exception:
        try:
            return index_video(unit)
        except OPEN_ERRORS as e:
            return e

    workers = min(len(distinct), os.cpu_count() or 1, 32)
    if workers > 1:
        with ThreadPoolExecutor(workers, thread_name_prefix="video-index") as pool:
            done = dict(zip(distinct, pool.map(one, distinct.values())))
    else:
        done = {key: one(unit) for key, unit in distinct.items()}
    return [done[key] for key in keys]


def _content_key(unit: dict) -> tuple:
    """What `index_videos` indexes once: a local file's content (as ContentCache), else the path."""
    import pyarrow.fs as pafs

    try:
        fs, path = locate(unit)
        if isinstance(fs, pafs.LocalFileSystem):
            return "local", *content_id(path)
    except OPEN_ERRORS:
        pass  # indexing it raises the same error, which becomes the unit's
    return "path", unit["root"], unit.get("rel", unit["prefix"])


def video_units(base: dict, options: SourceOptions, min_frames: int | None = None,
                index: VideoIndex | Exception | None = None) -> list[dict]:
    """Keyframe segments of one video (see the module doc); `base` has kind/root/source/prefix (a video file
    unit from `list_units` does; its unit_id gives way to the segments'). `index`: the file's, when the caller
    indexed it already (`index_videos`)."""
    base = {k: v for k, v in base.items() if k != "unit_id"}
    if index is None:
        (index,) = index_videos([base])
    if isinstance(index, Exception):
        return [{"unit_id": f"video:{base['source']}", **base,
                 "error": f"cannot open video: {type(index).__name__}: {index}"}]
    n = len(index.pts)
    if n == 0:
        return [{"unit_id": f"video:{base['source']}", **base, "error": "video has no frames"}]
    ts = index.ts(np.arange(n))
    t0 = options.video_start or 0.0
    t1 = math.inf if options.video_end is None else options.video_end
    keep = [i for i in range(n) if t0 <= ts[i] < t1 and keep_frame(i, index.fps, options)]
    cuts = [k for k in index.keyframes if k > 0] + [n]
    min_frames = SEGMENT_MIN_FRAMES if min_frames is None else min_frames
    units, start, k = [], 0, 0
    first_key = index.keyframes[0] if index.keyframes else 0
    for stop in cuts:
        if stop - start < min_frames and stop != n:
            continue
        kept = [i for i in keep[k:] if i < stop]
        k += len(kept)
        if kept:
            seek = int(index.pts[max(start, first_key)] if start == 0 else index.pts[start])
            units.append({
                "unit_id": f"video:{base['source']}#frames={start}-{stop}", **base, "start": start, "stop": stop,
                "seek_pts": seek, "pts": index.pts[start:stop].tolist(), "keep": kept,
                "time_base": list(index.time_base), "first_pts": int(index.pts[0]), "codec": index.codec,
                "width": index.width, "height": index.height, "colorspace": index.colorspace,
                "color_range": index.color_range, "open_gop": index.open_gop,
            })
        start = stop
    return units


def is_video_file(unit: dict) -> bool:
    """A video as `list_units` lists it: the whole file, not yet indexed (no segment fields, no error)."""
    return unit.get("kind") == "video" and not {"start", "keep", "error"} & unit.keys()


def segments_of(units: Sequence[dict], options: SourceOptions, files: int | None = None) -> Iterator[dict]:
    """`units` in order, each video file unit (`is_video_file`) replaced by its keyframe segments
    (`video_units`), or by its one error unit; everything else (segment units, other kinds) passes through.
    The files are indexed here as the consumer asks for more, a few at a time on threads (`index_videos`), so
    one that stops early indexes little beyond what it used; after the first `files` video files, the rest
    pass through unindexed (a driver-side sample never indexes the whole archive)."""
    files_at = [i for i, u in enumerate(units) if is_video_file(u)]
    if files is not None:
        files_at = files_at[:files]
    chunk = max(1, min(os.cpu_count() or 1, 32))
    order = {pos: k for k, pos in enumerate(files_at)}
    indexes: dict[int, VideoIndex | Exception] = {}
    for pos, unit in enumerate(units):
        k = order.get(pos)
        if k is None:
            yield unit
            continue
        if pos not in indexes:
            ahead = files_at[k : k + chunk]
            indexes.update(zip(ahead, index_videos([units[i] for i in ahead])))
        yield from video_units(unit, options, index=indexes.pop(pos))


def frame_ts(unit: dict, frame: int) -> float:
    num, den = unit["time_base"]
    return (unit["pts"][frame - unit["start"]] - unit["first_pts"]) * num / den


def reference_rows(unit: dict, options: SourceOptions | None = None) -> list[dict]:
    """The read stage's rows of a segment unit: one segment reference (the segment travels, never its frames;
    batch/video.py decodes it), or the unit's one error row when the file could not be opened or has no
    frames. (A video file unit is read as the rows of its `segments_of`: data/readers.py.)"""
    import json

    row = {"key": unit["prefix"], "image": None, "source": unit["source"], "frame": None, "ts": None,
           "error": unit.get("error"), "segment": None}
    if row["error"] is None:
        row.update(key=f"{unit['prefix']}#frames={unit['start']}-{unit['stop']}", frame=unit["start"],
                   segment=json.dumps(unit))
    return [row]
