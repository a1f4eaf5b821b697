"""What detector actors tell the driver once (memory budget, trace table), through a Ray Queue.

The driver makes an `ActorReports` (a queue actor that takes no CPU) only when something is asked for: a
cluster with GPUs (memory budgets) or `--trace`. Actors `send` small dicts; the driver `collect`s them when
the job ends. A report that cannot be sent is logged on the actor and never fails a batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class ActorObserve:
    """What a detector actor does besides detecting; travels in the actor's constructor arguments."""

    run: str = ""  # the `run` metric label
    trace_dir: str | None = None  # one actor writes a profiler trace of a few calls here
    reports: Any = None  # a ray.util.queue.Queue (ActorReports.queue), or None
    budget_key: dict | None = None  # what the GPU memory budget is remembered under (observe/budgets.py)
    cache_dir: str | None = None  # the artifact cache it is remembered in (the profile's cache_dir)

    def for_profile(self, profile) -> ActorObserve:
        """This, with the budget key of a resolved CUDA profile (a CPU budget is never remembered)."""
        if not str(profile.device).startswith("cuda"):
            return self
        from yoloray.observe.budgets import batch_fields

        return replace(self, budget_key=batch_fields(profile), cache_dir=profile.cache_dir)


class ActorReports:
    def __init__(self):
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})

    def collect(self) -> list[dict]:
        from ray.util.queue import Empty

        out = []
        while True:
            try:
                out.append(self.queue.get_nowait())
            except Empty:
                return out

    def close(self) -> None:
        self.queue.shutdown()


def send(observe: ActorObserve | None, kind: str, **payload) -> None:
    if observe is None or observe.reports is None:
        return
    try:
        observe.reports.put_nowait({"kind": kind, **payload})
    except Exception:
        log.warning("could not send the %s report to the driver", kind, exc_info=True)
