"""Video in the batch job: keyframe segment rows (data/video_index.py; each video file is indexed in its read
task, data/readers.py) -> one output row per kept frame.

Where a segment is decoded (the engine config's `decode`):
- `cpu`: every segment in Ray tasks upstream of the actors (`expand_on_cpu`, fused with the read tasks), with
  PyAV, letterboxed there to the engine's input size; the frames reach the actors as prepared pixels.
- `gpu`: in the detector actor itself (`SegmentRunner`): NVDEC through PyNvVideoCodec, frames staying in GPU
  memory (PyAV in the actor where NVDEC cannot run). Only the segment reference crosses the object store.
- `hybrid`: `hybrid_cpu_share` of the segments upstream on PyAV, the rest in the actors.
Every kept frame becomes exactly one row: its detections, or the error that says why it has none.
"""

from __future__ import annotations

import json
import logging
import time
import zlib

import numpy as np
import pyarrow as pa

from yoloray.batch.predecode import PIXELS, SIZE_COLUMNS

log = logging.getLogger(__name__)
SEGMENT = "segment"
SAMPLE_FILES_PER_ROW = 4  # video files `kept_per_segment` indexes on the driver to size the actors' calls


def segment_mask(batch: pa.Table) -> np.ndarray:
    if SEGMENT not in batch.column_names:
        return np.zeros(batch.num_rows, bool)
    return np.asarray(batch.column(SEGMENT).is_valid())


def kept_per_segment(units: list[dict], options=None) -> float | None:
    """Mean kept frames of a video job's segments, from the first SAMPLE_FILES_PER_ROW video files (indexed
    here on the driver); None for a job with stills or without a readable video."""
    from yoloray.data.inputs import SourceOptions
    from yoloray.data.video_index import segments_of

    videos = [u for u in units if u.get("kind") == "video"]
    if not videos or len(videos) < len(units):
        return None
    sampled = segments_of(videos, options or SourceOptions(), files=SAMPLE_FILES_PER_ROW)
    kept = [len(u["keep"]) for u in sampled if "keep" in u]
    return float(np.mean(kept)) if kept else None


def frames_per_row(kept: float | None, decode: str, share: float) -> float:
    """Mean frames an actor gets per input row, so a call still holds ~batch_size x batches_per_call frames:
    1 for stills and CPU-decoded frames, a segment's kept frames for a segment the actor decodes itself.
    `kept`: the job's `kept_per_segment` (None for a job with stills, which set the pace of a mixed job)."""
    if kept is None or decode == "cpu":
        return 1.0
    s = share if decode == "hybrid" else 0.0
    return kept / (s * kept + 1 - s)


def drop_done_frames(batch: pa.Table, done: frozenset) -> pa.Table:
    """Resume: a segment row keeps only its frames without a result yet; a segment with none left is dropped."""
    mask = segment_mask(batch)
    if not mask.any():
        return batch
    segments = batch.column(SEGMENT).to_pylist()
    keep_row = np.ones(batch.num_rows, bool)
    for r in np.flatnonzero(mask):
        unit = json.loads(segments[r])
        left = [i for i in unit["keep"] if f"{unit['prefix']}#frame={i}" not in done]
        if len(left) != len(unit["keep"]):
            unit["keep"] = left
            segments[r] = json.dumps(unit)
        keep_row[r] = bool(left)
    batch = batch.set_column(batch.schema.get_field_index(SEGMENT), SEGMENT, pa.array(segments, pa.string()))
    return batch.filter(pa.array(keep_row))


def expand_on_cpu(batch: pa.Table, imgsz: tuple[int, int], share: float) -> pa.Table:
    """Upstream stage: `share` of the segment rows -> one prepared row per kept frame (PIXELS + SIZE_COLUMNS,
    the batch/predecode.py format, or `error`); every other row passes through. The output always has the
    PIXELS columns, so every block of the stage has one schema."""
    from yoloray.data.video_index import frame_ts
    from yoloray.vision.decoders.pyav import decode_segment
    from yoloray.vision.letterbox import letterbox_cpu

    batch = _with_pixel_columns(batch)
    segments = batch.column(SEGMENT).to_pylist() if SEGMENT in batch.column_names else [None] * batch.num_rows
    take = np.asarray([s is not None and on_cpu(json.loads(s)["unit_id"], share) for s in segments], bool)
    if not take.any():
        return batch
    cols: dict[str, list] = {name: [] for name in batch.column_names}
    for r in np.flatnonzero(take):
        unit = json.loads(segments[r])
        source = batch.column("source")[r].as_py()
        for i, image, error in decode_segment(unit):
            pixels = None if image is None else letterbox_cpu(image, imgsz).tobytes()
            hw = (None, None) if image is None else image.shape[:2]
            row = {"key": f"{unit['prefix']}#frame={i}", "image": None, "source": source, "frame": i,
                   "ts": frame_ts(unit, i), "error": error, SEGMENT: None, PIXELS: pixels,
                   **dict(zip(SIZE_COLUMNS, (*hw, *hw)))}
            for name in cols:
                cols[name].append(row.get(name))  # a user's own extra columns: null on frame rows
    frames = pa.Table.from_pydict(cols, schema=batch.schema)
    return pa.concat_tables([batch.filter(pa.array(~take)), frames])


def on_cpu(unit_id: str, share: float) -> bool:
    """Whether a segment is in the CPU share: a fixed pick per unit (a hash of its id), so every block and
    every rerun agrees, whatever the blocks hold."""
    return zlib.crc32(unit_id.encode()) % 10_000 < share * 10_000


def _with_pixel_columns(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    if PIXELS not in batch.column_names:
        batch = batch.append_column(PIXELS, pa.nulls(n, pa.binary()))
        for name in SIZE_COLUMNS:
            batch = batch.append_column(name, pa.nulls(n, pa.int32()))
    return batch


def open_video_decoder(device, imgsz: tuple[int, int], batch_size: int, gpu: bool = True, input_dtype=None):
    """With `gpu` (decode gpu/hybrid), NVDEC on a CUDA device where PyNvVideoCodec is installed (delivering
    model input of `input_dtype` where it can), else PyAV (FFmpeg on the CPU)."""
    from yoloray.vision.decoders.pyav import PyAVDecoder

    if gpu and device.type == "cuda":
        from yoloray.vision.decoders.nvdec import NvdecDecoder, nvdec_missing

        why = nvdec_missing()
        if why is None:
            return NvdecDecoder(device, imgsz, batch_size, input_dtype)
        log.warning("%s; decoding video on the CPU with PyAV instead", why)
    return PyAVDecoder(imgsz, batch_size)


class SegmentRunner:
    """In the detector actor: segment rows -> decode (NVDEC or PyAV) -> Detector.run -> output rows. Thread-safe
    like the Detector: each calling thread decodes on its own decoder and CUDA stream."""

    def __init__(self, detector, engine_key: str):
        self.detector, self.engine_key = detector, engine_key
        self.decoder = open_video_decoder(detector.device, detector.imgsz, detector.batch_size,
                                          gpu=detector.config.decode != "cpu", input_dtype=detector.engine.dtype)

    def run(self, rows: pa.Table) -> tuple[pa.Table, dict[str, float], int]:
        """(output rows, stage timings summed, error rows)."""
        from yoloray.data.sink import OUTPUT_SCHEMA

        parts: list[pa.Table] = []
        timings = {"decode": 0.0}
        for source, segment in zip(rows.column("source").to_pylist(), rows.column(SEGMENT).to_pylist()):
            with self.detector.stream():  # decode, letterbox and inference queue on one stream, in order
                parts.extend(self._segment(json.loads(segment), source, timings))
        out = pa.concat_tables(parts) if parts else OUTPUT_SCHEMA.empty_table()
        return out, timings, out.num_rows - out.column("error").null_count

    def _segment(self, unit: dict, source: str, timings: dict) -> list[pa.Table]:
        from yoloray.data.sink import detections_to_table

        parts = []
        batches = iter(self.decoder.batches(unit))
        while True:
            t0 = time.perf_counter()
            frames = next(batches, None)
            timings["decode"] += time.perf_counter() - t0
            if frames is None:
                return parts
            dets = self.detector.run(frames)
            for k, v in dets.timings.items():
                timings[k] = timings.get(k, 0.0) + v
            parts.append(detections_to_table(dets, frames.keys, [source] * len(frames), frames.frame_index,
                                             frames.pts, self.engine_key))


def detect_video(detector, path: str, options=None) -> list[dict]:
    """`yoloray detect clip.mp4`: every kept frame of one local video as an output row (dict), in frame order."""
    import os

    from yoloray.data.inputs import SourceOptions
    from yoloray.data.video_index import video_units

    base = {"kind": "video", "root": os.path.dirname(os.path.abspath(path)), "source": path,
            "prefix": os.path.basename(path)}
    units = video_units(base, options or SourceOptions())
    if len(units) == 1 and "error" in units[0]:
        return [{"key": path, "source": path, "frame": None, "ts": None, "width": None, "height": None,
                 "detections": [], "error": units[0]["error"], "engine": detector.key}]
    runner = SegmentRunner(detector, detector.key)
    table = runner.run(pa.table({"source": [path] * len(units), SEGMENT: [json.dumps(u) for u in units]}))[0]
    return sorted(table.to_pylist(), key=lambda r: r["frame"])
