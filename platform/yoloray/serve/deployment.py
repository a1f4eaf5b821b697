"""The Ray Serve deployment: one warmed `Detector` per replica, answering HTTP (a FastAPI ingress) and gRPC
(`Detect`, proto/detect.proto) through one image batcher (yoloray.serve.batcher).

Cold start: build, warmup and one whole-path call at every batch shape the batcher can form happen in
`__init__`, and Serve reports a replica ready only once `__init__` returns: no request pays for a build,
compile, graph capture or first call at a new shape. `/info` shows what was warmed and how long it took.

Routes: POST /detect, GET /healthz, GET /info (see yoloray.serve.app for the API); gRPC Detect. Every
answer to /detect carries the replica that ran it (`X-Yoloray-Replica`; gRPC: trailing metadata
`yoloray-replica`), which the load benchmark uses to time each new replica's first request.
"""

import asyncio
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

import yoloray
from yoloray.observe import memory
from yoloray.observe.budgets import detector_fields, remember
from yoloray.observe.serve_metrics import record_request, route_tag, set_gpu_memory
from yoloray.serve import grpc_api
from yoloray.serve.batcher import ImageBatcher
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
from yoloray.serve.ingress import active_ingress
from yoloray.serve.settings import ServeConfig

log = logging.getLogger("ray.serve")

HEALTH_FRESH_S = 5.0  # a batch that succeeded this recently proves the engine runs; else probe it
REPLICA_HEADER = "X-Yoloray-Replica"

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


def _replica_tag() -> str:
    try:
        return serve.get_replica_context().replica_tag
    except Exception:  # outside a replica
        return "local"


@serve.deployment(name="Detector", **DEFAULT_OPTIONS)
@serve.ingress(app)
class DetectorDeployment:
    def __init__(self, args: dict):
        from yoloray.detector import Detector

        t0 = time.perf_counter()
        config = ServeConfig.parse(args, source="serve args")
        self.detector = Detector(config.profile).warmup()  # `auto` fields resolved for this replica's device
        self.config = c = config.resolved(self.detector.config)
        profile = c.profile
        self.names = self.detector.names
        self.key = self.detector.key
        self._engine_params = {"conf": profile.conf, "iou": profile.iou, "max_det": profile.max_det}
        self.batcher = ImageBatcher(
            self.detector, c.max_batch_size, c.batch_wait_timeout_s, c.max_queued_images
        )
        self.warmup = self.batcher.warm()
        self.warmup["init_seconds"] = round(time.perf_counter() - t0, 3)
        self.memory = memory.measure(self.detector.device)  # peak of build and warmup (observe/memory.py)
        # remembered for `num_gpus: auto` (observe/budgets.py); nothing on the CPU
        if self.memory.measured:
            remember(self.memory, detector_fields(profile, c.max_batch_size), profile.cache_dir)
        set_gpu_memory(self.detector.device, self.memory.peak_reserved)
        self.replica = _replica_tag()
        log.info("yoloray replica ready: %r, warmed %s; %s", self.detector, self.warmup, self.memory.text())

    # ------------------------------------------------------------------------------ HTTP
    @app.post("/detect")
    async def detect(self, request: Request):
        headers = {REPLICA_HEADER: self.replica}
        try:
            return JSONResponse(await self._detect_http(request), headers=headers)
        except ApiError as e:
            return error_response(e.status, e.message, {**e.headers, **headers})
        except Exception as e:  # the engine failed: our fault, never the client's
            log.exception("detection failed")
            msg = f"internal error while running the engine: {type(e).__name__}: {e}"
            return error_response(500, msg, headers)

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
        return {
            "version": yoloray.__version__,
            "model": c.profile.model,
            "profile": c.profile.model_dump(mode="json"),
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
            "ingress": active_ingress(),
            "warmup": self.warmup,
            "replica": self.replica,
            "stats": self.batcher.stats_snapshot(),
            "queue_depth": self.batcher.waiting,
            "gpu_memory": {**self.memory.to_dict(), "text": self.memory.text()},
        }

    # ------------------------------------------------------------------------------ gRPC
    async def Detect(self, request, grpc_context=None):  # noqa: N802 (the gRPC method's name)
        """proto/detect.proto `Detector.Detect`: the same detection as POST /detect, as a DetectResponse."""
        t0 = time.perf_counter()
        status = 200
        try:
            if grpc_context is not None:
                grpc_context.set_trailing_metadata([("yoloray-replica", self.replica)])
            params = grpc_api.request_params(request)
            out = await self._run(params, list(request.images), [None] * len(request.images))
            return grpc_api.response(**out)
        except ApiError as e:
            status = e.status
            return grpc_api.refuse(grpc_context, e)
        except Exception as e:
            log.exception("detection failed")
            status = 500
            return grpc_api.refuse(grpc_context, ApiError(500, f"internal error: {type(e).__name__}: {e}"))
        finally:
            try:
                record_request("/grpc/Detect", status, time.perf_counter() - t0)
            except Exception:
                log.debug("could not record request metrics", exc_info=True)

    # ------------------------------------------------------------------------------ health, shutdown
    async def check_health(self):
        """Serve calls this every health_check_period_s; raising marks the replica unhealthy (restarted)."""
        b = self.batcher
        if b.failure is None and time.monotonic() - b.last_ok < HEALTH_FRESH_S:
            return
        await b.probe()

    def __del__(self):
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()
        detector = getattr(self, "detector", None)
        if detector is not None:
            detector.close()

    # ------------------------------------------------------------------------------ detection
    async def _detect_http(self, request: Request) -> dict:
        c = self.config
        params = DetectParams.from_query(request.query_params.multi_items())
        mtype, mparams = media_type(request.headers.get("content-type"))
        check_content_type(mtype)
        limit = c.max_request_bytes if mtype == MULTIPART else c.max_image_bytes
        check_content_length(request.headers.get("content-length"), limit)
        self.batcher.admit(1)  # before the body is read: an overloaded replica answers at once
        body = await read_body(request.stream(), limit, c.body_timeout_s)
        if mtype == MULTIPART:
            datas, _, errors = images_from_parts(parse_multipart(body, mparams.get("boundary")))
        else:
            datas, errors = [body], [None]
        return await self._run(params, datas, errors)

    async def _run(self, params: DetectParams, datas: list[bytes], errors: list) -> dict:
        """Check, batch and narrow the images of one request: the JSON answer {"results", "engine", "params"}."""
        c = self.config
        if not datas:
            raise ApiError(400, "the request holds no image")
        if len(datas) > c.max_images_per_request:
            raise ApiError(
                413, f"{len(datas)} images in one request; the limit is {c.max_images_per_request}"
            )
        max_pixels = c.profile.max_pixels
        errors = [e or check_image(d, c.max_image_bytes, max_pixels) for d, e in zip(datas, errors)]
        single = len(datas) == 1
        if single and errors[0] is not None:
            raise errors[0]
        ok = [i for i, e in enumerate(errors) if e is None]
        self.batcher.admit(len(ok))
        ran = await asyncio.gather(*(self.batcher.submit(datas[i]) for i in ok))
        results = [ImageResult(error=e.message if e else None) for e in errors]
        for i, r in zip(ok, ran):
            results[i] = r
        if single and results[0].error is not None:
            raise image_error(results[0].error, datas[0])
        eff = effective_params(params, **self._engine_params)
        agnostic = c.profile.agnostic_nms
        rows = [to_row(narrow(r, eff, self._engine_params, agnostic), self.names) for r in results]
        return {"results": rows, "engine": self.key, "params": eff}
