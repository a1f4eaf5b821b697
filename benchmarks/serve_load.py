"""HTTP load on the detection service, against the Ray Serve docs' object-detection pattern, in one run.

    python benchmarks/serve_load.py --duration 60 --concurrency 1,8,32,128 --out results/serve_load.json \
        --set engine.precision=fp16 --set engine.imgsz=384x640 --set engine.batch_size=32 --set max_batch_size=32 \
        --set engine.decode=gpu --option ray_actor_options.num_gpus=0.5 --option ray_actor_options.num_cpus=6

Both systems get the same 1920x1080 JPEGs (generated footage, yoloray.data.synthetic), the same weights (the
config's model, by default the bundled demo detector), input size, precision and per-replica resources:
  yoloray    the serve config (--config, default serve_configs/detector.yaml): warmed Detector, @serve.batch
             at the image level, autoscaling from the file's deployments entry
  docs       the pattern of the Ray Serve object-detection tutorial: a FastAPI ingress deployment that hands
             each request to an `ObjectDetection` deployment holding an ultralytics `YOLO(weights)`, one
             `predict` per request, no batching, autoscaling min 1 / max (same max_replicas)
A bounded asyncio client (aiohttp, 127.0.0.1 only) keeps C requests in flight for --duration seconds at each
concurrency C (and at most --max-requests per level); it reports images/s and p50/p99 latency. A poller
records each system's replica counts from `serve.status()` through the run and a cooldown after it, printed
as a timeline (scale-up under load, scale-down after). Prints a table last; writes JSON to --out.

On a CPU-only machine, a tiny run that proves the wiring:
    python benchmarks/serve_load.py --duration 10 --concurrency 2,8 --set engine.imgsz=256 --set engine.device=cpu \
        --option autoscaling_config.target_ongoing_requests=2 --option autoscaling_config.upscale_delay_s=2 \
        --option autoscaling_config.downscale_delay_s=5 --cooldown 40
"""

import argparse
import asyncio
import json
import os
import socket
import sys
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
    import aiohttp

    lat: list[float] = []
    codes: Counter = Counter()
    sent = images = 0
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    t0 = time.perf_counter()
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
    elapsed = time.perf_counter() - t0
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests": int(sum(codes.values())),
        "ok": len(lat),
        "images": images,
        "images_per_request": bodies[0][2],
        "statuses": {str(k): v for k, v in codes.items()},
        "images_per_s": round(images / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_ms": round(float(ms.mean()), 1),
    }


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

    from yoloray.data.synthetic import render_frame

    return [
        cv2.imencode(".jpg", render_frame(7, i)[0], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
        for i in range(n)
    ]


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


def run_levels(name: str, url: str, bodies, args, watch: ReplicaWatch, results: list) -> None:
    asyncio.run(
        load(url, bodies, max(args.concurrency), min(5.0, args.duration), 10 * max(args.concurrency))
    )  # warm
    for c in args.concurrency:
        watch.phase = f"{name} c={c}"
        r = asyncio.run(load(url, bodies, c, args.duration, args.max_requests))
        r["system"] = name
        r["replicas_at_end"] = watch.running(name)
        results.append(r)
        print(
            f"  -> {name} c={c}: {r['images_per_s']} images/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
            f"statuses {r['statuses']}, replicas {r['replicas_at_end']}",
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
    head = f"{'system':<10} {'conc':>5} {'img/req':>7} {'images/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'ok':>7} {'other statuses':<22} {'replicas':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        other = {k: v for k, v in r["statuses"].items() if k != "200"}
        lines.append(
            f"{r['system']:<10} {r['concurrency']:>5} {r['images_per_request']:>7} {r['images_per_s']:>10.1f} {r['p50_ms']:>9.1f} {r['p99_ms']:>9.1f} "
            f"{r['ok']:>7} {json.dumps(other) if other else '-':<22} {r['replicas_at_end']:>8}"
        )
    return "\n".join(lines)


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
        "--concurrency", default="1,8,32", help="comma-separated requests in flight, e.g. 1,8,32,128"
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
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    p.add_argument("--out", default="serve_load.json", help="JSON results path")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]

    import ray
    from ray import serve

    from yoloray.config import ServeConfig
    from yoloray.serve.app import build_application, load_serve_config

    schema = load_serve_config(args.config)
    app_schema = schema.applications[0]
    app_args = dict(app_schema.args or {})
    app_args["engine"] = dict(app_args.get("engine") or {})
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
                base + "/yoloray/detect",
                make_bodies(frames, args.images_per_request),
                args,
                watch,
                results,
            )
            import requests

            info = requests.get(base + "/yoloray/info", timeout=10).json()
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
            run_levels("docs", base + "/docs-pattern/detect", make_bodies(frames, 1), args, watch, results)
            back = cooldown("docs", watch, floor, args.cooldown)
            scale["docs"] = {
                "peak": max((e["running"] for e in watch.events if e["app"] == "docs"), default=0),
                "back_to_min_after_s": back,
            }
            serve.delete("docs")
    finally:
        watch.stop()
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
    out = {
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
