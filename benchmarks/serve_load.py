"""One 1080p JPEG per request against the detection service, every ingress in one run, and an autoscaling step.

    python benchmarks/serve_load.py --random-weights yolov8s.yaml --duration 10 \\
        --set engine.precision=fp16 --set engine.imgsz=384x640 --set engine.batch_size=32 --set max_batch_size=32 \\
        --set engine.decode=gpu --set engine.cuda_graph=true --option ray_actor_options.num_cpus=4 \\
        --option max_ongoing_requests=256 --option max_queued_requests=1024 --set max_queued_images=2048 \\
        --layouts 1x1,2x0.5,3x0.33 --out results/serve_load.json

Systems (--systems), all on the same weights, input size, precision and 1920x1080 JPEGs (generated footage):
  docs       the Ray Serve object-detection tutorial's pattern (benchmarks/serve_docs_pattern.py) behind
             Serve's Python proxy: one ultralytics predict per request, no batching
  proxy      yoloray (the serve config, --config) behind Serve's Python HTTP proxy      (ingress: proxy)
  grpc-proxy yoloray's gRPC Detect through Serve's Python gRPC proxy                     (ingress: proxy)
  haproxy    yoloray behind Ray's HAProxy ingress, straight to the replicas' own HTTP servers (ingress: haproxy)
  grpc       yoloray's gRPC Detect through HAProxy to the replicas' own gRPC servers    (ingress: haproxy)
Ray reads the ingress when it starts, so the run starts a local Ray per ingress (proxy first, then haproxy).

Each system runs every concurrency level (--concurrency, requests in flight, split over --client-procs
processes of yoloray.client.AsyncClient, no retries) for --duration s: images/s, p50/p99, statuses (5xx other
than 503 counted apart), the replicas' batch sizes (from their /info), and the CPU of the client, Serve's
Python proxy, HAProxy and the replicas (% of one core, this machine's processes). The yoloray systems run each
replica layout (--layouts R x GPU share: 2x0.5 is two replicas on one GPU, fractional num_gpus) so the
measurement decides how many replicas a GPU should hold; the proxy systems run the first layout only.

The step (--step-ingress, default haproxy): autoscaling from 1 replica (max --step-max-replicas): --step-low
requests in flight for --step-low-s (the steady p50 of one warm replica), then --step-high for --step-s. For
each replica the autoscaler adds: when Serve's controller created it (the control-loop step that took the
scale-up decision; Ray 2.60 does not expose the decision's own time), when it reported it running (created ->
ready), the latency of its first request, the p50 of its first ten, and its own steady p50 (the median of its
answered requests after its first ten, under the same --step-high load; None with fewer than 20 requests).
Two ratios, each the new replica's first request over:
  first/steady  the pre-step p50 (one warm replica at --step-low): light load against the step's load, so it
                counts the queueing the step itself adds, not only the new replica's cold start
  first/own     that replica's own steady p50 at --step-high: what its first request costs over its later ones
The step's own p50/p99 at --step-high (all replicas) is in the table's header line, with the 5xx count of the
whole step. Replicas report ready only once warm at every batch shape (/info: warmup). Prints tables, writes
JSON to --out. `--systems none` (or empty) runs only the step, on --step-ingress.

On a CPU-only machine, a small run that proves the wiring (ports from --port-base, loopback only):
    python benchmarks/serve_load.py --duration 4 --concurrency 1,8 --docs-concurrency 1 --layouts 1x0 \\
        --set engine.imgsz=256 --set engine.batch_size=4 --set max_batch_size=4 --set engine.device=cpu \\
        --option ray_actor_options.num_cpus=0.5 --step-low 1 --step-high 8 --step-low-s 4 --step-s 90 \\
        --step-target 2 --port-base 18500 --frames 4
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402
from serve_watch import ReplicaWatch, batch_delta, cpu_pct, replica_stats, serve_cpu  # noqa: E402

HOST = "127.0.0.1"
SYSTEMS = ("docs", "proxy", "grpc-proxy", "haproxy", "grpc")
INGRESS = {"docs": "proxy", "proxy": "proxy", "grpc-proxy": "proxy", "haproxy": "haproxy", "grpc": "haproxy"}


# ------------------------------------------------------------------------------------------- client load
_FRAMES: list[bytes] = []


def _init_frames(frames: list[bytes]) -> None:
    _FRAMES[:] = frames


async def _load(url: str, concurrency: int, duration: float, max_requests: int, record: bool, app) -> dict:
    """`concurrency` requests in flight for `duration` s through yoloray.client (no retries)."""
    from yoloray.client import AsyncClient

    lat: list[float] = []
    codes: Counter = Counter()
    records: list[tuple] = []
    sent = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration
    async with AsyncClient(url, max_in_flight=concurrency, retries=0, timeout_s=120, application=app) as c:

        async def worker(w: int):
            nonlocal sent
            i = w
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                frame = _FRAMES[i % len(_FRAMES)]
                i += concurrency
                start, t = time.time(), time.perf_counter()
                answer = await c.request(frame)
                dt = time.perf_counter() - t
                codes[answer.status] += 1
                if answer.status == 200:
                    lat.append(dt)
                if record:
                    records.append((start, dt, answer.status, answer.replica))

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": time.process_time() - cpu0,
        "lat": lat,
        "codes": codes,
        "records": records,
    }


def _client(task) -> dict:
    return asyncio.run(_load(*task))


def run_load(pool, procs, url, concurrency, duration, max_requests, record=False, app=None) -> dict:
    """C requests in flight split over `procs` client processes (this one when C or procs is 1)."""
    shares = [n for n in (concurrency // procs + (i < concurrency % procs) for i in range(procs)) if n]
    tasks = [(url, n, duration, max(1, max_requests * n // concurrency), record, app) for n in shares]
    parts = pool.map(_client, tasks) if pool is not None and len(tasks) > 1 else [_client(tasks[0])]
    lat = [x for p in parts for x in p["lat"]]
    codes = sum((p["codes"] for p in parts), Counter())
    elapsed = max(p["seconds"] for p in parts)
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests": int(sum(codes.values())),
        "ok": len(lat),
        "statuses": {str(k): v for k, v in codes.items()},
        "errors_5xx": sum(v for k, v in codes.items() if 500 <= k != 503),
        "images_per_s": round(len(lat) / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "cpu_client_pct": round(100 * sum(p["cpu_s"] for p in parts) / elapsed),
        "records": sorted(r for p in parts for r in p["records"]),
    }


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


def parse_layouts(text: str) -> list[tuple[int, float]]:
    """'1x1,2x0.5' -> [(1, 1.0), (2, 0.5)]: replicas x GPU share of each (0: CPU)."""
    out = []
    for part in text.split(","):
        r, sep, g = part.strip().lower().partition("x")
        if not sep:
            raise SystemExit(f"--layouts wants REPLICASxGPU_SHARE items (e.g. 2x0.5), got {part!r}")
        out.append((int(r), float(g)))
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


def wait_healthy(url: str, timeout: float = 900) -> None:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s")


def make_random_weights(model_yaml: str) -> str:
    from yoloray.engines.torch_backend import save_random_checkpoint

    path = Path(tempfile.gettempdir()) / "yoloray-bench" / f"{Path(model_yaml).stem}-random-seed0.pt"
    if not path.exists():
        save_random_checkpoint(model_yaml, path)
    return str(path)


def ports_for(base: int | None) -> tuple[int, int, dict]:
    """HTTP and gRPC ports and HAProxy's extra ports: from `base` (a range of 40), else free ports and Ray's
    defaults for the rest."""
    if base is None:
        return free_port(), free_port(), {}
    keys = ("stats", "metrics", "fallback_http", "fallback_grpc")
    extra = {k: base + 2 + i for i, k in enumerate(keys)}
    extra.update(
        replica_http_min=base + 10,
        replica_http_max=base + 24,
        replica_grpc_min=base + 25,
        replica_grpc_max=base + 39,
    )
    return base, base + 1, extra


# ------------------------------------------------------------------------------------------- one ingress
class Run:
    """Everything one benchmark run shares: arguments, frames, client pool, app args and deployment options."""

    def __init__(self, args, app_args: dict, options: dict, pool):
        self.args, self.app_args, self.options, self.pool = args, app_args, options, pool
        self.results: list[dict] = []
        self.steps: list[dict] = []
        self.warmups: dict = {}

    def deploy(self, name: str, ingress: str, replicas: int, gpus: float, autoscaling: dict | None = None):
        from ray import serve

        from yoloray.serve.app import build_application

        opts = json.loads(json.dumps(self.options))
        actor = dict(opts.get("ray_actor_options") or {})
        if gpus > 0:
            actor["num_gpus"] = gpus
        opts["ray_actor_options"] = actor
        opts["autoscaling_config"] = autoscaling
        if autoscaling is None:
            opts["num_replicas"] = replicas
        serve.run(
            build_application({**self.app_args, "ingress": ingress}, **opts),
            name=name,
            route_prefix="/yoloray",
            blocking=False,
        )

    def levels(self, system, url, info_url, levels, layout, watch, app=None, app_name="yoloray") -> None:
        args, replicas = self.args, layout[0]
        run_load(
            self.pool, args.client_procs, url, min(max(levels), 16), min(5.0, args.duration), 2000, app=app
        )
        for c in levels:
            watch.phase = f"{system} {layout[0]}x{layout[1]:g} c={c}"
            cpu0 = serve_cpu(app_name)
            stats0 = replica_stats(info_url, replicas) if info_url else {}
            r = run_load(self.pool, args.client_procs, url, c, args.duration, args.max_requests, app=app)
            r.update(cpu_pct(cpu0, serve_cpu(app_name), r["seconds"]))
            if info_url:
                r.update(batch_delta(stats0, replica_stats(info_url, replicas)))
            r.pop("records")
            r.update(
                system=system, layout=f"{layout[0]}x{layout[1]:g}", replicas_running=watch.running(app_name)
            )
            self.results.append(r)
            print(
                f"  -> {system} {r['layout']} c={c}: {r['images_per_s']} images/s, p50 {r['p50_ms']} ms, "
                f"p99 {r['p99_ms']} ms, statuses {r['statuses']}, batch {r.get('mean_batch')}, CPU% client "
                f"{r['cpu_client_pct']} proxy {r['cpu_proxy_pct']} haproxy {r['cpu_haproxy_pct']} replicas "
                f"{r['cpu_replicas_pct']}",
                flush=True,
            )

    def phase(self, ingress: str, systems: list[str]) -> None:
        """Start a local Ray for `ingress`, run its systems (and the step when it is the step's ingress)."""
        import ray
        from ray import serve

        from yoloray.serve.grpc_api import SERVICER
        from yoloray.serve.ingress import prepare
        from yoloray.serve.settings import ServeConfig

        args = self.args
        http_port, grpc_port, extra = ports_for(args.port_base)
        saved = dict(os.environ)
        try:
            prepare([ServeConfig.parse({**self.app_args, "ingress": ingress})], ports=extra)
            # Serve drains a deleted direct-ingress replica for 30 s by default: a pause per deployment here
            os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
            ray.init(include_dashboard=False, log_to_driver=False)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        base = f"http://{HOST}:{http_port}"
        watch = ReplicaWatch()
        watch.start()
        try:
            serve.start(
                http_options={"host": HOST, "port": http_port},
                grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER]},
            )
            ours = [s for s in systems if s != "docs"]
            layouts = args.layouts if ingress == "haproxy" else args.layouts[:1]
            for layout in layouts if ours else []:
                watch.phase = f"deploy {ingress} {layout[0]}x{layout[1]:g}"
                self.deploy("yoloray", ingress, *layout)
                wait_healthy(base + "/yoloray/healthz")
                info = base + "/yoloray/info"
                self.warmups[f"{ingress} {layout[0]}x{layout[1]:g}"] = replica_stats(info, layout[0])
                for s in ours:
                    if s.startswith("grpc"):
                        app = "yoloray" if ingress == "proxy" else None
                        url = f"grpc://{HOST}:{grpc_port}"
                    else:
                        app, url = None, base + "/yoloray/detect"
                    lv = args.concurrency if layout == args.layouts[0] else args.layout_concurrency
                    self.levels(s, url, info, lv, layout, watch, app=app)
                serve.delete("yoloray")
            if "docs" in systems:
                self.docs(base, watch)
            if args.step_ingress == ingress:
                self.step(base, ingress, watch)
        finally:
            watch.stop()
            serve.shutdown()
            ray.shutdown()

    def docs(self, base: str, watch) -> None:
        from ray import serve
        from serve_docs_pattern import docs_app

        from yoloray.serve.settings import ServeConfig

        eng = ServeConfig.parse(self.app_args).profile
        replicas, gpus = self.args.layouts[0]
        actor = dict(self.options.get("ray_actor_options") or {})
        if gpus > 0:
            actor["num_gpus"] = gpus
        opts = {"ray_actor_options": actor, "num_replicas": replicas}
        app = docs_app(
            eng.model, list(eng.imgsz), eng.precision == "fp16", eng.conf, eng.iou, eng.max_det, opts
        )
        watch.phase = "docs deploy"
        serve.run(app, name="docs", route_prefix="/docs-pattern", blocking=False)
        self.levels(
            "docs",
            base + "/docs-pattern/detect",
            None,
            self.args.docs_concurrency,
            (replicas, gpus),
            watch,
            app_name="docs",
        )
        serve.delete("docs")

    def step(self, base: str, ingress: str, watch) -> None:
        """The autoscaling load step (see the module docstring)."""
        from ray import serve

        a = self.args
        auto = {
            "min_replicas": 1,
            "max_replicas": a.step_max_replicas,
            "target_ongoing_requests": a.step_target,
            "upscale_delay_s": a.step_upscale_delay_s,
            "downscale_delay_s": 600,
        }
        watch.phase = "step deploy"
        self.deploy("yoloray", ingress, 1, a.step_gpus, autoscaling=auto)
        url = base + "/yoloray/detect"
        wait_healthy(base + "/yoloray/healthz")
        run_load(self.pool, a.client_procs, url, a.step_low, 3.0, 10_000)
        watch.phase = "step low"
        low = run_load(self.pool, a.client_procs, url, a.step_low, a.step_low_s, a.max_requests, record=True)
        before = {k for k in watch.replicas if k[0] == "yoloray"}
        t_high = time.time()
        watch.phase = "step high"
        high = run_load(self.pool, a.client_procs, url, a.step_high, a.step_s, a.max_requests, record=True)
        time.sleep(1.0)
        steady = low["p50_ms"]
        new = []
        for key, rec in sorted(watch.replicas.items(), key=lambda kv: kv[1]["created"] or 0):
            if key in before or key[0] != "yoloray":
                continue
            mine = [r for r in high["records"] if r[3] == rec["replica"]]
            first = mine[0] if mine else None
            first10 = [r[1] * 1000 for r in mine[:10] if r[2] == 200]
            later = [r[1] * 1000 for r in mine[10:] if r[2] == 200]
            own = float(np.median(later)) if len(mine) >= 20 and later else None
            new.append(
                {
                    "replica": rec["replica"],
                    "created_after_step_s": _round(rec["created"] and rec["created"] - t_high),
                    "created_to_ready_s": _round(
                        rec["running"] and rec["created"] and rec["running"] - rec["created"]
                    ),
                    "first_request_ms": _round(first and first[1] * 1000),
                    "first_request_status": first and first[2],
                    "first10_p50_ms": _round(first10 and float(np.median(first10))),
                    "first_over_steady_p50": _round(first and steady and first[1] * 1000 / steady),
                    "own_steady_p50_ms": _round(own),
                    "first_over_own_steady_p50": _round(first and own and first[1] * 1000 / own),
                    "requests": len(mine),
                }
            )
        codes = Counter({**{int(k): v for k, v in low["statuses"].items()}})
        codes.update({int(k): v for k, v in high["statuses"].items()})
        self.steps.append(
            {
                "ingress": ingress,
                "low": {k: low[k] for k in ("concurrency", "images_per_s", "p50_ms", "p99_ms", "statuses")},
                "high": {k: high[k] for k in ("concurrency", "images_per_s", "p50_ms", "p99_ms", "statuses")},
                "steady_p50_ms": steady,
                "statuses": {str(k): v for k, v in codes.items()},
                "errors_5xx": sum(v for k, v in codes.items() if 500 <= k != 503),
                "peak_replicas": watch.peak("yoloray"),
                "new_replicas": new,
            }
        )
        serve.delete("yoloray")


def _round(v, n: int = 2):
    """None for a missing value (None, False, an empty list: what `a and b` gives when `a` is missing)."""
    return round(float(v), n) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# ------------------------------------------------------------------------------------------- report
def table(results: list[dict]) -> str:
    head = (
        f"{'system':<10} {'layout':>6} {'conc':>5} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ok':>7} "
        f"{'5xx':>4} {'other statuses':<16} {'batch':>6} {'CPU% client':>11} {'proxy':>6} {'haproxy':>7} "
        f"{'replicas':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        other = {k: v for k, v in r["statuses"].items() if k != "200"}
        lines.append(
            f"{r['system']:<10} {r['layout']:>6} {r['concurrency']:>5} {r['images_per_s']:>9.1f} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['ok']:>7} {r['errors_5xx']:>4} "
            f"{json.dumps(other) if other else '-':<16} {_dash(r.get('mean_batch')):>6} {r['cpu_client_pct']:>11} "
            f"{_dash(r['cpu_proxy_pct']):>6} {_dash(r['cpu_haproxy_pct']):>7} {_dash(r['cpu_replicas_pct']):>8}"
        )
    return "\n".join(lines)


def step_table(step: dict) -> str:
    lines = [
        f"autoscaling step on {step['ingress']}: c={step['low']['concurrency']} -> c={step['high']['concurrency']}; "
        f"steady p50 (one warm replica, before the step) {step['steady_p50_ms']} ms; after the step {step['high']['images_per_s']} "
        f"images/s p50 {step['high']['p50_ms']} ms p99 {step['high']['p99_ms']} ms; peak {step['peak_replicas']} "
        f"replicas; statuses {step['statuses']}; 5xx other than 503: {step['errors_5xx']}",
        f"  {'replica':<10} {'created s':>9} {'created->ready s':>16} {'first ms':>9} {'first10 p50':>11} "
        f"{'own p50':>8} {'first/steady':>12} {'first/own':>9} {'requests':>8}",
    ]
    for n in step["new_replicas"]:
        lines.append(
            f"  {n['replica']:<10} {_dash(n['created_after_step_s']):>9} {_dash(n['created_to_ready_s']):>16} "
            f"{_dash(n['first_request_ms']):>9} {_dash(n['first10_p50_ms']):>11} "
            f"{_dash(n.get('own_steady_p50_ms')):>8} {_dash(n['first_over_steady_p50']):>12} "
            f"{_dash(n.get('first_over_own_steady_p50')):>9} {n['requests']:>8}"
        )
    lines.append(
        "  first/steady: first request / the pre-step p50 (one replica, low load); first/own: first request / "
        "that replica's own p50 after its first ten (same high load)"
    )
    if not step["new_replicas"]:
        lines.append("  (the autoscaler added no replica during the step)")
    return "\n".join(lines)


def _dash(v) -> str:
    return "-" if v is None else str(v)


def summary(results: list[dict], bound_ms: float) -> dict:
    """Per system and layout: the best level, and the best with p99 <= bound_ms and only 200s."""
    out: dict = {"p99_bound_ms": bound_ms}
    for key in dict.fromkeys((r["system"], r["layout"]) for r in results):
        rows = [r for r in results if (r["system"], r["layout"]) == key]
        within = [r for r in rows if r["p99_ms"] <= bound_ms and set(r["statuses"]) == {"200"}]
        best = max(rows, key=lambda r: r["images_per_s"])
        good = max(within, key=lambda r: r["images_per_s"], default=None)
        out[f"{key[0]} {key[1]}"] = {
            "best": {k: best[k] for k in ("concurrency", "images_per_s", "p99_ms")},
            "best_within_bound": good and {k: good[k] for k in ("concurrency", "images_per_s", "p99_ms")},
        }
    return out


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config", default=str(ROOT / "serve_configs" / "detector.yaml"), help="Serve config (yoloray app)"
    )
    p.add_argument(
        "--systems",
        default="docs,proxy,haproxy,grpc",
        help=f"which of {','.join(SYSTEMS)}; none (or empty): only the autoscaling step, on --step-ingress",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per level")
    p.add_argument("--concurrency", default="1,4,16,32,64,128,256", help="requests in flight per level")
    p.add_argument("--docs-concurrency", default="1,4,16", help="levels for the docs pattern")
    p.add_argument(
        "--layouts", default="1x1", help="replica layouts REPLICASxGPU_SHARE (1x0: CPU), e.g. 1x1,2x0.5"
    )
    p.add_argument("--layout-concurrency", default="16,64,256", help="levels for the layouts after the first")
    p.add_argument(
        "--p99-bound-ms", type=float, default=100.0, help="latency bound of the summary (issue 18)"
    )
    p.add_argument("--client-procs", type=int, default=4 if (os.cpu_count() or 1) >= 8 else 1)
    p.add_argument(
        "--random-weights", metavar="MODEL_YAML", help="seeded random weights of this ultralytics model"
    )
    p.add_argument("--max-requests", type=int, default=200_000, help="cap on requests per level")
    p.add_argument("--frames", type=int, default=16, help="distinct 1920x1080 JPEGs to cycle through")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the generated frames")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="app args, dotted")
    p.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="deployment options, dotted"
    )
    p.add_argument("--step-ingress", default="haproxy", choices=("proxy", "haproxy", "none"))
    p.add_argument("--step-low", type=int, default=4, help="requests in flight before the step")
    p.add_argument("--step-high", type=int, default=128, help="requests in flight after the step")
    p.add_argument("--step-low-s", type=float, default=10.0)
    p.add_argument("--step-s", type=float, default=60.0)
    p.add_argument("--step-max-replicas", type=int, default=2)
    p.add_argument("--step-target", type=float, default=16, help="autoscaling target_ongoing_requests")
    p.add_argument("--step-upscale-delay-s", type=float, default=2.0)
    p.add_argument(
        "--step-gpus", type=float, help="GPU share of each step replica (default: the first layout's)"
    )
    p.add_argument("--port-base", type=int, help="HTTP, gRPC and HAProxy's ports from here (40 ports)")
    p.add_argument("--out", default="serve_load.json", help="JSON results path")
    args = p.parse_args(argv)
    ints = lambda s: [int(c) for c in s.split(",") if c]  # noqa: E731
    args.concurrency, args.docs_concurrency = ints(args.concurrency), ints(args.docs_concurrency)
    args.layout_concurrency = ints(args.layout_concurrency)
    args.layouts = parse_layouts(args.layouts)
    args.step_gpus = args.layouts[0][1] if args.step_gpus is None else args.step_gpus
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if systems == ["none"]:
        systems = []
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)} (or none)")
    if not systems and args.step_ingress == "none":
        raise SystemExit("nothing to run: --systems none and --step-ingress none")

    from yoloray.serve.app import load_serve_config
    from yoloray.serve.settings import ServeConfig

    schema = load_serve_config(args.config)
    app_schema = schema.applications[0]
    app_args = dict(app_schema.args or {})
    # the engine's section of the app args: `engine` today; `profile` in configs written for profiles (issue
    # 16), which read `engine` as the profile too. --set engine.X goes to whichever the config uses.
    section = "profile" if "profile" in app_args else "engine"
    app_args[section] = dict(app_args.get(section) or {})
    if args.random_weights:
        app_args[section]["model"] = make_random_weights(args.random_weights)
    for k, v in parse_sets(args.set):
        set_dotted(app_args, section + k[len("engine") :] if k.startswith("engine.") else k, v)
    options = (
        app_schema.deployments[0].model_dump(exclude_unset=True, exclude={"name"})
        if app_schema.deployments
        else {}
    )
    for k, v in parse_sets(args.option):
        set_dotted(options, k, v)
    cfg = ServeConfig.parse(app_args, source="benchmark app args")
    eng = getattr(cfg, section)
    print(
        f"engine: {eng.model} {eng.backend} {eng.precision} imgsz {eng.imgsz} batch {eng.batch_size} device "
        f"{eng.device}; serve batch {cfg.max_batch_size} / {cfg.batch_wait_timeout_s}s; options {options}",
        flush=True,
    )
    frames = make_frames(args.frames, args.quality)
    print(
        f"{len(frames)} frames of 1920x1080, {np.mean([len(f) for f in frames]) / 1024:.0f} KiB each",
        flush=True,
    )
    _init_frames(frames)
    pool = None
    if args.client_procs > 1:
        pool = multiprocessing.get_context("spawn").Pool(args.client_procs, _init_frames, (frames,))
    run = Run(args, app_args, options, pool)
    try:
        for ingress in ("proxy", "haproxy"):
            mine = [s for s in systems if INGRESS[s] == ingress]
            if mine or args.step_ingress == ingress:
                run.phase(ingress, mine)
    finally:
        if pool is not None:
            pool.terminate()

    if run.results:
        print("\n" + table(run.results))
    for step in run.steps:
        print("\n" + step_table(step))
    print(
        "\nreplica start-up (each layout's replicas: warmed batch sizes, seconds to warm, __init__ seconds):"
    )
    for key, reps in run.warmups.items():
        for rep, v in reps.items():
            w = v.get("warmup") or {}
            print(
                f"  {key:<16} {rep:<10} sizes {w.get('batch_sizes')} warm {w.get('seconds')} s init {w.get('init_seconds')} s"
            )
    best = summary(run.results, args.p99_bound_ms)
    if run.results:
        print(f"\nbest images/s with p99 <= {args.p99_bound_ms:g} ms and only 200s (and at any latency):")
    for key, v in best.items():
        if isinstance(v, dict):
            w, b = v["best_within_bound"], v["best"]
            within = (
                f"{w['images_per_s']} at c={w['concurrency']} (p99 {w['p99_ms']})"
                if w
                else "none within the bound"
            )
            print(
                f"  {key:<18} {within}; any latency {b['images_per_s']} at c={b['concurrency']} (p99 {b['p99_ms']})"
            )
    out = {
        "summary": best,
        "args": {k: v for k, v in vars(args).items()},
        "engine": eng.model_dump(mode="json"),
        "serve": {k: v for k, v in cfg.model_dump(mode="json").items() if k != "engine"},
        "deployment_options": options,
        "results": run.results,
        "steps": run.steps,
        "warmups": run.warmups,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
