"""A replica's image batcher: every image of every request is one item of one queue, so images of concurrent
requests share engine calls and each request gathers its own back.

Batches run one at a time in a worker thread (the Detector's own decode threads work inside it), so the
event loop keeps accepting requests while a batch runs. A batch is formed when the engine is free: it takes
every image waiting (up to `max_batch_size`), and waits for more only while the engine is idle and its
first image has waited less than `batch_wait_timeout_s`. (`@serve.batch` closes a batch
`batch_wait_timeout_s` after its first item even while the previous batch still runs; under load that cuts
the queue into many small batches, each paying a whole engine call.)

Admission: at most `max_queued_images` images wait on one replica; more get a JSON 503 with Retry-After, so
a replica sheds load itself before Serve's own queue fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from yoloray.observe.serve_metrics import record_batch, set_queue_depth
from yoloray.serve.http import ApiError, ImageResult

log = logging.getLogger("ray.serve")

RETRY_AFTER_S = 1


def probe_jpeg() -> bytes:
    """A small known-good JPEG: health probes and warmup."""
    import cv2

    im = np.full((64, 64, 3), 127, np.uint8)
    im[16:48, 16:48] = (40, 200, 90)
    return cv2.imencode(".jpg", im)[1].tobytes()


def split_detections(dets) -> list[ImageResult]:
    out = []
    for i in range(len(dets)):
        a, b = int(dets.offsets[i]), int(dets.offsets[i + 1])
        out.append(
            ImageResult(
                int(dets.widths[i]),
                int(dets.heights[i]),
                dets.boxes[a:b],
                dets.scores[a:b],
                dets.class_ids[a:b],
                dets.errors[i],
            )
        )
    return out


def detect_isolated(detector, datas: list[bytes], probe_image: bytes) -> list[ImageResult]:
    """One engine call for the batch. Should it raise, the engine is checked on a known-good image: if that
    fails too the engine is broken (re-raised: a server error, and check_health restarts the replica);
    otherwise some image broke the call, so each is run alone and the one(s) that raise get an error of
    their own, and the other requests of the batch are still answered."""
    try:
        return split_detections(detector.detect(datas))
    except Exception as batch_error:
        try:
            probe = detector.detect([probe_image])
        except Exception:
            raise batch_error from None
        if probe.errors[0] is not None:
            raise batch_error from None
        out = []
        for d in datas:
            try:
                out.extend(split_detections(detector.detect([d])))
            except Exception as e:
                out.append(ImageResult(error=f"could not process this image ({type(e).__name__}: {e})"))
        log.warning("a batch of %d failed (%s); answered image by image", len(datas), batch_error)
        return out


def batch_shapes(max_batch_size: int, engine_batch: int, static_batch: int | None) -> list[int]:
    """The engine batch sizes the batcher can make the engine run: every size up to max_batch_size, or,
    for an engine with a static batch (CUDA graph, compiled), the multiples of it those are padded to."""
    sizes = range(1, min(max_batch_size, engine_batch) + 1)
    if static_batch:
        return sorted({-(-n // static_batch) * static_batch for n in sizes})
    return list(sizes)


class _Item:
    """One image waiting for (or in) a batch."""

    __slots__ = ("data", "future", "arrived", "started")

    def __init__(self, data: bytes, future: asyncio.Future):
        self.data = data
        self.future = future
        self.arrived = time.monotonic()
        self.started = False


class ImageBatcher:
    def __init__(self, detector, max_batch_size: int, batch_wait_timeout_s: float, max_queued_images: int):
        self.detector = detector
        self.max_batch_size = max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.max_queued_images = max_queued_images
        self.probe_image = probe_jpeg()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="yoloray-engine")
        self.waiting = 0
        self.last_ok = time.monotonic()
        self.failure: str | None = None
        self.stats = {"batches": 0, "images": 0, "max_batch": 0, "batch_sizes": Counter()}
        self._queue: deque[_Item] = deque()
        self._arrival: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        set_queue_depth(0)

    def warm(self) -> dict:
        """The whole path (decode, engine, NMS) once at every batch shape the batcher can form, before the
        replica reports ready: no request pays for a first call at a new shape (cuDNN algorithm search,
        allocator growth). Returns what ran and how long it took."""
        t0 = time.perf_counter()
        engine = self.detector.engine
        sizes = batch_shapes(self.max_batch_size, self.detector.batch_size, engine.static_batch)
        for n in sizes:
            dets = self.detector.detect([self.probe_image] * n)
            if dets.errors[0] is not None:
                raise RuntimeError(f"the engine failed on a test image: {dets.errors[0]}")
        return {"batch_sizes": sizes, "seconds": round(time.perf_counter() - t0, 3)}

    def admit(self, images: int) -> None:
        """503 (JSON, Retry-After) when `images` more would pass max_queued_images on this replica."""
        if self.waiting + images > self.max_queued_images:
            raise ApiError(
                503,
                f"overloaded: {self.waiting} images already wait on this replica (max_queued_images "
                f"{self.max_queued_images}); retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )

    async def submit(self, data: bytes) -> ImageResult:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():  # started on the loop that serves requests
            self._arrival = asyncio.Event()
            self._task = loop.create_task(self._run_batches())
        item = _Item(data, loop.create_future())
        self._queue.append(item)
        self._arrival.set()
        self.waiting += 1
        set_queue_depth(self.waiting)
        try:
            return await item.future
        finally:
            if not item.started:  # cancelled (client went away) before its batch began
                self.waiting -= 1
                set_queue_depth(self.waiting)

    async def probe(self) -> None:
        """Run the engine on the known-good image (health checks); raises when it fails."""
        loop = asyncio.get_running_loop()
        dets = await loop.run_in_executor(self.executor, self.detector.detect, [self.probe_image])
        if dets.errors[0] is not None:
            raise RuntimeError(f"the engine failed on a test image: {dets.errors[0]}")
        self.failure = None
        self.last_ok = time.monotonic()

    def stats_snapshot(self) -> dict:
        stats = dict(self.stats)
        stats["batch_sizes"] = {str(k): v for k, v in sorted(self.stats["batch_sizes"].items())}
        return stats

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run_batches(self) -> None:
        """One batch at a time, formed when the engine is free (see the module docstring)."""
        q, arrival = self._queue, self._arrival
        size, wait = self.max_batch_size, self.batch_wait_timeout_s
        while True:
            while q and q[0].future.done():  # its request was cancelled (client gone)
                q.popleft()
            if not q or (len(q) < size and q[0].arrived + wait > time.monotonic()):
                arrival.clear()
                timeout = q[0].arrived + wait - time.monotonic() if q else None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(arrival.wait(), timeout)
                continue
            items = [it for it in (q.popleft() for _ in range(min(size, len(q)))) if not it.future.done()]
            try:
                out = await self._detect_batch(items)
            except Exception as e:
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            for it, r in zip(items, out):
                if not it.future.done():
                    it.future.set_result(r)

    async def _detect_batch(self, items: list[_Item]) -> list[ImageResult]:
        for it in items:
            it.started = True
        self.waiting -= len(items)
        set_queue_depth(self.waiting)
        loop = asyncio.get_running_loop()
        datas = [it.data for it in items]
        try:
            out = await loop.run_in_executor(
                self.executor, detect_isolated, self.detector, datas, self.probe_image
            )
        except Exception as e:
            self.failure = f"{type(e).__name__}: {e}"
            raise
        self.last_ok = time.monotonic()
        self.failure = None
        n = len(items)
        s = self.stats
        s["batches"] += 1
        s["images"] += n
        s["max_batch"] = max(s["max_batch"], n)
        s["batch_sizes"][n] += 1
        record_batch(n, self.detector.device)
        return out
