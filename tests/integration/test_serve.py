"""The detection service on a local Ray Serve (CPU), over real HTTP on 127.0.0.1.

One module-scoped service: the `yoloray` app started through `yoloray serve`'s `main()` from a Serve config
file (demo detector, 256x256, batch 4), and a `flood` app with max_ongoing_requests=1 to see back-pressure.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import yaml

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from yoloray.client import Client, DetectError  # noqa: E402
from yoloray.config import ConfigError, Profile  # noqa: E402
from yoloray.profile import resolve_here  # noqa: E402
from yoloray.serve.grpc_api import SERVICER  # noqa: E402

ENGINE = {"imgsz": 256, "batch_size": 4, "device": "cpu"}
MAX_IMAGE_BYTES = 1_000_000
BODY_TIMEOUT_S = 6.0
TIMEOUT = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory, demo_model):
    from yoloray.serve.app import build_application, main
    from yoloray.serve.ingress import prepare
    from yoloray.serve.settings import ServeConfig

    port, grpc_port = _free_port(), _free_port()
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "grpc_options": {"port": grpc_port, "grpc_servicer_functions": [SERVICER]},
        "applications": [
            {
                "name": "yoloray",
                "route_prefix": "/",
                "import_path": "yoloray.serve.app:build_app",
                "args": {
                    "engine": {**ENGINE, "model": demo_model},
                    "max_batch_size": 4,
                    "batch_wait_timeout_s": 0.05,
                    "max_image_bytes": MAX_IMAGE_BYTES,
                    "max_request_bytes": 4 * MAX_IMAGE_BYTES,
                    "max_images_per_request": 4,
                    "max_queued_images": 64,
                    "body_timeout_s": BODY_TIMEOUT_S,
                },
                "deployments": [
                    {
                        "name": "Detector",
                        "max_ongoing_requests": 32,
                        "max_queued_requests": 64,
                        "autoscaling_config": {
                            "min_replicas": 1,
                            "max_replicas": 2,
                            "target_ongoing_requests": 64,
                        },
                        "ray_actor_options": {"num_cpus": 0.5},
                    }
                ],
            }
        ],
    }
    started = not ray.is_initialized()
    if started:  # the ingress guard rides on the environment Serve's processes inherit (as `yoloray serve`)
        saved = dict(os.environ)
        try:
            prepare([ServeConfig.parse(config["applications"][0]["args"])])
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        finally:  # this process's own environment as it was (Ray's processes keep theirs)
            os.environ.clear()
            os.environ.update(saved)
    path = tmp_path_factory.mktemp("serve") / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        assert main([str(path), "--no-block"]) == 0
        flood = build_application(
            {
                "engine": {**ENGINE, "model": demo_model},
                "max_batch_size": 4,
                "batch_wait_timeout_s": 0.5,
                "body_timeout_s": BODY_TIMEOUT_S,
            },
            max_ongoing_requests=1,
            max_queued_requests=1,
            backpressure_config={"status_code": 503, "retry_after_s": 1},
            autoscaling_config=None,
            num_replicas=1,
            ray_actor_options={"num_cpus": 0.5},
        )
        serve.run(flood, name="flood", route_prefix="/flood", blocking=False)
        yield {
            "url": f"http://127.0.0.1:{port}",
            "grpc": f"grpc://127.0.0.1:{grpc_port}",
            "config": config,
            "path": path,
            "model": demo_model,
        }
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()


@pytest.fixture(scope="module")
def reference(demo_model):
    """The same engine in this process: what the service must answer."""
    from yoloray.detector import Detector

    det = Detector(Profile(**ENGINE, model=demo_model)).warmup()
    yield det
    det.close()


def post(url, data=None, content_type="image/jpeg", params=None, **kw):
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(url + "/detect", data=data, headers=headers, params=params, timeout=TIMEOUT, **kw)


def assert_same(row: dict, ref: dict):
    assert row["error"] is None and ref["error"] is None
    assert (row["width"], row["height"]) == (ref["width"], ref["height"])
    assert len(row["detections"]) == len(ref["detections"])
    got = np.array([[d["x1"], d["y1"], d["x2"], d["y2"], d["score"]] for d in row["detections"]]).reshape(
        -1, 5
    )
    exp = np.array([[d["x1"], d["y1"], d["x2"], d["y2"], d["score"]] for d in ref["detections"]]).reshape(
        -1, 5
    )
    np.testing.assert_allclose(got[:, :4], exp[:, :4], atol=1e-2)
    np.testing.assert_allclose(got[:, 4], exp[:, 4], atol=1e-4)
    assert [d["label"] for d in row["detections"]] == [d["label"] for d in ref["detections"]]
    assert [d["class_id"] for d in row["detections"]] == [d["class_id"] for d in ref["detections"]]


def assert_error(r: requests.Response, status: int, *words: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    for w in words:
        assert w.lower() in body["error"].lower(), body["error"]


@pytest.fixture(scope="module")
def images(photos):
    out = {k: photos[k].read_bytes() for k in ("bus", "zidane", "gray_png", "webp", "fullhd")}
    import cv2

    from yoloray.data.scene import render_frame

    out["frame"] = cv2.imencode(".jpg", render_frame(0, 4)[0])[1].tobytes()  # the demo detector's own domain
    return out


# ----------------------------------------------------------------------------------------- results
def test_detections_equal_detector(service, reference, images):
    names = list(images)
    ref = reference.detect([images[n] for n in names]).to_rows()
    key = reference.key
    for n, exp in zip(names, ref):
        r = post(service["url"], images[n], "application/octet-stream" if n == "gray_png" else "image/jpeg")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["engine"] == key
        assert len(body["results"]) == 1
        assert_same(body["results"][0], exp)
    assert any(len(e["detections"]) for e in ref), "the reference found nothing: a weak comparison"


def test_multipart_several_images(service, reference, images):
    parts = [
        ("image", ("bus.jpg", images["bus"], "image/jpeg")),
        ("image", ("gray.png", images["gray_png"], "image/png")),
        ("image", ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")),
        ("image", ("zidane.jpg", images["zidane"], "application/octet-stream")),
    ]
    r = requests.post(service["url"] + "/detect", files=parts, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert len(rows) == 4
    ref = reference.detect([images["bus"], images["gray_png"], images["zidane"]]).to_rows()
    assert_same(rows[0], ref[0])
    assert_same(rows[1], ref[1])
    assert rows[2]["error"] and rows[2]["detections"] == [] and rows[2]["width"] == 0
    assert_same(rows[3], ref[2])


def test_params_narrow_results(service, images):
    url = service["url"]
    base = post(url, images["bus"]).json()["results"][0]["detections"]
    assert len(base) >= 3
    top = post(url, images["bus"], params={"max_det": 1}).json()
    assert top["params"]["max_det"] == 1
    assert top["results"][0]["detections"] == [max(base, key=lambda d: d["score"])]
    cut = sorted(d["score"] for d in base)[len(base) // 2]
    hi = post(url, images["bus"], params={"conf": cut}).json()["results"][0]["detections"]
    assert hi == [d for d in base if d["score"] >= cut]
    low = post(url, images["bus"], params={"conf": 0.01, "iou": 0.99}).json()
    assert low["results"][0]["detections"] == base  # cannot widen: the engine ran at its own conf / iou
    assert low["params"]["conf"] == 0.25 and low["params"]["iou"] == 0.7
    strict = post(url, images["bus"], params={"iou": 0.05}).json()["results"][0]["detections"]
    assert 1 <= len(strict) <= len(base)
    assert all(d in base for d in strict)


# ----------------------------------------------------------------------------------------- errors
def _gif() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, "GIF")
    return buf.getvalue()


def test_client_errors(service, images):
    url = service["url"]
    bus = images["bus"]
    assert_error(post(url, b""), 400, "empty")
    assert_error(post(url, b"\x00\x01 this is not an image at all" * 10), 400, "not a decodable image")
    assert_error(post(url, bus[: len(bus) // 2]), 400, "truncated")
    big = bus * (MAX_IMAGE_BYTES // len(bus) + 1)
    assert_error(post(url, big), 413, "over the limit")
    chunked = post(url, (big[i : i + 65536] for i in range(0, len(big), 65536)))  # no Content-Length
    assert_error(chunked, 413, "over the limit")
    assert_error(post(url, bus, "text/plain"), 415, "content-type")
    assert_error(post(url, b"%PDF-1.7\n" + b"0" * 200, "application/octet-stream"), 415, "pdf")
    assert_error(post(url, _gif(), "image/gif"), 415, "gif")
    assert_error(post(url, bus, params={"conf": 1.5}), 422, "conf")
    assert_error(post(url, bus, params={"conf": "high"}), 422, "conf")
    assert_error(post(url, bus, params={"iou": -0.1}), 422, "iou")
    assert_error(post(url, bus, params={"max_det": 0}), 422, "max_det")
    assert_error(post(url, bus, params={"max_det": 1001}), 422, "max_det")
    assert_error(post(url, bus, params={"confidence": 0.5}), 422, "unknown")
    form = requests.post(
        url + "/detect", data={"conf": "0.5"}, files={"image": ("a.jpg", bus)}, timeout=TIMEOUT
    )
    assert_error(form, 422, "not a file")
    many = [("image", (f"{i}.jpg", bus, "image/jpeg")) for i in range(5)]
    assert_error(requests.post(url + "/detect", files=many, timeout=TIMEOUT), 413, "limit is 4")
    pdf_part = [("f", ("doc.pdf", b"%PDF-1.7", "application/pdf"))]
    assert_error(requests.post(url + "/detect", files=pdf_part, timeout=TIMEOUT), 415, "application/pdf")
    assert_error(requests.get(url + "/nowhere", timeout=TIMEOUT), 404)
    assert_error(requests.get(url + "/detect", timeout=TIMEOUT), 405)


def test_overload_answers_503_never_500(service, images):
    """max_ongoing_requests=1 and max_queued_requests=1 with a 0.5 s batch wait: a burst is shed by Serve."""
    url = service["url"] + "/flood"
    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(lambda _: post(url, images["bus"]), range(8)))
    counts = Counter(r.status_code for r in answers)
    assert set(counts) <= {200, 503}, counts
    assert counts[503] >= 1 and counts[200] >= 1, counts
    shed = next(r for r in answers if r.status_code == 503)
    assert shed.headers.get("Retry-After") == "1"  # backpressure_config from the deployment options
    for r in answers:  # Serve's own back-pressure answer, made JSON by the ingress guard
        if r.status_code == 503:
            assert_error(r, 503, "max_queued_requests")
    assert post(url, images["bus"]).status_code == 200  # and it recovers


STALLED = 40


def _stall(port: int, path: str, head: bytes) -> socket.socket:
    """An upload that declares 500 kB, sends its first bytes and stops."""
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
        "Content-Length: 500000\r\n\r\n".encode()
        + head
    )
    return s


def _answer(s: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the response on `s` (read until the server closes it)."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_stalled_uploads_do_not_block_service(service, images):
    """40 uploads that stop mid-body against a replica that admits one request at a time (`flood`): normal
    requests are answered while they stall, and each stalled one gets a JSON 408 once body_timeout_s pass."""
    url, port = service["url"], int(service["url"].rsplit(":", 1)[1])
    guard = _info(url + "/flood")["ingress"]["guard"]
    assert guard and guard["body_timeout_s"] == BODY_TIMEOUT_S, "the ingress guard is not installed"
    bus = images["bus"]
    socks = [_stall(port, "/flood/detect" if i % 2 else "/detect", bus[:1000]) for i in range(STALLED)]
    try:
        for u in (url + "/flood", url, url + "/flood"):
            r = post(u, bus)
            assert r.status_code == 200, r.text
        for s in socks:  # nothing answered them yet: they were still stalled while the service answered
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
            s.setblocking(True)
        for s in socks:
            status, body = _answer(s)
            assert status == 408 and body["status"] == 408 and "did not arrive" in body["error"], body
    finally:
        for s in socks:
            s.close()
    assert post(url + "/flood", bus).status_code == 200


# ----------------------------------------------------------------------------------------- gRPC, client
def test_grpc_answers_as_http(service, images):
    """Detect over Serve's gRPC proxy (two applications: the client names one) answers what HTTP does."""
    with Client(service["grpc"], application="yoloray") as g, Client(service["url"]) as h:
        for name in ("bus", "zidane"):
            a, b = g.request(images[name]), h.request(images[name])
            assert a.status == b.status == 200 and a.replica and b.replica
            assert a.body["engine"] == b.body["engine"] and a.body["params"] == b.body["params"]
            assert_same(a.body["results"][0], b.body["results"][0])
        two = g.detect([images["bus"], b"\xff\xd8 junk"])["results"]
        assert two[0]["error"] is None and two[0]["detections"]
        assert "not a decodable image" in two[1]["error"] and two[1]["detections"] == []
        with pytest.raises(DetectError) as e:
            g.detect(b"")
        assert e.value.status == 400 and "empty image" in e.value.answer.body["error"]
        with pytest.raises(DetectError) as e:
            g.detect(images["bus"], conf=1.5)
        assert e.value.status == 400 and "conf" in e.value.answer.body["error"]
        top = g.detect(images["bus"], max_det=1)
        assert top["params"]["max_det"] == 1 and len(top["results"][0]["detections"]) == 1


def test_client_retries_overload_with_backoff(service, images):
    """A burst on `flood` (one request at a time, one queued): without retries some get Serve's 503 (JSON);
    with retries every request is answered, some after more than one attempt."""
    url = service["url"] + "/flood"
    with Client(url, max_in_flight=8, retries=0) as c:
        once = c.detect_many([images["bus"]] * 8)
    assert {a.status for a in once} == {200, 503}, [a.status for a in once]
    assert all(a.body["status"] == 503 for a in once if a.status == 503)
    with Client(url, max_in_flight=8, retries=10, backoff_cap_s=1.0) as c:
        answers = c.detect_many([images["bus"]] * 8)
    assert [a.status for a in answers] == [200] * 8
    assert max(a.attempts for a in answers) > 1


# ----------------------------------------------------------------------------------------- batching
def _info(url) -> dict:
    r = requests.get(url + "/info", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def test_concurrent_requests_are_batched(service, images):
    url = service["url"]
    before = Counter({int(k): v for k, v in _info(url)["stats"]["batch_sizes"].items()})
    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(lambda _: post(url, images["zidane"]).status_code, range(8)))
    assert codes == [200] * 8
    after = Counter({int(k): v for k, v in _info(url)["stats"]["batch_sizes"].items()})
    new = after - before
    assert sum(k * v for k, v in new.items()) == 8
    assert max(new) > 1, f"8 concurrent requests never shared an engine call: {dict(new)}"
    assert max(new) <= 4  # max_batch_size


def _prometheus(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def _series(text: str, prefix: str, app: str) -> dict[str, float]:
    """{'name[le=..,route=..,status=..]': value} of one application's series (other labels dropped)."""
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix) and f'application="{app}"' in line:
            labels, value = line.rsplit(" ", 1)
            name, _, rest = labels.partition("{")
            keep = [p for p in rest.rstrip("}").split(",") if p.startswith(("le=", "route=", "status="))]
            out[name + (f"[{','.join(keep)}]" if keep else "")] = float(value)
    return out


def test_metrics_exported(service, images):
    """Batch sizes, requests, errors and latency reach Ray's Prometheus endpoint."""
    port = ray.nodes()[0].get("MetricsExportPort")
    if not port:
        pytest.skip("this Ray exports no metrics port")
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda _: post(service["url"], images["bus"]).status_code, range(8)))
    post(service["url"], b"")  # one 400
    deadline = time.monotonic() + 45
    batched = errors = False
    while time.monotonic() < deadline:
        s = _series(_prometheus(port), "ray_yoloray_serve_", "yoloray")
        batched = s.get("ray_yoloray_serve_batch_size_count", 0) > s.get(
            'ray_yoloray_serve_batch_size_bucket[le="1.0"]', 0
        )
        errors = s.get('ray_yoloray_serve_errors_total[route="/detect",status="400"]', 0) >= 1
        if batched and errors:
            break
        time.sleep(2)
    assert batched and errors, s
    assert s['ray_yoloray_serve_requests_total[route="/detect"]'] >= 9
    assert s['ray_yoloray_serve_request_latency_seconds_count[route="/detect"]'] >= 9
    assert s["ray_yoloray_serve_images_total"] >= 8
    assert "ray_yoloray_serve_queue_depth" in s


# ----------------------------------------------------------------------------------------- config
def test_config_applied(service):
    url = service["url"]
    app_cfg = service["config"]["applications"][0]
    status = serve.status().applications["yoloray"]
    assert status.status == "RUNNING"
    assert "Detector" in status.deployments
    info = _info(url)
    dep = info["deployment"]
    want = app_cfg["deployments"][0]
    assert dep["max_ongoing_requests"] == want["max_ongoing_requests"]
    assert dep["max_queued_requests"] == want["max_queued_requests"]
    for k, v in want["autoscaling_config"].items():
        assert dep["autoscaling_config"][k] == v
    assert info["batching"] == {"max_batch_size": 4, "batch_wait_timeout_s": 0.05}
    assert info["limits"]["max_image_bytes"] == MAX_IMAGE_BYTES
    flood = requests.get(url + "/flood/info", timeout=TIMEOUT).json()
    assert flood["batching"] == {"max_batch_size": 4, "batch_wait_timeout_s": 0.5}
    assert flood["deployment"]["max_ongoing_requests"] == 1


def test_healthz_and_info(service):
    import yoloray

    url = service["url"]
    r = requests.get(url + "/healthz", timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    info = _info(url)
    cfg = resolve_here(Profile(**ENGINE, model=service["model"]))  # what the replica resolved (the same CPU)
    assert info["version"] == yoloray.__version__
    assert info["key"] == cfg.output_key() == r.json()["engine"]
    assert info["profile"]["engine"]["imgsz"] == "256x256" and info["model"] == service["model"]
    assert info["device"] == "cpu"
    assert info["classes"]


def test_replica_that_cannot_start_is_one_line(service, tmp_path, capsys):
    """`yoloray serve` onto a running Ray (weights are checked before deploying only on a Ray it starts), with
    weights its replica cannot find: the replica's traceback stays in Ray's logs; the user gets one line with
    the exception the replica ended in."""
    from yoloray.serve.app import main

    gone = tmp_path / "gone.pt"
    config = {**service["config"], "applications": [{
        "name": "broken", "route_prefix": "/broken", "import_path": "yoloray.serve.app:build_app",
        "args": {"engine": {**ENGINE, "model": str(gone)}},
        "deployments": [{"name": "Detector", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}],
    }]}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        assert main([str(path), "--no-block"]) == 1
    finally:
        serve.delete("broken")
    out, err = capsys.readouterr()
    assert err.startswith("yoloray serve: error: RuntimeError: Deploying application broken failed"), err
    assert f"(Detector: yoloray.engines.base.EngineError: model weights {gone} do not exist" in err
    assert err.count("\n") == 1 and "Traceback" not in out + err
    assert serve.status().applications["yoloray"].status == "RUNNING"  # the module's service is untouched


def test_build_app_rejects_bad_config():
    from yoloray.serve.app import build_app

    with pytest.raises(ConfigError, match=r"engine\.imgsz.*multiple of the model stride"):
        build_app({"engine": {"imgsz": 100}})
    with pytest.raises(ConfigError, match="max_batch_size"):
        build_app({"engine": {"batch_size": 4}, "max_batch_size": 8})
    with pytest.raises(ConfigError, match="batch_wait_timeout_s"):
        build_app({"batch_wait_timeout_s": -1})
    with pytest.raises(ConfigError, match="bogus"):
        build_app({"bogus": 1})
    with pytest.raises(ConfigError, match=r"engine\.precision"):
        build_app({"engine": {"precision": "fp8"}})
