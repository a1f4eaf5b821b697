"""The driver's side of observing a batch job (`yoloray infer`): the live progress line, Ray's console noise
quieted, the actors' reports (memory budget, start-up phases, trace table) collected and printed after the
summary.

    with JobObserver(units, source_options, run="nightly", trace_dir=None, verbose=False) as obs:
        summary = run_job(..., ActorOptions(..., observe=obs.actor_observe), progress=obs.progress)
    print(summary.text()); print(obs.report())
"""

from __future__ import annotations

import os
import time

from yoloray.data.inputs import SourceOptions
from yoloray.observe.job_progress import JobProgress
from yoloray.observe.memory import MemoryBudget, summarize
from yoloray.observe.quiet import quiet_ray_data
from yoloray.observe.reports import ActorObserve, ActorReports


def run_label(out: str) -> str:
    """The default `run` label: the output folder's name (a rerun that resumes the job keeps it)."""
    return os.path.basename(out.rstrip("/")) or "run"


class JobObserver:
    def __init__(self, units: list[dict], source_options: SourceOptions | None, run: str,
                 trace_dir: str | None = None, verbose: bool = False, **line_options):
        import ray

        quiet_ray_data(verbose)
        self.trace_dir = os.path.abspath(trace_dir) if trace_dir and "://" not in trace_dir else trace_dir
        self.gpus = ray.cluster_resources().get("GPU", 0)
        self.reports = ActorReports() if (self.gpus or trace_dir) else None
        self.actor_observe = ActorObserve(run=run, trace_dir=self.trace_dir,
                                          reports=self.reports.queue if self.reports else None)
        self.progress = JobProgress(units, source_options, **line_options)
        self.received: list[dict] = []

    def __enter__(self) -> JobObserver:
        self.began = time.time()
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)
        if self.reports is not None:
            try:
                self.received = self.reports.collect()
            finally:
                self.reports.close()

    def report(self) -> str:
        """The memory budget line, and the trace's stage table when one was taken."""
        budgets = [MemoryBudget(**{k: v for k, v in r.items() if k != "kind"})
                   for r in self.received if r["kind"] == "memory"]
        if not budgets and not self.gpus:
            budgets = [MemoryBudget("cpu")]
        lines = [summarize(budgets)] if budgets else []
        startups = [r for r in self.received if r["kind"] == "startup"]
        if startups:
            lines.append(startup_line(startups, self.began))
        traces = [r for r in self.received if r["kind"] == "trace"]
        for t in traces:
            lines += [f"trace         {t['path']} (open in https://ui.perfetto.dev or chrome://tracing)", t["table"]]
        if self.trace_dir and not traces:
            lines.append(f"trace         none written: no actor of this run took a batch, or {self.trace_dir} "
                         "was already claimed by an earlier trace (use an empty folder)")
        return "\n".join(lines)


def startup_line(reports: list[dict], job_began: float) -> str:
    """The slowest actor's start-up, placed in the job's time: until its constructor ran (scheduling, process
    start, imports), each constructor phase, and when its first call ended."""
    slowest = max(reports, key=lambda r: r["began"] + sum(r["phases"].values()))
    before = max(0.0, slowest["began"] - job_began)
    ready = before + sum(slowest["phases"].values())
    phases = ", ".join(f"{name} {s:.1f} s" for name, s in slowest["phases"].items() if s >= 0.05)
    first = slowest["first_call_done"] - job_began
    many = f" (slowest of {len(reports)})" if len(reports) > 1 else ""
    return (f"actor start   ready {ready:.1f} s after the job began{many}: {before:.1f} s until its constructor ran "
            f"(scheduling, process start, imports), {phases}; its first call ended at {first:.1f} s")
