"""The ingress guard (yoloray.serve.ingress_guard) in front of a small ASGI app on a real uvicorn server on
127.0.0.1 (no Ray): whole bodies reach the app, stalled and oversized uploads get JSON errors without
reaching it, plain-text errors become JSON. The same guard in front of Serve: tests/integration/test_serve.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import requests

from yoloray.serve.http import ApiError, read_body
from yoloray.serve.ingress_guard import (
    BODY_TIMEOUT_ENV,
    HOOK,
    HOOK_ENV,
    MAX_BODY_ENV,
    IngressGuard,
    install,
    middlewares,
    settings,
)

TIMEOUT = 20


async def inner(scope, receive, send):
    """Echoes the body length in one message count; /busy answers like Serve's back-pressure (plain text)."""
    if scope["path"] == "/busy":
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": b"Request dropped", "more_body": True})
        await send({"type": "http.response.body", "body": b" due to backpressure.", "more_body": False})
        return
    message = await receive()
    body = json.dumps({"n": len(message["body"]), "more": message["more_body"]}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server():
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = IngressGuard(inner, body_timeout_s=1.0, max_body_bytes=100_000)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    t = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + TIMEOUT
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    t.join(TIMEOUT)


def test_whole_body_reaches_the_app_in_one_message(server):
    chunks = (b"x" * 10_000 for _ in range(5))  # chunked transfer, five pieces
    r = requests.post(server + "/detect", data=chunks, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json() == {"n": 50_000, "more": False}
    assert requests.get(server + "/x", timeout=TIMEOUT).json() == {"n": 0, "more": False}


def test_stalled_upload_gets_json_408_and_a_closed_connection(server):
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nonly a little")
        data = b""
        while chunk := s.recv(4096):  # the server closes the connection after answering
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {
        "error": "the request body did not arrive within 1 s; send it whole and promptly",
        "status": 408,
    }


def test_oversized_body_is_refused_with_json_413(server):
    r = requests.post(server + "/detect", data=(b"x" * 60_000 for _ in range(3)), timeout=TIMEOUT)
    assert r.status_code == 413
    assert r.json()["status"] == 413 and "over the limit of 100,000 bytes" in r.json()["error"]


def test_plain_text_errors_become_json_with_headers_kept(server):
    r = requests.get(server + "/busy", timeout=TIMEOUT)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": "Request dropped due to backpressure.", "status": 503}


def test_settings_and_install():
    env: dict = {}
    assert install(env, body_timeout_s=7.5, max_body_bytes=1000) == {
        HOOK_ENV: HOOK,
        BODY_TIMEOUT_ENV: "7.5",
        MAX_BODY_ENV: "1000",
    }
    assert settings(env) == {"body_timeout_s": 7.5, "max_body_bytes": 1000}
    assert install({HOOK_ENV: "mine:hook"})[HOOK_ENV] == "mine:hook"  # a hook already set is kept
    with pytest.raises(ValueError, match=BODY_TIMEOUT_ENV):
        install({}, body_timeout_s=-1)
    with pytest.raises(ValueError, match="not a number"):
        settings({MAX_BODY_ENV: "lots"})
    (m,) = middlewares()
    assert m.cls is IngressGuard


def test_replica_read_body_times_out_a_stalled_client():
    """The replica's own deadline, for a Serve started without the guard (e.g. `serve run`)."""

    async def stalls():
        yield b"abc"
        await asyncio.sleep(30)
        yield b"never"

    with pytest.raises(ApiError) as e:
        asyncio.run(read_body(stalls(), 1000, timeout_s=0.2))
    assert e.value.status == 408 and "3 bytes came" in e.value.message
