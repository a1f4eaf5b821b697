"""Which Ray a command joins (yoloray/cluster.py), without starting one: an address that does not answer fails
at once with a message that says so, and `auto` never trusts a stale `ray_current_cluster` record."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from yoloray.cluster import ClusterError, check_reachable, resolve


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once closed


def _stale_tmpdir(tmp_path, port: int) -> dict[str, str]:
    """A private RAY_TMPDIR whose `ray_current_cluster` names a Ray that died."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_TMPDIR": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}


def test_addresses_resolve():
    assert resolve("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert resolve("ray://head:10001") == ("head", 10001)
    assert resolve("ray://head") == ("head", 10001)
    with pytest.raises(ClusterError, match="not HOST:PORT"):
        resolve("nonsense")


def test_unreachable_address_fails_with_a_message():
    port = _closed_port()
    with pytest.raises(ClusterError, match=f"no Ray cluster answers at 127.0.0.1:{port}.*leave --address out"):
        check_reachable(f"127.0.0.1:{port}")


@pytest.mark.parametrize("command", ["infer", "tune"])
def test_auto_with_a_stale_record_fails_instead_of_hanging(tmp_path, command):
    """`--address auto` reads `ray_current_cluster`; a dead Ray there is reported, not retried for minutes."""
    port = _closed_port()
    env = _stale_tmpdir(tmp_path, port)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"x")
    args = {
        "infer": ["infer", str(tmp_path / "in"), "--out", str(tmp_path / "out")],
        "tune": ["tune", "--out", str(tmp_path / "sweep"), "--budget-trials", "1"],
    }[command]
    r = subprocess.run([sys.executable, "-m", "yoloray.cli", *args, "--address", "auto"], env=env,
                       capture_output=True, text=True, timeout=300)  # a hang guard, not a timing
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    # Ray spells the recorded 127.0.0.1 as this node's address
    assert re.search(rf"no Ray cluster answers at auto -> \S+:{port} \(", r.stderr), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
