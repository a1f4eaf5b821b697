"""Metrics of the batch job's detector actors (ray.util.metrics), on the Ray dashboard and Prometheus.

Ray 2.60 exports a metric registered as `yoloray_x` as `ray_yoloray_x` (and a counter registered without a
`_total` suffix gets one), with Ray's own labels added (`WorkerId` tells actors apart, `NodeAddress`,
`SessionName`, `Component`, `Version`). What Prometheus holds, with our labels:

    ray_yoloray_images_total{run, engine}                 output rows (images / video frames) written
    ray_yoloray_image_errors_total{run, engine, kind}     of those, rows with `error` set, by kind (observe/errors.py)
    ray_yoloray_batch_latency_seconds{run, engine}        histogram, wall time of one actor call
    ray_yoloray_batch_size{run, engine}                   histogram, images per actor call
    ray_yoloray_stage_seconds_total{run, engine, stage}   seconds per stage: decode, letterbox (and upload),
                                                          inference, nms, write (output table)
    ray_yoloray_queue_depth{run, engine}                  gauge, actor calls running or waiting in an actor
    ray_yoloray_gpu_memory_bytes{run, engine, kind}       gauge, CUDA only: allocated / reserved now, and
                                                          budget (peak reserved at warmup, observe/memory.py)

`run` is the job's run label (`yoloray infer --run-name`, default the --out folder's name). Counters start at
zero for every kind and stage when an actor starts, so `rate()` and `increase()` see the first error.
"""

from __future__ import annotations

import contextlib
import threading
from functools import cache

from yoloray.observe.errors import ERROR_KINDS
from yoloray.observe.trace import STAGES

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
PREFIX = "ray_"  # what Ray puts in front of every custom metric name on export


def start_at_zero(counter, tags: dict) -> None:
    """Export a counter series at 0 before its first increment. `Counter.inc` refuses 0; `_record` is the
    call `inc` makes (Ray 2.60)."""
    with contextlib.suppress(Exception):  # another Ray version: the series appears at its first increment
        counter._record(0, tags=tags)


@cache
def _batch_metrics() -> dict:
    from ray.util.metrics import Counter, Gauge, Histogram

    run_engine = ("run", "engine")
    return {
        "images": Counter("yoloray_images_total", "Output rows (images or video frames) of batch inference",
                          tag_keys=run_engine),
        "errors": Counter("yoloray_image_errors_total", "Output rows with an error, by kind",
                          tag_keys=(*run_engine, "kind")),
        "latency": Histogram("yoloray_batch_latency_seconds", "Wall time of one detector actor call",
                             LATENCY_BOUNDARIES_S, tag_keys=run_engine),
        "batch_size": Histogram("yoloray_batch_size", "Images per detector actor call", BATCH_BOUNDARIES,
                                tag_keys=run_engine),
        "stage": Counter("yoloray_stage_seconds_total", "Seconds spent per stage of the detector actor",
                         tag_keys=(*run_engine, "stage")),
        "queue": Gauge("yoloray_queue_depth", "Detector actor calls running or waiting in one actor",
                       tag_keys=run_engine),
        "gpu_memory": Gauge("yoloray_gpu_memory_bytes", "GPU memory of one detector actor (CUDA only)",
                            tag_keys=(*run_engine, "kind")),
    }


class BatchMetrics:
    """The metrics of one detector actor, labelled with its run and engine key."""

    def __init__(self, run: str, engine: str):
        self.tags = {"run": run or "unnamed", "engine": engine}
        self.m = _batch_metrics()
        self._in_flight = 0
        self._lock = threading.Lock()
        start_at_zero(self.m["images"], self.tags)
        for kind in ERROR_KINDS:
            start_at_zero(self.m["errors"], {**self.tags, "kind": kind})
        for stage in STAGES:
            start_at_zero(self.m["stage"], {**self.tags, "stage": stage})
        self.m["queue"].set(0, self.tags)

    def call_started(self) -> None:
        self._queue(+1)

    def call_finished(self) -> None:
        self._queue(-1)

    def _queue(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta
            self.m["queue"].set(self._in_flight, self.tags)

    def record_call(self, images: int, error_kinds: dict[str, int], seconds: float,
                    timings: dict[str, float]) -> None:
        m, tags = self.m, self.tags
        if images:
            m["images"].inc(images, tags)
            m["batch_size"].observe(images, tags)
        for kind, n in error_kinds.items():
            if n:
                m["errors"].inc(n, {**tags, "kind": kind})
        m["latency"].observe(seconds, tags)
        for stage, s in timings.items():
            if s > 0 and stage in STAGES:
                m["stage"].inc(s, {**tags, "stage": stage})

    def gpu_memory(self, device, budget_bytes: int | None = None) -> None:
        """Allocated and reserved bytes now (and the warmup budget once known); nothing on the CPU."""
        if getattr(device, "type", "cpu") != "cuda":
            return
        import torch

        m, tags = self.m["gpu_memory"], self.tags
        m.set(torch.cuda.memory_allocated(device), {**tags, "kind": "allocated"})
        m.set(torch.cuda.memory_reserved(device), {**tags, "kind": "reserved"})
        if budget_bytes is not None:
            m.set(budget_bytes, {**tags, "kind": "budget"})
