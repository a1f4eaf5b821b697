"""The Grafana dashboard (deploy/grafana/yoloray.json) against a real Prometheus scraping a real local Ray.

A local Ray exports metrics on METRICS_PORT (report interval 1 s); Debian's `prometheus` scrapes it every
second on PROMETHEUS_PORT; a small batch job (with unreadable inputs, so errors have kinds) and a small Serve
app (with one bad request) run; then every panel's query is asked of Prometheus' HTTP API as Grafana asks it
(a range query over the test's time span) and must return series. The GPU memory panels have no series on
the CPU (they are CUDA only) and are checked for that instead. Skipped when the `prometheus` binary is missing
(`apt-get install prometheus`; `.ci/run` installs it on a fresh Debian machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the `prometheus` binary is not installed (Debian: apt-get install prometheus); "
    "the dashboard's queries are checked only against a real Prometheus",
)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "yoloray.json"
METRICS_PORT, PROMETHEUS_PORT, SERVE_PORT = 18601, 18602, 18603  # the observe port range (TEAM.md)
RUN = "dashboard-test"
RATE_WINDOW = "60s"  # stands for $__rate_interval (Grafana: 4 x the scrape interval at least; wide enough
# that a loaded CI machine's missed scrapes still leave two samples around the job's increments)
CUDA_ONLY = ("GPU memory per actor (CUDA only)", "GPU memory per replica (CUDA only)")
DEADLINE_S = 90


def panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def as_grafana_sends(expr: str) -> str:
    return expr.replace("$__rate_interval", RATE_WINDOW).replace("$run", ".*")


def api(path: str, **params) -> dict:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def wait_for(check, what: str, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"timed out waiting for {what}"
            return result
        time.sleep(1)


@pytest.fixture(scope="module")
def ray_metrics():
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process; this test needs its own (metrics port)")
    # Serve's controller gives a new HTTP proxy 5 s to answer its readiness check; a busy 2-core CI machine
    # can take longer, and the proxy is then killed and restarted in a loop
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "30")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=METRICS_PORT,
             _system_config={"metrics_report_interval_ms": 1000})
    try:
        yield ray
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, ray_metrics):
    d = tmp_path_factory.mktemp("prometheus")
    (d / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: ray\n    static_configs: [{{targets: ['127.0.0.1:{METRICS_PORT}']}}]\n"
    )
    log = (d / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
         f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        def ready():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready", timeout=2).status == 200
            except OSError:
                assert proc.poll() is None, (d / "prometheus.log").read_text()[-2000:]
                return False

        wait_for(ready, "prometheus to start", 30)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def traffic(prometheus, demo_model, tmp_path_factory):
    """A small batch job and a small Serve run; returns the time span they covered."""
    import requests
    from ray import serve

    from yoloray.batch import ActorOptions, run_job
    from yoloray.config import Profile
    from yoloray.data.synthetic import generate
    from yoloray.observe.reports import ActorObserve
    from yoloray.serve.app import build_application, replica_memory

    start = time.time() - 5
    d = tmp_path_factory.mktemp("dash")
    data = generate(d / "footage", frames=8, seed=0, width=320, height=192, formats=("folder",), workers=1)
    images = data.root / "images"
    (images / "bad").mkdir()
    (images / "bad" / "empty.jpg").write_bytes(b"")
    (images / "bad" / "text.jpg").write_bytes(b"this is not an image")
    config = Profile(model=demo_model, imgsz=(192, 320), batch_size=4, device="cpu")
    summary = run_job([str(images)], str(d / "out"), config,
                      ActorOptions(batches_per_call=1, observe=ActorObserve(run=RUN)))
    assert summary.images == 10 and sum(summary.errors.values()) == 2

    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    app = build_application({"engine": {"model": demo_model, "imgsz": 256, "batch_size": 4, "device": "cpu"}},
                            num_replicas=1, autoscaling_config=None, ray_actor_options={"num_cpus": 0.5})
    serve.run(app, name="dash", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{SERVE_PORT}/detect"
    jpeg = next((images / "train").glob("*.jpg")).read_bytes()
    wait_for(lambda: requests.get(url.replace("/detect", "/healthz"), timeout=5).ok, "the service")
    for _ in range(6):
        assert requests.post(url, data=jpeg, headers={"Content-Type": "image/jpeg"}, timeout=60).ok
    assert requests.post(url, data=b"", headers={"Content-Type": "image/jpeg"}, timeout=60).status_code == 400
    # the replica's GPU memory budget, as /info and `yoloray serve` report it (not measured on the CPU)
    assert replica_memory(SERVE_PORT, "") == "GPU memory per Detector: not measured (runs on cpu)"
    return start


def series(expr: str, start: float) -> list[dict]:
    return api("/api/v1/query_range", query=as_grafana_sends(expr), start=start, end=time.time(), step="1s")["result"]


def test_exported_names_and_labels(traffic):
    """What the README documents is what Prometheus holds: ray_ prefix, run/engine/kind/stage labels, zeros."""
    from yoloray.observe.errors import ERROR_KINDS
    from yoloray.observe.trace import STAGES

    def errors_by_kind():
        got = api("/api/v1/query", query=f'ray_yoloray_image_errors_total{{run="{RUN}"}}')["result"]
        return {r["metric"]["kind"]: float(r["value"][1]) for r in got} if len(got) >= len(ERROR_KINDS) else None

    kinds = wait_for(errors_by_kind, "the error counter of every kind")
    assert set(kinds) == set(ERROR_KINDS)
    assert kinds["empty file"] == 1 and kinds["not an image"] == 1
    assert kinds["truncated image"] == 0  # exported at zero before any such error
    stages = api("/api/v1/query", query=f'ray_yoloray_stage_seconds_total{{run="{RUN}"}}')["result"]
    assert {r["metric"]["stage"] for r in stages} == set(STAGES)
    images = api("/api/v1/query", query=f'ray_yoloray_images_total{{run="{RUN}"}}')["result"]
    assert len(images) == 1 and float(images[0]["value"][1]) == 10
    assert re.fullmatch(r"[0-9a-f]{16}", images[0]["metric"]["engine"])
    names = set(api("/api/v1/label/__name__/values"))
    assert not {n for n in names if n.startswith("yoloray_")}, "every custom metric carries Ray's ray_ prefix"


def test_every_panel_query_returns_series(traffic):
    empty = {}
    for panel in panels():
        for target in panel["targets"]:
            if panel["title"] in CUDA_ONLY:
                empty[panel["title"]] = series(target["expr"], traffic)
                continue
            wait_for(lambda expr=target["expr"]: series(expr, traffic), f"panel {panel['title']!r}: {target['expr']}")
    assert set(empty) == set(CUDA_ONLY) and not any(empty.values()), "GPU memory has no series on the CPU"
    throughput = series(panels()[0]["targets"][0]["expr"], traffic)
    raw = series(f'ray_yoloray_images_total{{run="{RUN}"}}', traffic)
    seen = [float(v) for s in raw for _, v in s["values"]]
    # A 10-image job can end between two scrapes of its actor's new series; then Prometheus never saw the counter
    # grow and rate() is rightly 0 (seen once on a loaded CI machine). When it did see it grow, the panel shows it.
    if min(seen) < max(seen):
        assert max(float(v) for s in throughput for _, v in s["values"]) > 0, f"images/s never above zero: {raw}"
    else:
        assert max(seen) == 10, raw
