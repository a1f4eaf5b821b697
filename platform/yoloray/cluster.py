"""Which Ray a command runs on: `connect(address)` for `yoloray infer`, `tune`, `serve` and `demo`.

- no address: a new local Ray for this command alone (`ray.init(address="local")`). Never one that a
  `ray_current_cluster` file names (a stale one named a dead Ray, and ray.init retried it for minutes) nor one
  found by scanning processes. Its processes listen on loopback only (README "Exposure"). `RAY_ADDRESS`, when
  set (a `ray job submit` entrypoint gets it), counts as `--address`.
- `auto`: the running cluster: RAY_ADDRESS, else the record `ray start` left in the temp dir, else a local GCS.
- `HOST:PORT` (the GCS) or `ray://HOST:PORT` (Ray Client): that cluster.

Before ray.init, the address is resolved and its port tried: one that does not answer fails within
CONNECT_TIMEOUT_S with a `ClusterError` that says so (ray.init itself retries a dead GCS for over a minute).
"""

from __future__ import annotations

import os
import socket
import sys

CONNECT_TIMEOUT_S = 5.0
# Ray reads this at import: with "0" the node's address is 127.0.0.1, so a local Ray's GCS, raylet, workers,
# agents and metrics endpoints bind to loopback instead of all interfaces (Ray's own switch for single-machine use).
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class ClusterError(ConnectionError):
    """The Ray cluster asked for cannot be reached; the message says which and what to do."""


def _unreachable(address: str, why: str) -> ClusterError:
    return ClusterError(
        f"no Ray cluster answers at {address} ({why}). Start it (`ray start --head`), fix --address, "
        "or leave --address out to run on a new local Ray"
    )


def _auto() -> str:
    """What `auto` names: RAY_ADDRESS, else the cluster `ray start` recorded in the temp dir, else the one Ray's
    process scan finds. The record comes before the scan (Ray itself prefers a lone GCS process it sees to the
    record, so on a machine shared by several Rays `auto` could join someone else's)."""
    from ray._private.services import canonicalize_bootstrap_address
    from ray._private.utils import read_ray_address

    found = os.environ.get("RAY_ADDRESS") or read_ray_address()
    if found:
        return found
    try:
        return canonicalize_bootstrap_address("auto")
    except ConnectionError as e:
        raise ClusterError(
            f"--address auto: no running Ray cluster found ({e}). Start one with `ray start --head`, or "
            "leave --address out to run on a new local Ray"
        ) from None


def resolve(address: str) -> tuple[str, int]:
    """HOST, PORT that `address` (auto, HOST:PORT, ray://HOST:PORT) stands for; ClusterError when none."""
    target = _auto() if address == "auto" else address
    hostport = target.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        if "://" in target:
            return hostport, 10001  # Ray Client's default port
        raise ClusterError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def check_reachable(address: str) -> None:
    host, port = resolve(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        where = f"{host}:{port}" if address in (f"{host}:{port}",) else f"{address} -> {host}:{port}"
        raise _unreachable(where, e.strerror or type(e).__name__) from None


def use_loopback() -> None:
    """Make a Ray started by this process listen on loopback only (set before Ray starts its processes)."""
    os.environ[LOOPBACK_SWITCH] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # ray imported already: the switch was read at import; set what it set
        constants.ENABLE_RAY_CLUSTER = False


def connect(address: str | None = None, **init_kwargs) -> bool:
    """ray.init on the Ray `address` names (module docstring). Returns True when this call started Ray (the
    caller shuts it down), False when Ray was already initialised in this process."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        use_loopback()
        init_kwargs.setdefault("include_dashboard", False)
        ray.init(address="local", **init_kwargs)
        return True
    check_reachable(address)
    if address == "auto":  # join what was checked, not what ray.init would pick again
        address = _auto()
    ray.init(address=address, **init_kwargs)
    return True
