"""Metrics of the detection service (ray.serve.metrics): on the Ray dashboard and its Prometheus endpoint,
with Ray's `ray_` prefix and Serve's own tags (application, deployment, replica) added to every series.

    yoloray_serve_requests_total{route}                    requests answered by a replica
    yoloray_serve_errors_total{route, status}              of those, the ones answered with status >= 400
    yoloray_serve_request_latency_seconds{route}           histogram, wall time inside the replica
    yoloray_serve_batch_size                               histogram, images per engine call
    yoloray_serve_images_total                             images run through the engine
    yoloray_serve_queue_depth                              gauge, images admitted and waiting for a batch
    yoloray_serve_gpu_memory_bytes{kind}                   gauge, CUDA only: allocated / reserved after the
                                                           last batch, budget (peak reserved at warmup)

Exported as `ray_yoloray_serve_*` (Ray prefixes `ray_` to custom metrics).

Requests that Serve itself refuses before they reach a replica (503 when `max_queued_requests` is full)
are counted by Serve's own `ray_serve_num_http_error_requests_total`, not here.
"""

from __future__ import annotations

from functools import cache

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
ROUTES = ("/detect", "/healthz", "/info")


@cache
def serve_metrics() -> dict:
    """Created once per replica process, inside the replica (so Serve adds its tags)."""
    from ray.serve.metrics import Counter, Gauge, Histogram

    return {
        "requests": Counter(
            "yoloray_serve_requests_total", "HTTP requests answered by a replica", tag_keys=("route",)
        ),
        "errors": Counter(
            "yoloray_serve_errors_total",
            "HTTP requests answered with an error status",
            tag_keys=("route", "status"),
        ),
        "latency": Histogram(
            "yoloray_serve_request_latency_seconds",
            "Wall time of one HTTP request inside the replica",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=("route",),
        ),
        "batch_size": Histogram(
            "yoloray_serve_batch_size", "Images per engine call of a replica", boundaries=BATCH_BOUNDARIES
        ),
        "images": Counter("yoloray_serve_images_total", "Images run through the engine"),
        "queue": Gauge("yoloray_serve_queue_depth", "Images admitted to the replica and waiting for a batch"),
        "gpu_memory": Gauge("yoloray_serve_gpu_memory_bytes", "GPU memory of one replica (CUDA only)",
                            tag_keys=("kind",)),
    }


def route_tag(path: str) -> str:
    """Bounded label values: the known routes, anything else is 'other'."""
    for r in ROUTES:
        if path == r or path.endswith(r):
            return r
    return "other"


def record_request(route: str, status: int, seconds: float) -> None:
    m = serve_metrics()
    tags = {"route": route}
    m["requests"].inc(1, tags)
    if status >= 400:
        m["errors"].inc(1, {"route": route, "status": str(status)})
    m["latency"].observe(seconds, tags)


def record_batch(size: int, device=None) -> None:
    m = serve_metrics()
    m["batch_size"].observe(size)
    m["images"].inc(size)
    set_gpu_memory(device)


def set_queue_depth(n: int) -> None:
    serve_metrics()["queue"].set(n)


def set_gpu_memory(device, budget_bytes: int | None = None) -> None:
    """Allocated and reserved bytes now (and the warmup budget); nothing on the CPU."""
    if getattr(device, "type", "cpu") != "cuda":
        return
    import torch

    m = serve_metrics()["gpu_memory"]
    m.set(torch.cuda.memory_allocated(device), {"kind": "allocated"})
    m.set(torch.cuda.memory_reserved(device), {"kind": "reserved"})
    if budget_bytes is not None:
        m.set(budget_bytes, {"kind": "budget"})
