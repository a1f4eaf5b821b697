"""Without --address a command starts its own local Ray, never the one a stale `ray_current_cluster` names, and
that Ray listens on loopback only (yoloray/cluster.py). Each test starts a Ray in a subprocess with a private
RAY_TMPDIR holding a record of a Ray that died."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

PROBE = """
import json, time, psutil, ray
from yoloray.cluster import connect
assert connect(None, log_to_driver=False)
time.sleep(3)  # agents and metrics endpoints come up after ray.init returns
me = psutil.Process()
listening = set()
for p in [me, *me.children(recursive=True)]:
    try:
        listening |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        pass
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "listening": sorted(listening)}))
ray.shutdown()
"""


@pytest.fixture
def short_tmp():
    """Ray's socket paths under RAY_TMPDIR must stay under 108 bytes: pytest's tmp_path is too deep."""
    path = Path(tempfile.mkdtemp(prefix="yr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _stale_env(tmp_path: Path) -> tuple[dict[str, str], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        stale = f"127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(stale)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "YOLORAY_ROWS_PER_PART")}
    env.update(RAY_TMPDIR=str(tmp_path), RAY_USAGE_STATS_ENABLED="0", YOLO_OFFLINE="true",
               YOLORAY_LOG_DIR=str(tmp_path / "logs"))
    return env, stale


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def test_own_local_ray_on_loopback_despite_a_stale_record(short_tmp):
    env, stale = _stale_env(short_tmp)
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert found["gcs"].rsplit(":", 1)[1] != stale.rsplit(":", 1)[1]
    assert found["listening"], "no listening sockets found"
    assert all(_loopback(ip) for ip in found["listening"]), found["listening"]


def test_infer_without_address_ignores_a_stale_record(tmp_path, short_tmp, photos):
    env, _ = _stale_env(short_tmp)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("bus", "zidane"):
        (src / f"{name}.jpg").write_bytes(photos[name].read_bytes())
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "yoloray.cli", "infer", str(src), "--out", str(out), "--imgsz", "320",
                        "--device", "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 new" in r.stdout
    assert sorted(pq.read_table(out).column("key").to_pylist()) == ["bus.jpg", "zidane.jpg"]
