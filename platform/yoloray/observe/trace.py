"""Where the time goes: torch profiler traces (Chrome / Perfetto JSON) of a few batches, with one range per stage.

Stages (`STAGES`): decode, letterbox, inference, nms (in the Detector) and write (the caller's output: the
batch actor's Parquet table, `yoloray detect`'s printed rows). Each is a `record_function` range in the trace
and, on CUDA, an NVTX range (for Nsight Systems). Ranges are only opened while a trace is being taken, so the
hot path pays nothing otherwise.

    yoloray detect a.jpg b.jpg --trace runs/trace       # the detect call
    yoloray infer SRC --out OUT --trace runs/trace      # the first call of ONE actor (--batches-per-call batches)

writes `DIR/trace-<host>-<pid>.json` and `DIR/stages.txt`, the per-stage table (printed too). Open the JSON in
https://ui.perfetto.dev (Open trace file; it stays in the browser) or chrome://tracing (Load). With `infer` on a
cluster, DIR is written on the node of the traced actor: use a shared file system path, or read the table
from the job's output (the driver prints it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

STAGES = ("decode", "letterbox", "inference", "nms", "write")
TRACE_CALLS = 1  # actor calls traced: one call is --batches-per-call engine batches (default 4)
CLAIM_FILE = ".claimed"
TABLE_FILE = "stages.txt"

_tracing = threading.Event()  # set while a profiler records in this process


def tracing() -> bool:
    return _tracing.is_set()


@contextlib.contextmanager
def stage(name: str, cuda: bool = False):
    """A named range in the trace (and NVTX on CUDA) while tracing; nothing otherwise."""
    if not _tracing.is_set():
        yield
        return
    import torch

    if cuda:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if cuda:
            torch.cuda.nvtx.range_pop()


class StageRanges:
    """Consecutive stage ranges without nesting blocks: `next("letterbox")` closes the open range and opens
    the next; leaving the `with` closes the last (also on an error)."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self._open = None

    def next(self, name: str) -> None:
        self.close()
        if _tracing.is_set():
            self._open = stage(name, self.cuda)
            self._open.__enter__()

    def close(self) -> None:
        if self._open is not None:
            self._open.__exit__(None, None, None)
            self._open = None

    def __enter__(self) -> StageRanges:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def claim(trace_dir: str) -> bool:
    """True for the first process to ask (the one actor that traces); creates DIR."""
    os.makedirs(trace_dir, exist_ok=True)
    try:
        fd = os.open(os.path.join(trace_dir, CLAIM_FILE), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
    os.close(fd)
    return True


class Tracer:
    """Profiles `calls` calls of this process (see `call()`), then writes the trace and the stage table."""

    def __init__(self, trace_dir: str, cuda: bool, calls: int = TRACE_CALLS):
        os.makedirs(trace_dir, exist_ok=True)
        self.dir = trace_dir
        self.cuda = cuda
        self.calls = calls
        self.done = 0
        self.started = 0
        self.table: str | None = None
        self.path: str | None = None
        self._prof = None
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        return self.table is not None

    @contextlib.contextmanager
    def call(self):
        """Wrap one call: the first starts the profiler, the `calls`-th to end stops it and writes the files."""
        with self._lock:
            take = not self.finished and self.started < self.calls
            if take:
                if self._prof is None:
                    self._start()
                self.started += 1
        try:
            yield
        finally:
            if take:
                with self._lock:
                    self.done += 1
                    if self.done == self.calls:
                        self._stop()

    def _start(self) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self._prof = profile(activities=activities, record_shapes=False, acc_events=True)
        self._prof.__enter__()
        self._t0 = time.perf_counter()
        if self.cuda:
            torch.cuda.synchronize()
        _tracing.set()

    def _stop(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        _tracing.clear()
        wall = time.perf_counter() - self._t0
        self._prof.__exit__(None, None, None)
        self.path = os.path.join(self.dir, f"trace-{socket.gethostname()}-{os.getpid()}.json")
        self._prof.export_chrome_trace(self.path)
        self.table = stage_table(self._prof.key_averages(), wall, self.done, self.cuda)
        with open(os.path.join(self.dir, TABLE_FILE), "w") as f:
            f.write(self.table + "\n")

    def close(self) -> None:
        """End early (fewer calls than asked): write what was recorded."""
        with self._lock:
            if self._prof is not None and not self.finished:
                self._stop()


def stage_table(events, wall_s: float, calls: int, cuda: bool) -> str:
    """Per stage: ranges, total and mean wall ms on the CPU side, share of the traced wall time, and the
    GPU kernel time inside the ranges on CUDA."""
    by_name: dict[str, list] = {}  # on CUDA a range is two events of one name: the CPU range and its GPU span
    for e in events:
        if e.key in STAGES:
            by_name.setdefault(e.key, []).append(e)
    head = f"{'stage':<10} {'ranges':>7} {'total ms':>10} {'mean ms':>9} {'% wall':>7}"
    head += f" {'GPU ms':>9}" if cuda else ""
    lines = [f"trace of {calls} call(s), {wall_s * 1e3:,.1f} ms wall", head]
    for name in STAGES:
        group = by_name.get(name)
        if not group:
            continue
        e = max(group, key=lambda ev: ev.cpu_time_total)  # the CPU range: its wall time, in us
        total_ms = e.cpu_time_total / 1e3
        row = f"{name:<10} {e.count:>7} {total_ms:>10.1f} {total_ms / e.count:>9.2f} {total_ms / (wall_s * 1e3):>7.1%}"
        if cuda:
            row += f" {max(getattr(ev, 'device_time_total', 0) for ev in group) / 1e3:>9.1f}"
        lines.append(row)
    return "\n".join(lines)
