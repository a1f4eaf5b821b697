"""`yoloray demo` as the README's first command runs it (a subprocess, its own local Ray, the CPU): sample
stills and a video clip go through the batch job into Parquet, and the console keeps to the demo's own lines."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq


def test_demo_runs_stills_and_video_with_a_quiet_console(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "yoloray.cli", "demo", "--out", str(tmp_path), "--frames", "12",
                           "--device", "cpu"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in ("images", "errors        0", "contact sheet"):
        assert line in done.stdout, done.stdout
    console = done.stdout + done.stderr
    assert "Total Progress" not in console and "Starting execution of Dataset" not in console, console[-3000:]
    assert "Traceback" not in console
    rows = pq.read_table(tmp_path / "detections", columns=["key", "frame", "error"]).to_pylist()
    video = [r for r in rows if r["frame"] is not None]
    stills = [r for r in rows if r["frame"] is None]
    assert len(video) == 24 and sorted(r["frame"] for r in video) == list(range(24))  # every frame of the clip
    assert stills and all(r["error"] is None for r in rows)
    assert (tmp_path / "contact_sheet.png").stat().st_size > 0
    # backend auto on a CPU: the fastest CPU engine that keeps exact-mode fidelity (ONNX Runtime fp32)
    from yoloray.config import Profile

    ran = Profile.from_yaml(tmp_path / "detections" / "_profile.yaml")
    assert (ran.backend, ran.provider, ran.precision) == ("onnxruntime", "cpu", "fp32")
