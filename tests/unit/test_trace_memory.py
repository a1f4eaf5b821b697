"""Profiler traces with stage ranges (observe/trace.py) and the GPU memory budget (observe/memory.py), on the
CPU: the trace is a real torch profiler export, the budget arithmetic is checked on given figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from yoloray.observe import memory
from yoloray.observe.trace import STAGES, Tracer, claim, stage, tracing


def test_one_process_claims_the_trace_folder(tmp_path):
    d = tmp_path / "trace"
    assert claim(str(d)) is True
    assert claim(str(d)) is False  # a second actor of the job does not trace


def test_trace_has_a_range_per_stage_and_a_table(tmp_path):
    tracer = Tracer(str(tmp_path), cuda=False, calls=2)
    x = torch.randn(64, 64)
    assert not tracing()
    for _ in range(3):  # the third call is not traced
        with tracer.call():
            for name in STAGES:
                with stage(name):
                    x = x @ x.T / 64
    assert tracer.finished and not tracing()
    events = json.loads(Path(tracer.path).read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert set(STAGES) <= names
    counts = {n: sum(e.get("name") == n and e.get("ph") == "X" for e in events) for n in STAGES}
    assert counts == dict.fromkeys(STAGES, 2), counts
    table = (tmp_path / "stages.txt").read_text()
    assert table == tracer.table + "\n"
    lines = table.splitlines()
    assert lines[0].startswith("trace of 2 call(s)") and lines[1].split()[:3] == ["stage", "ranges", "total"]
    assert [ln.split()[0] for ln in lines[2:]] == list(STAGES)
    assert all(ln.split()[1] == "2" for ln in lines[2:])


def test_stage_is_free_when_not_tracing():
    with stage("decode"):  # no profiler, no error, nothing recorded
        pass
    assert not tracing()


def test_an_early_close_writes_what_was_traced(tmp_path):
    tracer = Tracer(str(tmp_path), cuda=False, calls=5)
    with tracer.call(), stage("inference"):
        torch.ones(8).sum()
    assert not tracer.finished
    tracer.close()
    assert tracer.finished and tracer.table.splitlines()[2].startswith("inference")


def test_budget_on_cpu_is_not_measured():
    b = memory.measure(torch.device("cpu"))
    assert not b.measured and "not measured (runs on cpu)" in b.text()
    assert memory.summarize([]) == "GPU memory per Detector: not measured (runs on cpu)"
    with pytest.raises(ValueError, match="not measured"):
        memory.per_gpu(b, 80 * memory.GIB)


def test_packing_from_a_budget():
    gib = memory.GIB
    b = memory.MemoryBudget("cuda:0", peak_reserved=int(9.4 * gib), peak_allocated=8 * gib, gpu_total=int(139.8 * gib))
    # (139.8 GiB x 0.9) // (9.4 GiB + 0.59 GiB context) = 12
    assert memory.per_gpu(b, b.gpu_total) == 12
    assert memory.per_gpu(b, 10 * gib) == 1  # never below one
    assert "peak 9.40 GiB reserved (8.00 GiB in tensors)" in b.text() and "12 fit on this 140 GiB GPU" in b.text()
    small = memory.MemoryBudget("cuda:1", peak_reserved=gib, peak_allocated=gib, gpu_total=int(139.8 * gib))
    assert memory.summarize([small, b]).endswith("(largest of 2 actors)")
    assert "peak 9.40" in memory.summarize([small, b])


def test_startup_line_places_the_slowest_actor_in_the_job():
    from yoloray.observe.job_observer import startup_line

    job = 1000.0
    fast = {"began": job + 2.0, "phases": {"engine build": 1.0, "warmup": 1.0, "video decoder": 0.0},
            "first_call_done": job + 6.0}
    slow = {"began": job + 5.0, "phases": {"engine build": 1.5, "warmup": 2.5, "video decoder": 1.0},
            "first_call_done": job + 12.0}
    line = startup_line([fast, slow], job)
    assert line == ("actor start   ready 10.0 s after the job began (slowest of 2): 5.0 s until its constructor ran "
                    "(scheduling, process start, imports), engine build 1.5 s, warmup 2.5 s, video decoder 1.0 s; "
                    "its first call ended at 12.0 s")
    assert "video decoder" not in startup_line([fast], job)  # a phase that took no time is not listed


def test_stage_table_reads_the_cpu_range_when_cuda_adds_a_gpu_span():
    """On CUDA the profiler reports a range twice under one name (the CPU range and the GPU span it covers; seen
    on the H200, where the table showed 0.0 CPU ms for every GPU stage): the table takes each from its own."""
    from types import SimpleNamespace

    from yoloray.observe.trace import stage_table

    cpu = SimpleNamespace(key="inference", count=4, cpu_time_total=40_000, device_time_total=0)
    gpu = SimpleNamespace(key="inference", count=4, cpu_time_total=0, device_time_total=30_000)
    row = next(ln for ln in stage_table([cpu, gpu], 0.1, 4, cuda=True).splitlines() if ln.startswith("inference"))
    assert row.split() == ["inference", "4", "40.0", "10.00", "40.0%", "30.0"]
    row = next(ln for ln in stage_table([gpu, cpu], 0.1, 4, cuda=True).splitlines() if ln.startswith("inference"))
    assert row.split()[2] == "40.0"  # whichever comes first
