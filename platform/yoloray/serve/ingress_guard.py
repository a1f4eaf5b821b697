"""The ingress guard: an ASGI middleware Ray Serve runs in front of every HTTP server it starts for the
service, installed through Ray's own hook (read by each Serve process when it starts):

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=yoloray.serve.ingress_guard:middlewares

That hook wraps Serve's Python HTTP proxy and, under direct ingress (HAProxy in front), each ingress
replica's own HTTP server. `yoloray serve` sets it (and the limits below) when it starts its local Ray;
on a cluster, export the same variables before `ray start` on every node (see the README, "Serving").

1. A request body is read whole before the request goes to Serve's router. A client that declares a
   Content-Length and stops sending (or trickles) holds a connection and nothing else: no replica slot
   (`max_ongoing_requests`), no place in Serve's queue. Once `YOLORAY_SERVE_BODY_TIMEOUT_S` (default 30)
   pass before the body is complete, the client gets 408 and the connection is closed.
2. A body over `YOLORAY_SERVE_MAX_BODY_BYTES` (default 128 MiB) is refused (413) without reading the rest.
3. Every error Serve answers itself in plain text becomes this service's JSON error body
   `{"error": "...", "status": N}` with its status and headers (Retry-After) kept: 503 past
   `max_queued_requests` (back-pressure) or with no replica up yet, 408 past `request_timeout_s`, 500 when a
   replica died under a request, 404 on a route no application serves.

Ray-free apart from Starlette's `Middleware` wrapper (the type Serve's hook requires).
"""

from __future__ import annotations

import asyncio
import json
import os

BODY_TIMEOUT_ENV = "YOLORAY_SERVE_BODY_TIMEOUT_S"
MAX_BODY_ENV = "YOLORAY_SERVE_MAX_BODY_BYTES"
HOOK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
HOOK = "yoloray.serve.ingress_guard:middlewares"
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_BODY_BYTES = 128 * 2**20


def error_json(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}).encode()


class IngressGuard:
    """Pure ASGI middleware (see the module docstring)."""

    def __init__(
        self,
        app,
        body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        self.app = app
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except asyncio.TimeoutError:
            return await _respond(
                send,
                408,
                f"the request body did not arrive within {self.body_timeout_s:g} s; send it whole and promptly",
                close=True,
            )
        except _TooLarge as e:
            return await _respond(
                send, 413, f"request body {e} is over the limit of {self.max_body_bytes:,} bytes", close=True
            )
        except _Disconnected:
            return None  # nobody to answer
        return await self.app(scope, _replay(body, receive), _json_errors(send))

    async def _read_body(self, receive) -> bytes:
        chunks, n = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            n += len(chunk)
            if n > self.max_body_bytes:
                raise _TooLarge(f"of more than {n:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


def _replay(body: bytes, receive):
    """The whole body in one message, then the client's own messages (Serve watches them for a disconnect)."""
    done = False

    async def replay():
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json_errors(send):
    """Passes responses through, except an error status whose body is not JSON: that body becomes the text
    of a JSON error body (Serve's own 503/408/500/404 answers are plain text)."""
    held: dict | None = None
    parts: list[bytes] = []

    async def guarded(message):
        nonlocal held
        if message["type"] == "http.response.start":
            headers = message.get("headers") or []
            ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            if message["status"] >= 400 and b"json" not in ctype.lower():
                held = message
                return None
        elif message["type"] == "http.response.body" and held is not None:
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return None
            text = b"".join(parts).decode("utf-8", "replace").strip() or "error"
            status = held["status"]
            keep = [(k, v) for k, v in held.get("headers") or [] if k.lower() not in _REPLACED]
            body = error_json(status, text)
            await send(
                {"type": "http.response.start", "status": status, "headers": keep + _json_headers(body)}
            )
            return await send({"type": "http.response.body", "body": body, "more_body": False})
        return await send(message)

    return guarded


_REPLACED = {b"content-type", b"content-length", b"transfer-encoding"}


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


async def _respond(send, status: int, message: str, close: bool = False) -> None:
    body = error_json(status, message)
    headers = _json_headers(body) + ([(b"connection", b"close")] if close else [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# ------------------------------------------------------------------------------------ Ray's hook
def settings(env=None) -> dict:
    """The guard's limits from the environment (the defaults where unset)."""
    env = os.environ if env is None else env
    out = {"body_timeout_s": DEFAULT_BODY_TIMEOUT_S, "max_body_bytes": DEFAULT_MAX_BODY_BYTES}
    for key, name, cast in (
        ("body_timeout_s", BODY_TIMEOUT_ENV, float),
        ("max_body_bytes", MAX_BODY_ENV, int),
    ):
        raw = env.get(name)
        if raw:
            try:
                value = cast(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None
            if value <= 0:
                raise ValueError(f"{name}={raw!r} must be above 0")
            out[key] = value
    return out


def middlewares() -> list:
    """RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH target: Serve calls it in each HTTP ingress process."""
    from starlette.middleware import Middleware

    return [Middleware(IngressGuard, **settings())]


def install(
    env: dict | None = None, body_timeout_s: float | None = None, max_body_bytes: int | None = None
) -> dict:
    """Set the hook (and the limits given) in `env` (default os.environ) for the Ray this process is about
    to start: its Serve processes inherit them. A hook already set to something else is kept."""
    env = os.environ if env is None else env
    env.setdefault(HOOK_ENV, HOOK)
    if body_timeout_s is not None:
        env[BODY_TIMEOUT_ENV] = f"{body_timeout_s:g}"
    if max_body_bytes is not None:
        env[MAX_BODY_ENV] = str(int(max_body_bytes))
    settings(env)  # a bad value fails here, in the user's process, not in every proxy
    return {k: env[k] for k in (HOOK_ENV, BODY_TIMEOUT_ENV, MAX_BODY_ENV) if k in env}


def installed(env=None) -> bool:
    return (os.environ if env is None else env).get(HOOK_ENV) == HOOK
