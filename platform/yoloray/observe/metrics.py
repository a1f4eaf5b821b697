"""Metrics on the Ray dashboard / Prometheus (ray.util.metrics), shared by the batch actors.

Created lazily inside the process that reports them (a Ray worker); names are prefixed `yoloray_`.
"""

from __future__ import annotations

from functools import cache

STAGES = ("decode", "preprocess", "inference", "nms")
LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


@cache
def batch_metrics():
    from ray.util.metrics import Counter, Histogram

    return {
        "images": Counter("yoloray_images_total", "Images processed by batch inference", tag_keys=("engine",)),
        "errors": Counter("yoloray_image_errors_total", "Images that became error rows", tag_keys=("engine",)),
        "batch_latency": Histogram(
            "yoloray_batch_latency_seconds", "Wall time of one Detector call", LATENCY_BOUNDARIES_S, tag_keys=("engine",)
        ),
        "stage": Counter(
            "yoloray_stage_seconds_total", "Seconds spent per pipeline stage", tag_keys=("engine", "stage")
        ),
    }


def record_batch(engine: str, images: int, errors: int, seconds: float, timings: dict[str, float]) -> None:
    m = batch_metrics()
    tags = {"engine": engine}
    m["images"].inc(images, tags)
    if errors:
        m["errors"].inc(errors, tags)
    m["batch_latency"].observe(seconds, tags)
    for stage in STAGES:
        if timings.get(stage):
            m["stage"].inc(timings[stage], {"engine": engine, "stage": stage})
