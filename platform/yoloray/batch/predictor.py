"""The `map_batches` class around Detector: built and warmed once per actor, then one call per batch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa

from yoloray.batch.predecode import prepared_inputs
from yoloray.batch.video import SegmentRunner, segment_mask
from yoloray.config import Profile
from yoloray.data.sink import OUTPUT_SCHEMA, detections_to_table, error_table
from yoloray.observe.actor import ActorObserver
from yoloray.observe.reports import ActorObserve

_VIDEO_LOCK = threading.Lock()  # concurrent first calls make one SegmentRunner


class Predictor:
    """Input rows (data/inputs.py contract) -> output rows (data/sink.py OUTPUT_SCHEMA)."""

    def __init__(self, config: dict, decode_threads: int | None = None, predecoded: bool = False,
                 observe: ActorObserve | None = None, video: bool = False):
        """`predecoded`: a `decode: hybrid` job whose CPU share was decoded upstream (batch/predecode.py); the
        actor's Detector GPU-decodes the rest. Rows keep the engine key of the configuration as given.
        `observe`: metric labels, tracing and reports to the driver (observe/actor.py). `video`: the job has
        video segments for this actor to decode: its video decoder is made (and its kernels compiled) here,
        during start-up, not in the first call."""
        from yoloray.detector import Detector, resolve_device

        began = time.time()  # the driver compares it with the job's start: scheduling, process start, imports
        profile = Profile.model_validate(config)
        self.engine = profile.output_key()
        if predecoded:
            profile = profile.replace(decode="gpu")
        self.observer = ActorObserver(observe, self.engine, resolve_device(profile.device))
        t0 = time.perf_counter()
        self.detector = Detector(profile, decode_threads=decode_threads)
        t1 = time.perf_counter()
        self.detector.warmup()
        t2 = time.perf_counter()
        self.video = SegmentRunner(self.detector, self.engine) if video else None
        t3 = time.perf_counter()
        self.observer.started(began, {"engine build": t1 - t0, "warmup": t2 - t1, "video decoder": t3 - t2})

    def __call__(self, batch: pa.Table) -> pa.Table:
        with self.observer.call() as call:
            read_error = batch.column("error")
            unreadable = np.asarray(read_error.is_valid())
            parts = []
            if unreadable.any():
                bad = batch.filter(pa.array(unreadable))
                parts.append(
                    error_table(bad["key"], bad["source"], bad["frame"], bad["ts"], bad["error"], self.engine)
                )
                batch = batch.filter(pa.array(~unreadable))
            timings: dict[str, float] = {}
            segments = segment_mask(batch)
            if segments.any():  # video segments this actor decodes itself (batch/video.py)
                if self.video is None:  # a caller that did not say `video` (e.g. detect() on its own rows)
                    with _VIDEO_LOCK:
                        if self.video is None:
                            self.video = SegmentRunner(self.detector, self.engine)
                table, timings, _ = self.video.run(batch.filter(pa.array(segments)))
                parts.append(table)
                batch = batch.filter(pa.array(~segments))
            if batch.num_rows:
                images = prepared_inputs(batch, self.detector.imgsz)
                dets = self.detector.detect(images)
                timings = {k: timings.get(k, 0.0) + v for k, v in dets.timings.items()}
                with call.writing():
                    parts.append(detections_to_table(dets, batch["key"], batch["source"], batch["frame"],
                                                     batch["ts"], self.engine))
            out = pa.concat_tables(parts) if parts else OUTPUT_SCHEMA.empty_table()
            call.finish(out, timings)
            return out
