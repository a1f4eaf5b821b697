"""The Ray Serve deployment: one warmed `Detector` per replica behind a FastAPI ingress.

Each request may carry several images; every image is one item of the replica's batch queue, so images of
concurrent requests share engine calls, and each request gathers its own back. Batches run one at a time in
a worker thread (the Detector's own decode threads work inside it), so the event loop keeps accepting
requests while a batch runs. A batch is formed when the engine is free: it takes every image waiting (up to
`max_batch_size`), and waits for more only while the engine is idle and its first image has waited less
than `batch_wait_timeout_s`. (`@serve.batch` closes a batch `batch_wait_timeout_s` after its first item even
while the previous batch still runs; under load that cuts the queue into many small batches, each paying a
whole engine call.) Build, warmup and one call through the whole path happen in `__init__`: no request pays
for a build, compile or graph capture.

Routes: POST /detect, GET /healthz, GET /info (see yoloray.serve.app for the API).
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

import yoloray
from yoloray.config import ServeConfig
from yoloray.observe.serve_metrics import record_batch, record_request, route_tag, set_queue_depth
from yoloray.serve.http import (
    MULTIPART,
    ApiError,
    DetectParams,
    ImageResult,
    check_content_length,
    check_content_type,
    check_image,
    effective_params,
    error_body,
    image_error,
    images_from_parts,
    media_type,
    narrow,
    parse_multipart,
    read_body,
    to_row,
)
from yoloray.serve.ingress_guard import installed as guard_installed
from yoloray.serve.ingress_guard import settings as guard_settings

log = logging.getLogger("ray.serve")

HEALTH_FRESH_S = 5.0  # a batch that succeeded this recently proves the engine runs; else probe it
RETRY_AFTER_S = 1

# Deployment defaults; a serve config's `deployments:` entry overrides each of them.
DEFAULT_OPTIONS = {
    "max_ongoing_requests": 64,
    "max_queued_requests": 256,
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    "ray_actor_options": {"num_cpus": 1},
    "health_check_period_s": 10.0,
    "health_check_timeout_s": 60.0,
    "graceful_shutdown_timeout_s": 30.0,
}

app = FastAPI(
    title="yoloray",
    version=yoloray.__version__,
    description="YOLO object detection: POST image bytes (or multipart files) to /detect.",
)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    return error_response(422, f"bad request parameters: {exc.errors()}")


class _Observe:
    """Request count, errors and latency per route. A plain ASGI middleware: Starlette's
    `@app.middleware("http")` (BaseHTTPMiddleware) costs ~0.5 ms of the replica's event loop per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            try:
                record_request(route_tag(scope["path"]), status, time.perf_counter() - t0)
            except Exception:  # metrics must never fail a request
                log.debug("could not record request metrics", exc_info=True)


app.add_middleware(_Observe)


class _Item:
    """One image waiting for (or in) a batch."""

    __slots__ = ("data", "future", "arrived", "started")

    def __init__(self, data: bytes, future: asyncio.Future):
        self.data = data
        self.future = future
        self.arrived = time.monotonic()
        self.started = False


def _tiny_jpeg() -> bytes:
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


def _deployment_info() -> dict:
    """The live deployment options of this replica (what Serve applied from the config)."""
    try:
        ctx = serve.get_replica_context()
        dc = ctx._deployment_config
        auto = dc.autoscaling_config
        return {
            "app": ctx.app_name,
            "deployment": ctx.deployment,
            "replica": ctx.replica_tag,
            "max_ongoing_requests": dc.max_ongoing_requests,
            "max_queued_requests": dc.max_queued_requests,
            "num_replicas": dc.num_replicas,
            "autoscaling_config": auto.model_dump(
                include={
                    "min_replicas",
                    "max_replicas",
                    "target_ongoing_requests",
                    "upscale_delay_s",
                    "downscale_delay_s",
                }
            )
            if auto is not None
            else None,
        }
    except Exception as e:  # outside a replica, or a Serve version with other internals
        return {"unavailable": str(e)}


@serve.deployment(name="Detector", **DEFAULT_OPTIONS)
@serve.ingress(app)
class DetectorDeployment:
    def __init__(self, args: dict):
        from yoloray.detector import Detector

        self.config = ServeConfig.parse(args, source="serve args")
        engine = self.config.engine
        self.detector = Detector(engine).warmup()
        self.names = self.detector.names
        self.key = self.detector.key
        self._engine_params = {"conf": engine.conf, "iou": engine.iou, "max_det": engine.max_det}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="yoloray-engine")
        self._health_image = _tiny_jpeg()
        probe = self.detector.detect([self._health_image])  # the whole path once: decode, engine, NMS
        if probe.errors[0] is not None:
            raise RuntimeError(f"the engine failed on a test image: {probe.errors[0]}")
        self._queue: deque[_Item] = deque()
        self._arrival: asyncio.Event | None = None
        self._batcher: asyncio.Task | None = None
        self._waiting = 0
        self._last_ok = time.monotonic()
        self._failure: str | None = None
        self._stats = {"batches": 0, "images": 0, "max_batch": 0, "batch_sizes": Counter()}
        set_queue_depth(0)
        log.info("yoloray replica ready: %r", self.detector)

    # ------------------------------------------------------------------------------ routes
    @app.post("/detect")
    async def detect(self, request: Request):
        try:
            return JSONResponse(await self._detect(request))
        except ApiError as e:
            return error_response(e.status, e.message, e.headers)
        except Exception as e:  # the engine failed: our fault, never the client's
            log.exception("detection failed")
            return error_response(500, f"internal error while running the engine: {type(e).__name__}: {e}")

    @app.get("/healthz")
    async def healthz(self):
        try:
            await self.check_health()
        except Exception as e:
            return error_response(503, f"engine is not healthy: {e}")
        return {"status": "ok", "engine": self.key}

    @app.get("/info")
    async def info(self):
        c = self.config
        stats = dict(self._stats)
        stats["batch_sizes"] = {str(k): v for k, v in sorted(self._stats["batch_sizes"].items())}
        return {
            "version": yoloray.__version__,
            "model": c.engine.model,
            "engine": c.engine.model_dump(mode="json"),
            "key": self.key,
            "device": str(self.detector.device),
            "classes": {str(k): v for k, v in self.names.items()},
            "batching": {"max_batch_size": c.max_batch_size, "batch_wait_timeout_s": c.batch_wait_timeout_s},
            "limits": {
                "max_image_bytes": c.max_image_bytes,
                "max_request_bytes": c.max_request_bytes,
                "max_images_per_request": c.max_images_per_request,
                "max_queued_images": c.max_queued_images,
                "body_timeout_s": c.body_timeout_s,
                "conf": [0.0, 1.0],
                "iou": [0.0, 1.0],
                "max_det": [1, 1000],
            },
            "deployment": _deployment_info(),
            "ingress_guard": guard_settings() if guard_installed() else None,
            "stats": stats,
            "queue_depth": self._waiting,
        }

    # ------------------------------------------------------------------------------ health, shutdown
    async def check_health(self):
        """Serve calls this every health_check_period_s; raising marks the replica unhealthy (restarted)."""
        if self._failure is None and time.monotonic() - self._last_ok < HEALTH_FRESH_S:
            return
        loop = asyncio.get_running_loop()
        dets = await loop.run_in_executor(self._executor, self.detector.detect, [self._health_image])
        if dets.errors[0] is not None:
            raise RuntimeError(f"the engine failed on a test image: {dets.errors[0]}")
        self._failure = None
        self._last_ok = time.monotonic()

    def __del__(self):
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            batcher.cancel()
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        detector = getattr(self, "detector", None)
        if detector is not None:
            detector.close()

    # ------------------------------------------------------------------------------ detection
    async def _detect(self, request: Request) -> dict:
        c = self.config
        params = DetectParams.from_query(request.query_params.multi_items())
        mtype, mparams = media_type(request.headers.get("content-type"))
        check_content_type(mtype)
        limit = c.max_request_bytes if mtype == MULTIPART else c.max_image_bytes
        check_content_length(request.headers.get("content-length"), limit)
        self._admit(1)  # before the body is read: an overloaded replica answers at once
        body = await read_body(request.stream(), limit, c.body_timeout_s)
        if mtype == MULTIPART:
            datas, _, errors = images_from_parts(parse_multipart(body, mparams.get("boundary")))
            if len(datas) > c.max_images_per_request:
                raise ApiError(
                    413, f"{len(datas)} images in one request; the limit is {c.max_images_per_request}"
                )
        else:
            datas, errors = [body], [None]
        max_pixels = c.engine.max_pixels
        errors = [e or check_image(d, c.max_image_bytes, max_pixels) for d, e in zip(datas, errors)]
        single = len(datas) == 1
        if single and errors[0] is not None:
            raise errors[0]
        ok = [i for i, e in enumerate(errors) if e is None]
        self._admit(len(ok))
        ran = await asyncio.gather(*(self._submit(datas[i]) for i in ok))
        results = [ImageResult(error=e.message if e else None) for e in errors]
        for i, r in zip(ok, ran):
            results[i] = r
        if single and results[0].error is not None:
            raise image_error(results[0].error, datas[0])
        eff = effective_params(params, **self._engine_params)
        agnostic = c.engine.agnostic_nms
        rows = [to_row(narrow(r, eff, self._engine_params, agnostic), self.names) for r in results]
        return {"results": rows, "engine": self.key, "params": eff}

    def _admit(self, images: int) -> None:
        """503 (JSON, Retry-After) when `images` more would pass max_queued_images on this replica."""
        limit = self.config.max_queued_images
        if self._waiting + images > limit:
            raise ApiError(
                503,
                f"overloaded: {self._waiting} images already wait on this replica (max_queued_images "
                f"{limit}); retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )

    async def _submit(self, data: bytes) -> ImageResult:
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher.done():  # started on the loop that serves requests
            self._arrival = asyncio.Event()
            self._batcher = loop.create_task(self._run_batches())
        item = _Item(data, loop.create_future())
        self._queue.append(item)
        self._arrival.set()
        self._waiting += 1
        set_queue_depth(self._waiting)
        try:
            return await item.future
        finally:
            if not item.started:  # cancelled (client went away) before its batch began
                self._waiting -= 1
                set_queue_depth(self._waiting)

    async def _run_batches(self) -> None:
        """One batch at a time, formed when the engine is free (see the module docstring)."""
        q, arrival = self._queue, self._arrival
        size, wait = self.config.max_batch_size, self.config.batch_wait_timeout_s
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
        self._waiting -= len(items)
        set_queue_depth(self._waiting)
        loop = asyncio.get_running_loop()
        datas = [it.data for it in items]
        try:
            out = await loop.run_in_executor(
                self._executor, detect_isolated, self.detector, datas, self._health_image
            )
        except Exception as e:
            self._failure = f"{type(e).__name__}: {e}"
            raise
        self._last_ok = time.monotonic()
        self._failure = None
        n = len(items)
        s = self._stats
        s["batches"] += 1
        s["images"] += n
        s["max_batch"] = max(s["max_batch"], n)
        s["batch_sizes"][n] += 1
        record_batch(n)
        return out
