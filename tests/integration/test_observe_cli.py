"""What a user sees: `yoloray infer` run as a user runs it (a subprocess, stdout/stderr not a terminal, its own
local Ray) prints periodic progress lines and none of Ray Data's progress blocks (neither on the terminal nor
in the command's ray log); `--trace` writes a torch
profiler trace with a range per stage (and the actor's start-up phases are reported); `yoloray detect --trace` too. CPU, the bundled demo detector.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from yoloray.data.synthetic import generate
from yoloray.observe.trace import STAGES

W, H = 320, 192


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("footage"), frames=12, seed=0, width=W, height=H,
                    formats=("folder", "tar"), shard_size=6, workers=1)


def trace_names(trace_dir: Path) -> set[str]:
    (path,) = trace_dir.glob("trace-*.json")
    return {e.get("name") for e in json.loads(path.read_text())["traceEvents"]}


def test_infer_progress_lines_without_a_terminal(footage, tmp_path):
    env = {**os.environ, "YOLORAY_PROGRESS_S": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "yoloray.cli", "infer", str(footage.root / "shards"), str(footage.root / "images"),
           "--out", str(tmp_path / "out"), "--imgsz", f"{H}x{W}", "--batch-size", "4", "--device", "cpu",
           "--batches-per-call", "1", "--trace", str(tmp_path / "trace")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("infer: ")]  # on the terminal, not the ray log
    assert len(lines) >= 2, r.stdout  # periodic lines while it ran, and the last one
    assert "starting (listing, actor start and warmup)" in lines[0]
    # 2 tar shards of 6 + 1 files unit of 12 images; every frame and unit done at the end
    assert re.match(r"infer: units 3/3  frames 24/24 \(100%\)  [\d.,]+ frames/s  errors 0$", lines[-1]), lines[-1]
    ray_log = Path(re.search(r"^ray log +(\S+)$", r.stdout, re.M).group(1)).read_text()
    for noise in ("Total Progress", "Starting execution of Dataset", "Execution plan of Dataset",
                  "Token authentication is enabled", "execution finished in"):
        assert noise not in r.stderr + r.stdout + ray_log, noise
    out = r.stdout
    assert "24 new" in out and "GPU memory per Detector: not measured (runs on cpu)" in out
    start = re.search(r"^actor start   ready ([\d.]+) s after the job began: ([\d.]+) s until its constructor ran "
                      r"\(scheduling, process start, imports\), engine build [\d.]+ s, warmup [\d.]+ s; its first "
                      r"call ended at ([\d.]+) s$", out, re.M)
    assert start, out
    ready, before, first = map(float, start.groups())
    assert 0 < before < ready <= first
    table = out[out.index("trace of 1 call(s)"):].splitlines()
    assert [ln.split()[0] for ln in table[2:2 + len(STAGES)]] == list(STAGES)
    assert set(STAGES) <= trace_names(tmp_path / "trace")
    assert len(list((tmp_path / "trace").glob("trace-*.json"))) == 1  # one actor traced


def test_detect_trace(footage, tmp_path, capsys):
    from yoloray.cli import main

    images = sorted((footage.root / "images").glob("*/*.jpg"))[:3]
    assert main(["detect", *map(str, images), "--imgsz", f"{H}x{W}", "--device", "cpu",
                 "--trace", str(tmp_path / "t")]) == 0
    captured = capsys.readouterr()
    assert captured.out.count(": 320x192,") == 3  # the results, unchanged on stdout
    err = captured.err
    assert "https://ui.perfetto.dev" in err and "trace of 1 call(s)" in err
    assert set(STAGES) <= trace_names(tmp_path / "t")
    assert (tmp_path / "t" / "stages.txt").read_text().splitlines()[0].startswith("trace of 1 call(s)")


def test_verbose_keeps_ray_datas_lines():
    import ray.data

    from yoloray.observe.quiet import _FILTER, quiet_ray_data

    (console,) = [h for h in logging.getLogger("ray.data").handlers if h.get_name() == "console"]
    ctx = ray.data.DataContext.get_current()
    before = ctx.enable_progress_bars
    try:
        quiet_ray_data(verbose=True)
        assert _FILTER not in console.filters and ctx.enable_progress_bars == before
        quiet_ray_data(verbose=False)
        assert console.filters.count(_FILTER) == 1 and not ctx.enable_progress_bars
        info = logging.LogRecord("ray.data._internal.execution.streaming_executor", logging.INFO, "", 0,
                                 "Starting execution of Dataset", None, None)
        warning = logging.LogRecord("ray.data._internal.x", logging.WARNING, "", 0, "a real warning", None, None)
        progress_off = logging.LogRecord("ray.data._internal.progress", logging.WARNING, "", 0,
                                         "Progress bars disabled", None, None)
        assert [bool(console.filter(r)) for r in (info, warning, progress_off)] == [False, True, False]
    finally:
        console.removeFilter(_FILTER)
        ctx.enable_progress_bars = before
