"""Video decoder `pyav`: FFmpeg through PyAV on the CPU, one keyframe segment at a time; frames are never
re-encoded.

`decode_segment` seeks to the segment's keyframe, feeds packets in decode order until every kept frame's packet
has gone in, flushes, and yields each kept frame once: (frame index, BGR uint8 array, None), or (index, None,
error) for a frame the decoder never delivered (a corrupt stretch) - nothing is lost. Frames are matched to
their index by presentation timestamp, so B-frame reordering and variable frame rates are handled.

Colour: FFmpeg's swscale converts with the frame's own tags (BT.709 when the stream says so, else BT.601;
full range only when tagged), as `ffmpeg` and OpenCV's FFmpeg reader do for untagged streams; the NVDEC path
(nvdec.py) uses the same rule.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from yoloray.vision.decoders.frames import FrameBatch
from yoloray.vision.letterbox import letterbox_cpu

DECODE_ERRORS = (OSError, ValueError, RuntimeError, EOFError)  # av.FFmpegError subclasses OSError/ValueError


def decode_segment(unit: dict, threads: int = 1) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Kept frames of one segment unit (data/video_index.py), in the order the decoder delivers them, then
    the frames it did not deliver as errors. One error row per kept frame when the file cannot be read."""
    from yoloray.data.video_index import open_video

    start, pts = unit["start"], unit["pts"]
    want = {pts[i - start]: i for i in unit["keep"]}
    pending = set(want)  # kept frames whose packet has not been fed yet
    done: set[int] = set()
    failure = None
    try:
        container, stream = open_video(unit)
    except DECODE_ERRORS as e:
        failure = f"cannot open video: {type(e).__name__}: {e}"
    else:
        with container:
            stream.thread_type = "AUTO" if threads > 1 else "SLICE"
            stream.codec_context.thread_count = threads
            try:
                container.seek(unit["seek_pts"], stream=stream, backward=True, any_frame=False)
                for packet in container.demux(stream):
                    last = packet.size == 0
                    frames = _decode(stream, None if last else packet)
                    for f in frames:
                        i = want.get(f.pts)
                        if i is not None and i not in done:
                            done.add(i)
                            yield i, _bgr(f), None
                    if last:
                        break
                    pending.discard(packet.pts)
                    if not pending:  # every kept frame is in the decoder: flush it and stop
                        for f in _decode(stream, None):
                            i = want.get(f.pts)
                            if i is not None and i not in done:
                                done.add(i)
                                yield i, _bgr(f), None
                        break
            except DECODE_ERRORS as e:  # the demuxer itself failed mid-way: the rest of the segment is lost
                failure = f"cannot read video: {type(e).__name__}: {e}"
    for i in sorted(set(want.values()) - done):
        yield i, None, failure or f"cannot decode video frame {i} (corrupt or missing data in the stream)"


def _decode(stream, packet) -> list:
    try:
        return stream.decode(packet)
    except DECODE_ERRORS:  # a corrupt packet: its frame (and frames that need it) will be missing
        return []


def _bgr(frame) -> np.ndarray:
    """BGR uint8 (H, W, 3) with the frame's own colour tags (see the module doc)."""
    full = frame.color_range == 2 or frame.format.name.startswith("yuvj")  # AVCOL_RANGE_JPEG
    return frame.to_ndarray(format="bgr24", src_color_range="JPEG" if full else "MPEG")


class PyAVDecoder:
    """A segment -> FrameBatches of at most `batch_size` kept frames, letterboxed to `imgsz` on the CPU
    (the Detector's `run` takes them as host frames). Keys, frame indices and pts ride along."""

    name = "pyav"

    def __init__(self, imgsz: tuple[int, int], batch_size: int, threads: int = 1):
        self.imgsz, self.batch_size, self.threads = imgsz, batch_size, threads

    def batches(self, unit: dict) -> Iterator[FrameBatch]:
        from yoloray.data.video_index import frame_ts

        items: list[tuple[int, np.ndarray | None, tuple | None, str | None]] = []
        for i, image, error in decode_segment(unit, self.threads):
            pixels = None if image is None else letterbox_cpu(image, self.imgsz)
            items.append((i, pixels, None if image is None else image.shape[:2], error))
            if len(items) == self.batch_size:
                yield self._batch(unit, items, frame_ts)
                items = []
        if items:
            yield self._batch(unit, items, frame_ts)

    def _batch(self, unit: dict, items: list, frame_ts) -> FrameBatch:
        batch = FrameBatch.empty(len(items))
        slots = []
        for j, (_, pixels, hw, error) in enumerate(items):
            if pixels is None:
                batch.errors[j] = error
                continue
            batch.geom.set(j, hw, self.imgsz, hw)
            batch.host_frames.append(pixels)
            slots.append(j)
        batch.slots = np.asarray(slots, np.int64)
        set_video_meta(batch, unit, [it[0] for it in items], frame_ts)
        return batch


def set_video_meta(batch: FrameBatch, unit: dict, frames: list[int], frame_ts) -> None:
    batch.frame_index = np.asarray(frames, np.int64)
    batch.pts = np.asarray([frame_ts(unit, i) for i in frames], np.float64)
    batch.keys = [f"{unit['prefix']}#frame={i}" for i in frames]
