"""A small client for the detection service, over HTTP or gRPC, with connection reuse, a limit on requests in
flight, and retries with backoff when the service is overloaded (503 / gRPC UNAVAILABLE) or a connection
fails. Both transports answer the same JSON form: {"results": [...], "engine": KEY, "params": {...}}.

    from yoloray.client import Client

    with Client("http://127.0.0.1:8000", max_in_flight=16) as c:     # or Client("grpc://127.0.0.1:9000")
        answer = c.detect(open("frame.jpg", "rb").read(), conf=0.4)
        for d in answer["results"][0]["detections"]:
            print(d["label"], d["score"], d["x1"], d["y1"], d["x2"], d["y2"])
        answers = c.detect_many(frames)                              # many requests, max_in_flight at once

`AsyncClient` is the same in asyncio (`await c.detect(...)`); `Client` runs one on a private event loop, so it
may be shared by threads. `request()` returns an `Answer` (status, body, replica, attempts) instead of
raising `DetectError` on a refused request; the load benchmark (benchmarks/serve_load.py) uses it.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RETRY_STATUSES = (503,)
REPLICA_HEADER = "X-Yoloray-Replica"


@dataclass
class Answer:
    status: int  # HTTP status; gRPC codes are mapped to theirs (OK 200, UNAVAILABLE 503, ...)
    body: dict  # the answer, or {"error": ..., "status": ...}
    replica: str | None = None  # the replica that answered (the service's X-Yoloray-Replica)
    attempts: int = 1


class DetectError(Exception):
    def __init__(self, answer: Answer):
        super().__init__(f"{answer.status}: {answer.body.get('error', answer.body)}")
        self.answer = answer
        self.status = answer.status


def backoff_s(attempt: int, base_s: float, cap_s: float, retry_after_s: float | None = None) -> float:
    """Exponential backoff with full jitter, at least the server's Retry-After (both capped at cap_s)."""
    delay = random.uniform(0, min(cap_s, base_s * 2**attempt))
    return min(cap_s, max(delay, retry_after_s or 0.0))


class AsyncClient:
    """See the module docstring. `url`: http://HOST:PORT[/prefix] or grpc://HOST:PORT."""

    def __init__(
        self,
        url: str,
        max_in_flight: int = 8,
        retries: int = 3,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
        timeout_s: float = 60.0,
        application: str | None = None,
    ):
        if max_in_flight < 1 or retries < 0:
            raise ValueError("max_in_flight must be >= 1 and retries >= 0")
        self.grpc = url.startswith("grpc://")
        if not self.grpc and not url.startswith(("http://", "https://")):
            raise ValueError(f"url {url!r} must start with http://, https:// or grpc://")
        self.url = (
            url.removeprefix("grpc://") if self.grpc else url.rstrip("/").removesuffix("/detect") + "/detect"
        )
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.backoff = (backoff_base_s, backoff_cap_s)
        self.timeout_s = timeout_s
        self.application = application  # Serve's gRPC proxy: which application, when it serves several
        self._limit: asyncio.Semaphore | None = None
        self._session = None
        self._stub = None
        self._channel = None

    async def detect(self, images: bytes | Sequence[bytes], **params) -> dict:
        """The answer for one image or several (one request); DetectError when the service refuses it."""
        answer = await self.request(images, **params)
        if answer.status != 200:
            raise DetectError(answer)
        return answer.body

    async def request(self, images: bytes | Sequence[bytes], **params) -> Answer:
        """One request, retried on 503 / UNAVAILABLE / a failed connection; the last answer either way."""
        images = [images] if isinstance(images, (bytes, bytearray, memoryview)) else list(images)
        params = {k: v for k, v in params.items() if v is not None}
        unknown = set(params) - {"conf", "iou", "max_det"}
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}; allowed: conf, iou, max_det")
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.max_in_flight)
        async with self._limit:
            for attempt in range(self.retries + 1):
                answer, retry_after = await self._once(images, params)
                answer.attempts = attempt + 1
                if answer.status not in RETRY_STATUSES or attempt == self.retries:
                    return answer
                await asyncio.sleep(backoff_s(attempt, *self.backoff, retry_after))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # ------------------------------------------------------------------------------------ transports
    async def _once(self, images: list[bytes], params: dict) -> tuple[Answer, float | None]:
        try:
            return await (self._grpc(images, params) if self.grpc else self._http(images, params))
        except (OSError, asyncio.TimeoutError) as e:  # refused, reset, timed out: worth another try
            return Answer(503, {"error": f"connection failed: {type(e).__name__}: {e}", "status": 503}), None

    async def _http(self, images: list[bytes], params: dict) -> tuple[Answer, float | None]:
        import aiohttp

        if self._session is None:  # one pool of kept-alive connections, as many as requests in flight
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_in_flight),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
        if len(images) == 1:
            data, headers = images[0], {"Content-Type": "image/jpeg"}
        else:
            data, headers = aiohttp.FormData(), {}
            for i, im in enumerate(images):
                data.add_field("image", im, filename=f"{i}.jpg", content_type="image/jpeg")
        try:
            async with self._session.post(self.url, data=data, headers=headers, params=params) as r:
                try:
                    body = await r.json(content_type=None)
                except ValueError:
                    body = {"error": (await r.text())[:500], "status": r.status}
                retry_after = r.headers.get("Retry-After")
                answer = Answer(r.status, body, r.headers.get(REPLICA_HEADER))
                return answer, float(retry_after) if retry_after and retry_after.isdigit() else None
        except aiohttp.ClientConnectionError as e:
            raise ConnectionError(str(e)) from None

    async def _grpc(self, images: list[bytes], params: dict) -> tuple[Answer, float | None]:
        import grpc

        from yoloray.serve.grpc_api import http_status, to_dict
        from yoloray.serve.proto import detect_pb2, detect_pb2_grpc

        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.url)
            self._stub = detect_pb2_grpc.DetectorStub(self._channel)
        metadata = (("application", self.application),) if self.application else None
        call = self._stub.Detect(
            detect_pb2.DetectRequest(images=images, **params), timeout=self.timeout_s, metadata=metadata
        )
        try:
            msg = await call
        except grpc.aio.AioRpcError as e:
            status = http_status(e.code(), e.details() or "")
            return Answer(status, {"error": e.details() or e.code().name, "status": status}), None
        trailing = dict(await call.trailing_metadata() or ())
        return Answer(200, to_dict(msg), trailing.get("yoloray-replica")), None


class Client:
    """AsyncClient on a private event loop thread: a blocking client that threads may share."""

    def __init__(self, url: str, **options):
        self._async = AsyncClient(url, **options)  # a bad argument fails before any thread starts
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="yoloray-client", daemon=True)
        self._thread.start()

    def detect(self, images: bytes | Sequence[bytes], **params) -> dict:
        return self._run(self._async.detect(images, **params))

    def request(self, images: bytes | Sequence[bytes], **params) -> Answer:
        return self._run(self._async.request(images, **params))

    def detect_many(self, images: Iterable[bytes], **params) -> list[Answer]:
        """One request per image, up to max_in_flight at once; the answers in order (refused ones too)."""

        async def all_of():
            return await asyncio.gather(*(self._async.request(im, **params) for im in images))

        return self._run(all_of())

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._async.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
