"""Everything a batch detector actor observes about itself, behind three calls the Predictor makes:

    obs = ActorObserver(observe, engine_key, device)   # before the Detector is built (memory peaks reset)
    with obs.call() as call:                           # one actor call: queue depth, latency, trace
        ...
        call.finish(out_table, detector_timings)       # rows, errors by kind, stage seconds, GPU memory

The first call's end measures the memory budget (warmup + the first real batch, observe/memory.py), exports
it as a gauge, remembers it in the artifact cache for the next `auto` layout (observe/budgets.py) and sends it
to the driver, with the actor's start-up phases (`started`); with `trace_dir` set one actor of the job traces
its first calls (observe/trace.py) and sends the stage table.
"""

from __future__ import annotations

import contextlib
import time

import pyarrow as pa
import pyarrow.compute as pc

from yoloray.observe import memory
from yoloray.observe.budgets import remember
from yoloray.observe.errors import error_kind
from yoloray.observe.metrics import BatchMetrics
from yoloray.observe.reports import ActorObserve, send
from yoloray.observe.trace import Tracer, claim, stage


class _Call:
    def __init__(self, owner: ActorObserver):
        self.owner = owner
        self.t0 = time.perf_counter()
        self.write_s = 0.0

    @contextlib.contextmanager
    def writing(self):
        """The 'write' stage: building the output table."""
        t = time.perf_counter()
        with stage("write", self.owner.cuda):
            yield
        self.write_s += time.perf_counter() - t

    def finish(self, out: pa.Table, timings: dict[str, float]) -> None:
        errors = out.column("error").drop_null()
        kinds: dict[str, int] = {}
        if len(errors):
            for message, n in zip(*[c.to_pylist() for c in pc.value_counts(errors).flatten()]):
                kinds[error_kind(message)] = kinds.get(error_kind(message), 0) + n
        self.owner.metrics.record_call(out.num_rows, kinds, time.perf_counter() - self.t0,
                                       {**timings, "write": self.write_s})


class ActorObserver:
    def __init__(self, observe: ActorObserve | None, engine_key: str, device):
        self.observe = observe or ActorObserve()
        self.device = device
        self.cuda = getattr(device, "type", "cpu") == "cuda"
        self.metrics = BatchMetrics(self.observe.run, engine_key)
        self.budget: memory.MemoryBudget | None = None
        self.startup: dict | None = None  # sent with the first call's end (`started`)
        self.tracer = None
        if self.observe.trace_dir and claim(self.observe.trace_dir):
            self.tracer = Tracer(self.observe.trace_dir, self.cuda)
        memory.begin(device)

    def started(self, began: float, phases: dict[str, float]) -> None:
        """The constructor's start (wall clock, so the driver can place it in the job) and its phases in seconds;
        reported to the driver with the end of the first call."""
        self.startup = {"began": began, "phases": {k: round(v, 3) for k, v in phases.items()}}

    @contextlib.contextmanager
    def call(self):
        self.metrics.call_started()
        tracing = self.tracer.call() if self.tracer is not None else contextlib.nullcontext()
        try:
            with tracing:
                yield _Call(self)
        finally:
            self.metrics.call_finished()
            self._after_call()

    def _after_call(self) -> None:
        if self.budget is None:
            self.budget = memory.measure(self.device)
            send(self.observe, "memory", **self.budget.to_dict())
            remember(self.budget, self.observe.budget_key, self.observe.cache_dir)  # for the next auto layout
            if self.startup is not None:
                send(self.observe, "startup", **self.startup, first_call_done=time.time())
        self.metrics.gpu_memory(self.device, self.budget.peak_reserved)
        if self.tracer is not None and self.tracer.finished:
            send(self.observe, "trace", table=self.tracer.table, path=self.tracer.path)
            self.tracer = None

    def close(self) -> None:
        """The actor ends before its trace has all its calls: write (and send) what it has."""
        if self.tracer is not None:
            self.tracer.close()
            self._after_call()
