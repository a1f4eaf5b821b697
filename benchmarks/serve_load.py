"""HTTP load on the detection service, against the Ray Serve docs' object-detection pattern, in one run.

    python benchmarks/serve_load.py --random-weights yolov8s.yaml --duration 10 --docs-concurrency 1,4,16 \
        --set engine.precision=fp16 --set engine.imgsz=384x640 --set engine.batch_size=32 --set max_batch_size=32 \
        --set engine.decode=gpu --set engine.cuda_graph=true --option ray_actor_options.num_gpus=1 \
        --option ray_actor_options.num_cpus=6 --option max_ongoing_requests=128 \
        --option autoscaling_config.min_replicas=1 --option autoscaling_config.max_replicas=1 \
        --cooldown 30 --out results/serve_load.json

Both systems get the same 1920x1080 JPEGs (generated footage, yoloray.data.synthetic), the same weights (the
config's model, by default the bundled demo detector; --random-weights builds seeded random ones from an
ultralytics model YAML), input size, precision and per-replica resources:
  yoloray    the serve config (--config, default serve_configs/detector.yaml): warmed Detector, batching at
             the image level, autoscaling from the file's deployments entry
  docs       the pattern of the Ray Serve object-detection tutorial: a FastAPI ingress deployment that hands
             each request to an `ObjectDetection` deployment holding an ultralytics `YOLO(weights)`, one
             `predict` per request, no batching, autoscaling min 1 / max (same max_replicas)
A bounded asyncio client (aiohttp, 127.0.0.1 only; --client-procs processes, each keeping its share of the C
requests in flight) runs each concurrency C for --duration seconds (at most --max-requests per level); it
reports images/s (images, not requests: --images-per-request K sends K JPEGs per multipart request to
yoloray), p50/p99 latency, and the CPU use of the client, Serve's HTTP proxy and the app's replica processes
(percent of one core; local Ray only), to show which process saturates. Then, per system, the best
throughput among levels with p99 <= --p99-bound-ms and no error, and yoloray's over the docs pattern's best
(at any latency). A poller records each system's replica counts from `serve.status()` through the run and a
cooldown after it, printed as a timeline (scale-up under load, scale-down after). Writes JSON to --out.

On a CPU-only machine, a tiny run that proves the wiring:
    python benchmarks/serve_load.py --duration 10 --concurrency 2,8 --set engine.imgsz=256 --set engine.device=cpu \
        --option autoscaling_config.target_ongoing_requests=2 --option autoscaling_config.upscale_delay_s=2 \
        --option autoscaling_config.downscale_delay_s=5 --cooldown 40
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

HOST = "127.0.0.1"


# ------------------------------------------------------------------------------------------- the docs pattern
def docs_app(
    weights: str, imgsz: list[int], half: bool, conf: float, iou: float, max_det: int, options: dict
):
    """The Ray Serve tutorial's structure (APIIngress -> ObjectDetection), with ultralytics YOLO on our weights
    and image bytes in the POST body instead of an image URL."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve
    from ray.serve.handle import DeploymentHandle

    app = FastAPI()

    # one ingress replica as in the tutorial; no CPU reserved so it never blocks the ObjectDetection scale-up,
    # and no request cap of its own so the ingress is not what limits the pattern
    @serve.deployment(num_replicas=1, max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class APIIngress:
        def __init__(self, object_detection_handle: DeploymentHandle):
            self.handle = object_detection_handle

        @app.post("/detect")
        async def detect(self, request: Request):
            return JSONResponse(await self.handle.detect.remote(await request.body()))

    @serve.deployment(**options)
    class ObjectDetection:
        def __init__(self):
            import cv2
            import torch
            from ultralytics import YOLO

            self.cv2 = cv2
            self.model = YOLO(weights)
            device = 0 if torch.cuda.is_available() else "cpu"
            self.kw = dict(
                imgsz=imgsz, half=half, conf=conf, iou=iou, max_det=max_det, device=device, verbose=False
            )
            self.model.predict(np.zeros((1080, 1920, 3), np.uint8), **self.kw)  # load onto the device, warm

        def detect(self, data: bytes) -> dict:
            im = self.cv2.imdecode(np.frombuffer(data, np.uint8), self.cv2.IMREAD_COLOR)
            r = self.model.predict(im, **self.kw)[0]
            b = r.boxes
            dets = [
                {
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    "score": s,
                    "class_id": int(c),
                    "label": r.names[int(c)],
                }
                for (x1, y1, x2, y2), s, c in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist())
            ]
            return {
                "results": [{"width": im.shape[1], "height": im.shape[0], "detections": dets, "error": None}]
            }

    return APIIngress.bind(ObjectDetection.bind())


# ------------------------------------------------------------------------------------------- load
def make_bodies(frames: list[bytes], per_request: int) -> list[tuple[bytes, str, int]]:
    """(body, content type, images) per request: the raw JPEG, or `per_request` JPEGs as multipart/form-data."""
    if per_request <= 1:
        return [(f, "image/jpeg", 1) for f in frames]
    boundary = "yoloray-bench-boundary-7f3a"
    out = []
    for i in range(len(frames)):
        parts = []
        for j in range(per_request):
            f = frames[(i + j) % len(frames)]
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{j}.jpg"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n".encode()
                + f
                + b"\r\n"
            )
        out.append(
            (
                b"".join(parts) + f"--{boundary}--\r\n".encode(),
                f"multipart/form-data; boundary={boundary}",
                per_request,
            )
        )
    return out


async def load(
    url: str, bodies: list[tuple[bytes, str, int]], concurrency: int, duration: float, max_requests: int
) -> dict:
    """One process's share: `concurrency` requests in flight for `duration` s. Raw latencies, for merging."""
    import aiohttp

    lat: list[float] = []
    codes: Counter = Counter()
    sent = images = 0
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(w: int):
            nonlocal sent, images
            i = w
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                data, ctype, k = bodies[i % len(bodies)]
                i += concurrency
                t = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers={"Content-Type": ctype}) as r:
                        await r.read()
                        codes[r.status] += 1
                        if r.status == 200:
                            lat.append(time.perf_counter() - t)
                            images += k
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    codes[type(e).__name__] += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": time.process_time() - cpu0,
        "lat": lat,
        "codes": codes,
        "images": images,
    }


_BODIES: dict = {}


def _client(task) -> dict:
    """A client process's level: builds (once per process) and sends the bodies for `per_request`."""
    url, frames, per_request, concurrency, duration, max_requests = task
    if per_request not in _BODIES:
        _BODIES[per_request] = make_bodies(frames, per_request)
    return asyncio.run(load(url, _BODIES[per_request], concurrency, duration, max_requests))


def run_load(pool, procs, url, frames, per_request, concurrency, duration, max_requests) -> dict:
    """C requests in flight, split over `procs` processes of the pool (this one when C or procs is 1);
    latencies merged."""
    shares = [n for n in (concurrency // procs + (i < concurrency % procs) for i in range(procs)) if n]
    tasks = [(url, frames, per_request, n, duration, max(1, max_requests * n // concurrency)) for n in shares]
    parts = pool.map(_client, tasks) if pool is not None and len(tasks) > 1 else [_client(tasks[0])]
    lat = [x for p in parts for x in p["lat"]]
    codes = sum((p["codes"] for p in parts), Counter())
    elapsed = max(p["seconds"] for p in parts)
    images = sum(p["images"] for p in parts)
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "client_procs": len(parts),
        "seconds": round(elapsed, 2),
        "requests": int(sum(codes.values())),
        "ok": len(lat),
        "images": images,
        "images_per_request": per_request,
        "statuses": {str(k): v for k, v in codes.items()},
        "images_per_s": round(images / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_ms": round(float(ms.mean()), 1),
        "cpu_client_pct": round(100 * sum(p["cpu_s"] for p in parts) / elapsed),
    }


# ------------------------------------------------------------------------------------------- process CPU
def serve_cpu(app: str) -> dict[str, dict[int, float]]:
    """CPU seconds so far of Serve's HTTP proxy and of `app`'s replica processes on this machine, by pid."""
    import psutil

    out: dict[str, dict[int, float]] = {"proxy": {}, "replicas": {}}
    for p in psutil.process_iter(["cmdline", "cpu_times"]):
        cmd = " ".join(p.info["cmdline"] or [])
        t = p.info["cpu_times"]
        if t is None:
            continue
        if cmd.startswith("ray::ProxyActor"):
            out["proxy"][p.pid] = t.user + t.system
        elif cmd.startswith(f"ray::ServeReplica:{app}:"):
            out["replicas"][p.pid] = t.user + t.system
    return out


def cpu_pct(before: dict, after: dict, seconds: float) -> dict:
    """Percent of one core per role over a level (processes alive at both ends); None where none was found."""
    out = {}
    for role in ("proxy", "replicas"):
        pids = before[role].keys() & after[role].keys()
        out[f"cpu_{role}_pct"] = (
            round(100 * sum(after[role][p] - before[role][p] for p in pids) / seconds) if pids else None
        )
    return out


# ------------------------------------------------------------------------------------------- replica timeline
class ReplicaWatch(threading.Thread):
    """Polls serve.status() once a second; records (t, app, running, starting) whenever a count changes."""

    def __init__(self, t0: float):
        super().__init__(daemon=True)
        self.t0 = t0
        self.phase = "start"
        self.events: list[dict] = []
        self._last: dict = {}
        self._stop = threading.Event()

    def run(self):
        from ray import serve

        while not self._stop.wait(1.0):
            try:
                apps = serve.status().applications
            except Exception:
                continue
            for app, st in apps.items():
                for dep, d in st.deployments.items():
                    if dep == "APIIngress":
                        continue
                    states = {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()}
                    now = (states.get("RUNNING", 0), states.get("STARTING", 0))
                    if self._last.get((app, dep)) != now:
                        self._last[(app, dep)] = now
                        ev = {
                            "t": round(time.monotonic() - self.t0, 1),
                            "app": app,
                            "deployment": dep,
                            "running": now[0],
                            "starting": now[1],
                            "phase": self.phase,
                        }
                        self.events.append(ev)
                        print(
                            f"  [t+{ev['t']:6.1f}s] {app}/{dep}: {now[0]} running, {now[1]} starting ({self.phase})",
                            flush=True,
                        )

    def running(self, app: str) -> int:
        return next((v[0] for (a, _), v in self._last.items() if a == app), 0)

    def replicas(self, app: str) -> int:
        """Running plus starting."""
        return next((sum(v) for (a, _), v in self._last.items() if a == app), 0)

    def stop(self):
        self._stop.set()


# ------------------------------------------------------------------------------------------- helpers
def set_dotted(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[keys[-1]] = value


def parse_sets(items: list[str]) -> list[tuple[str, object]]:
    out = []
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out.append((k.strip(), yaml.safe_load(v)))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_frames(n: int, quality: int) -> list[bytes]:
    import cv2

    from yoloray.data.scene import render_frame

    return [
        cv2.imencode(".jpg", render_frame(7, i)[0], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
        for i in range(n)
    ]


def direct_url(app: str, route_prefix: str, timeout: float = 120) -> str:
    """Direct ingress: the POST /detect URL on the app's ingress replica's own HTTP server (a listening port
    of its process that answers GET .../detect with 405), the hop Ray's HAProxy ingress would forward to."""
    import psutil
    import requests

    t = time.monotonic()
    while time.monotonic() - t < timeout:
        for p in psutil.process_iter(["cmdline"]):
            if not " ".join(p.info["cmdline"] or []).startswith(f"ray::ServeReplica:{app}:"):
                continue
            try:
                ports = [c.laddr.port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
            except psutil.Error:
                continue
            for port in ports:
                url = f"http://{HOST}:{port}{route_prefix}/detect"
                try:
                    if requests.get(url, timeout=2).status_code == 405:
                        return url
                except requests.RequestException:
                    pass
        time.sleep(1)
    raise TimeoutError(f"no direct-ingress HTTP port of {app} answers after {timeout:.0f} s")


def wait_healthy(url: str, timeout: float = 600) -> None:
    import requests

    t = time.monotonic()
    while time.monotonic() - t < timeout:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s")


def run_levels(name, url, frames, per_request, levels, pool, args, watch: ReplicaWatch, results) -> None:
    warm = min(max(levels), 16)
    procs = args.client_procs
    run_load(pool, procs, url, frames, per_request, warm, min(5.0, args.duration), 20 * warm)
    for c in levels:
        watch.phase = f"{name} c={c}"
        before = serve_cpu(name)
        r = run_load(pool, procs, url, frames, per_request, c, args.duration, args.max_requests)
        r.update(cpu_pct(before, serve_cpu(name), r["seconds"]))
        r["system"] = name
        r["replicas_at_end"] = watch.running(name)
        results.append(r)
        print(
            f"  -> {name} c={c}: {r['images_per_s']} images/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
            f"statuses {r['statuses']}, replicas {r['replicas_at_end']}, CPU % client {r['cpu_client_pct']} "
            f"proxy {r['cpu_proxy_pct']} replicas {r['cpu_replicas_pct']}",
            flush=True,
        )


def cooldown(name: str, watch: ReplicaWatch, floor: int, seconds: float) -> float | None:
    """Wait (at most `seconds`) for the app to scale back to `floor` replicas; returns how long it took."""
    watch.phase = f"{name} cooldown"
    t = time.monotonic()
    while time.monotonic() - t < seconds:
        if watch.replicas(name) <= floor:
            return round(time.monotonic() - t, 1)
        time.sleep(1)
    return None


def table(results: list[dict]) -> str:
    head = (
        f"{'system':<10} {'conc':>5} {'img/req':>7} {'images/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'ok':>7} "
        f"{'other statuses':<22} {'replicas':>8} {'CPU% client':>11} {'proxy':>6} {'replicas':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        other = {k: v for k, v in r["statuses"].items() if k != "200"}
        lines.append(
            f"{r['system']:<10} {r['concurrency']:>5} {r['images_per_request']:>7} {r['images_per_s']:>10.1f} "
            f"{r['p50_ms']:>9.1f} {r['p99_ms']:>9.1f} {r['ok']:>7} {json.dumps(other) if other else '-':<22} "
            f"{r['replicas_at_end']:>8} {r['cpu_client_pct']:>11} {_or_dash(r['cpu_proxy_pct']):>6} "
            f"{_or_dash(r['cpu_replicas_pct']):>8}"
        )
    return "\n".join(lines)


def _or_dash(v) -> str:
    return "-" if v is None else str(v)


def _best(rows: list[dict]) -> dict | None:
    r = max(rows, key=lambda r: r["images_per_s"], default=None)
    return r and {k: r[k] for k in ("concurrency", "images_per_s", "p99_ms")}


def target(results: list[dict], bound_ms: float) -> dict:
    """Per system the best level overall and the best with p99 <= bound_ms and only 200s; yoloray's best
    within the bound over the docs pattern's best at any latency."""
    out: dict = {"p99_bound_ms": bound_ms}
    for name in dict.fromkeys(r["system"] for r in results):
        rows = [r for r in results if r["system"] == name]
        within = [r for r in rows if r["p99_ms"] <= bound_ms and set(r["statuses"]) == {"200"}]
        out[name] = {"best": _best(rows), "best_within_bound": _best(within)}
    y, d = out.get("yoloray"), out.get("docs")
    if y and d and y["best_within_bound"] and d["best"]["images_per_s"] > 0:
        out["ratio_yoloray_within_bound_over_docs_best"] = round(
            y["best_within_bound"]["images_per_s"] / d["best"]["images_per_s"], 1
        )
    return out


def print_target(t: dict) -> None:
    bound = t["p99_bound_ms"]
    print(f"\nbest throughput with p99 <= {bound:g} ms (levels with errors excluded):")
    for name, v in t.items():
        if not isinstance(v, dict):
            continue
        w, b = v["best_within_bound"], v["best"]
        within = (
            f"{w['images_per_s']} images/s at c={w['concurrency']} (p99 {w['p99_ms']} ms)"
            if w
            else "no level within the bound"
        )
        print(
            f"  {name:<8} {within}; best at any latency {b['images_per_s']} images/s at c={b['concurrency']} "
            f"(p99 {b['p99_ms']} ms)"
        )
    if "ratio_yoloray_within_bound_over_docs_best" in t:
        print(
            f"  yoloray within the bound / docs pattern's best at any latency: "
            f"{t['ratio_yoloray_within_bound_over_docs_best']}x"
        )


def make_random_weights(model_yaml: str) -> str:
    """Seeded random weights of an ultralytics model YAML (the same as a model YAML loads to), in the temp dir."""
    from yoloray.engines.torch_backend import save_random_checkpoint

    path = Path(tempfile.gettempdir()) / "yoloray-bench" / f"{Path(model_yaml).stem}-random-seed0.pt"
    if not path.exists():
        save_random_checkpoint(model_yaml, path)
    return str(path)


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config", default=str(ROOT / "serve_configs" / "detector.yaml"), help="Serve config (yoloray app)"
    )
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per concurrency level")
    p.add_argument(
        "--concurrency", default="1,2,4,8,16,32,64", help="comma-separated requests in flight per level"
    )
    p.add_argument("--docs-concurrency", help="levels for the docs pattern (default: --concurrency)")
    p.add_argument(
        "--p99-bound-ms", type=float, default=100.0, help="latency bound of the summary (issue 7: 100)"
    )
    p.add_argument(
        "--client-procs",
        type=int,
        default=4 if (os.cpu_count() or 1) >= 8 else 1,
        help="client processes sharing each level's requests in flight (default 4 on >= 8 cores, else 1)",
    )
    p.add_argument(
        "--random-weights",
        metavar="MODEL_YAML",
        help="seeded random weights of this ultralytics model (e.g. yolov8s.yaml) for both systems",
    )
    p.add_argument("--max-requests", type=int, default=200_000, help="cap on requests per level")
    p.add_argument("--frames", type=int, default=16, help="distinct 1920x1080 JPEGs to cycle through")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the generated frames")
    p.add_argument(
        "--images-per-request",
        type=int,
        default=1,
        help="yoloray only: send N images per request as multipart/form-data (the docs pattern takes one)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the app's args, dotted (engine.imgsz=384x640, max_batch_size=32)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the Detector deployment options, dotted (ray_actor_options.num_gpus=1)",
    )
    p.add_argument(
        "--cooldown", type=float, default=120.0, help="seconds to watch for scale-down after the load"
    )
    p.add_argument("--systems", default="yoloray,docs", help="which systems to run: yoloray,docs")
    p.add_argument(
        "--direct-ingress",
        action="store_true",
        help="Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1) for both systems, the "
        "load sent to the ingress replica's own HTTP port instead of Serve's Python proxy (one replica: the "
        "client does not spread over several)",
    )
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    p.add_argument("--out", default="serve_load.json", help="JSON results path")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    docs_levels = [int(c) for c in (args.docs_concurrency or "").split(",") if c] or args.concurrency
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.direct_ingress:  # read by Serve's processes when they start, so before Ray does
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"

    import ray
    from ray import serve

    from yoloray.config import ServeConfig
    from yoloray.serve.app import build_application, load_serve_config

    schema = load_serve_config(args.config)
    app_schema = schema.applications[0]
    app_args = dict(app_schema.args or {})
    app_args["engine"] = dict(app_args.get("engine") or {})
    if args.random_weights:
        app_args["engine"]["model"] = make_random_weights(args.random_weights)
    for k, v in parse_sets(args.set):
        set_dotted(app_args, k, v)
    options = (
        app_schema.deployments[0].model_dump(exclude_unset=True, exclude={"name"})
        if app_schema.deployments
        else {}
    )
    for k, v in parse_sets(args.option):
        set_dotted(options, k, v)
    cfg = ServeConfig.parse(app_args, source="benchmark app args")
    eng = cfg.engine
    auto = options.get("autoscaling_config") or {}
    floor = int(auto.get("min_replicas", 1))
    print(
        f"engine: {eng.model} {eng.backend} {eng.precision} imgsz {eng.imgsz} batch {eng.batch_size} "
        f"device {eng.device}; serve batch {cfg.max_batch_size} / {cfg.batch_wait_timeout_s}s; options {options}",
        flush=True,
    )

    frames = make_frames(args.frames, args.quality)
    print(
        f"{len(frames)} frames of 1920x1080, {np.mean([len(f) for f in frames]) / 1024:.0f} KiB each on average",
        flush=True,
    )

    pool = multiprocessing.get_context("spawn").Pool(args.client_procs) if args.client_procs > 1 else None
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": HOST, "port": port})
    base = f"http://{HOST}:{port}"
    results: list[dict] = []
    scale: dict = {}
    t0 = time.monotonic()
    watch = ReplicaWatch(t0)
    watch.start()
    try:
        if "yoloray" in systems:
            watch.phase = "yoloray deploy"
            serve.run(
                build_application(app_args, **options),
                name="yoloray",
                route_prefix="/yoloray",
                blocking=False,
            )
            wait_healthy(base + "/yoloray/healthz")
            run_levels(
                "yoloray",
                direct_url("yoloray", "/yoloray") if args.direct_ingress else base + "/yoloray/detect",
                frames,
                args.images_per_request,
                args.concurrency,
                pool,
                args,
                watch,
                results,
            )
            import requests

            info = requests.get(base + "/yoloray/info", timeout=10).json()
            print(f"  yoloray replica stats (the replica that answered): {info.get('stats')}", flush=True)
            back = cooldown("yoloray", watch, floor, args.cooldown)
            scale["yoloray"] = {
                "peak": max((e["running"] for e in watch.events if e["app"] == "yoloray"), default=0),
                "back_to_min_after_s": back,
                "one_replica_stats": info.get("stats"),
                "device": info.get("device"),
                "key": info.get("key"),
            }
            serve.delete("yoloray")
        if "docs" in systems:
            watch.phase = "docs deploy"
            docs_options = {
                k: v for k, v in options.items() if k in ("ray_actor_options", "autoscaling_config")
            }
            docs_options["autoscaling_config"] = {
                **auto,
                "min_replicas": floor,
                "max_replicas": auto.get("max_replicas", 2),
            }
            app = docs_app(
                eng.model,
                list(eng.imgsz),
                eng.precision == "fp16",
                eng.conf,
                eng.iou,
                eng.max_det,
                docs_options,
            )
            serve.run(app, name="docs", route_prefix="/docs-pattern", blocking=False)
            url = (
                direct_url("docs", "/docs-pattern") if args.direct_ingress else base + "/docs-pattern/detect"
            )
            run_levels("docs", url, frames, 1, docs_levels, pool, args, watch, results)
            back = cooldown("docs", watch, floor, args.cooldown)
            scale["docs"] = {
                "peak": max((e["running"] for e in watch.events if e["app"] == "docs"), default=0),
                "back_to_min_after_s": back,
            }
            serve.delete("docs")
    finally:
        watch.stop()
        if pool is not None:
            pool.terminate()
        serve.shutdown()
        if started:
            ray.shutdown()

    print("\nreplica timeline (serve.status, changes only):")
    for e in watch.events:
        print(
            f"  t+{e['t']:6.1f}s  {e['app']:<8} {e['running']} running, {e['starting']} starting   during {e['phase']}"
        )
    print("\n" + table(results))
    for name, s in scale.items():
        print(
            f"{name}: peak {s['peak']} replicas; back to {floor} after cooldown: "
            + (
                f"{s['back_to_min_after_s']} s"
                if s["back_to_min_after_s"] is not None
                else "not within --cooldown"
            )
        )
    summary = target(results, args.p99_bound_ms)
    print_target(summary)
    out = {
        "target": summary,
        "args": {k: v for k, v in vars(args).items()},
        "engine": eng.model_dump(mode="json"),
        "serve": {k: v for k, v in cfg.model_dump(mode="json").items() if k != "engine"},
        "deployment_options": options,
        "results": results,
        "scaling": scale,
        "timeline": watch.events,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
