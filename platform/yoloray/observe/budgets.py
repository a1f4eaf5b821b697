"""Measured GPU memory budgets, remembered in the artifact cache, and the `auto` layout's packing from them.

Whoever measures a budget on a GPU (observe/memory.py) remembers it: a batch actor after its first call, a Serve
replica after its warmup, a tuning trial after its windows. It is stored in the artifact cache (engines/cache.py:
`cache_dir`, `$YOLORAY_CACHE` or `~/.cache/yoloray`; a folder or URI the whole cluster can share) under a key of

    role      "batch" (a batch actor: its decode, concurrent calls and batches per call count) or "detector"
              (one Detector fed batches of at most `max_batch` images: a Serve replica, a tuning trial)
    build     Profile.build_key() of the resolved profile (model weights, backend, precision, shape, batch, graphs)
    decode    decoder placement and JPEG decoder (nvJPEG's buffers are GPU memory)
    GPU       the GPU model as Ray names it (`accelerator_type`: 'H200', 'A100', 'L4', ...)
    versions  torch, ultralytics, onnx, onnxruntime (engines/cache.py `environment()`)

A later measurement of the same key replaces the stored one only when it is larger (the packing must fit the
worst actor seen). Nothing is stored from the CPU: a CPU budget is "not measured".

`resolve()` (profile.py) calls `pack`: with `actors_per_gpu: auto` on CUDA and a budget known for the resolved
profile on this GPU model, actors per GPU are capped at `memory.per_gpu(budget, GPU memory)` (the default 3
becomes 2 for an 8 GiB detector on a 24 GiB GPU); no budget known, the default stands and the job's first
actor measures and stores one, so the next run packs from it. An explicit `actors_per_gpu` is never changed: a
budget is an estimate (the CUDA context is approximate, torch reserves more than it needs) and the user may
know better, so one that does not fit only gets a warning (`Packing.lines`), naming the value that fits.
`yoloray serve` gives replicas `num_gpus: auto` the same way (`replica_gpus`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, fields

from yoloray.observe.memory import CUDA_CONTEXT_BYTES, GIB, MemoryBudget, per_gpu

log = logging.getLogger(__name__)

KIND = "memory-budget"
_RAY_GPU_NAME = re.compile(r"\w+\s+((?:[A-Z]+\s+)*[A-Z0-9]*\d[A-Z0-9]*)")  # Ray's NVIDIA_GPU_NAME_PATTERN


def gpu_model(name: str | None) -> str:
    """The GPU model as Ray's `accelerator_type` names it, from a CUDA device name or from that name itself:
    'NVIDIA H200' and 'H200' -> 'H200', 'NVIDIA A100-SXM4-80GB' -> 'A100', 'NVIDIA GeForce RTX 4090' ->
    'GeForce-RTX-4090'."""
    if not name:
        return ""
    match = _RAY_GPU_NAME.match(name)
    result = match.group(1).replace(" ", "-") if match else None
    if result and len(result) > 1:
        return result
    return re.sub(r"^NVIDIA\s+", "", name).strip().replace(" ", "-")


def _decode_fields(profile) -> dict:
    return {"decode": profile.decode, "gpu_decoder": profile.gpu_decoder, "reduced_decode": profile.reduced_decode}


def batch_fields(profile) -> dict:
    """What sets a batch actor's GPU memory, for a resolved profile."""
    return {"role": "batch", "build": profile.build_key(), **_decode_fields(profile),
            "hybrid_cpu_share": profile.hybrid_cpu_share if profile.decode == "hybrid" else None,
            "calls_per_actor": profile.calls_per_actor, "batches_per_call": profile.batches_per_call}


def detector_fields(profile, max_batch: int) -> dict:
    """What sets the GPU memory of one Detector fed batches of at most `max_batch` images (a Serve replica,
    a tuning trial), for a resolved profile."""
    return {"role": "detector", "build": profile.build_key(), **_decode_fields(profile), "max_batch": max_batch}


def _key(what: dict, gpu: str) -> str:
    from yoloray.engines.cache import cache_key, environment

    return cache_key(KIND, what, {**environment(), "gpu": gpu_model(gpu)})


def _cache(cache_dir: str | None):
    from yoloray.engines.cache import ArtifactCache

    return ArtifactCache(cache_dir)


def remember(budget: MemoryBudget, what: dict | None, cache_dir: str | None = None) -> bool:
    """Store a measured budget under `what` (batch_fields / detector_fields) and the GPU it was measured on,
    unless a larger one is stored already. True when stored. Never raises: a budget is worth a log line,
    not a failed job."""
    if not what or not budget.measured or not budget.gpu_name:
        return False
    try:
        cache = _cache(cache_dir)
        key = _key(what, budget.gpu_name)
        old = _read(cache, key)
        if old is not None and old.peak_reserved >= budget.peak_reserved:
            return False
        record = {"budget": budget.to_dict(), "what": what, "gpu": gpu_model(budget.gpu_name), "at": time.time()}
        cache.put_blob(KIND, key, json.dumps(record, sort_keys=True).encode())
        return True
    except Exception:
        log.warning("could not store the GPU memory budget in the artifact cache", exc_info=True)
        return False


def recall(what: dict, gpu: str | None, cache_dir: str | None = None) -> MemoryBudget | None:
    """The budget stored for `what` on this GPU model (Ray's accelerator_type or a CUDA device name), or None."""
    if not gpu:
        return None
    try:
        return _read(_cache(cache_dir), _key(what, gpu))
    except Exception:
        log.warning("could not read GPU memory budgets from the artifact cache", exc_info=True)
        return None


def _read(cache, key: str) -> MemoryBudget | None:
    data = cache.blob(KIND, key)
    if data is None:
        return None
    known = {f.name for f in fields(MemoryBudget)}
    budget = MemoryBudget(**{k: v for k, v in json.loads(data)["budget"].items() if k in known})
    return budget if budget.measured else None


# ------------------------------------------------------------------------------------------------ packing
@dataclass
class Packing:
    """A profile's `actors_per_gpu` against the budget known for it on this GPU model."""

    actors_per_gpu: int
    auto: bool  # actors_per_gpu was chosen by `auto`
    gpu: str
    gpu_bytes: int | None = None
    budget: MemoryBudget | None = None

    @property
    def fit(self) -> int | None:
        """How many actors of the known budget fit one GPU (None: no budget, or the GPU memory is unknown)."""
        return per_gpu(self.budget, self.gpu_bytes) if self.budget and self.gpu_bytes else None

    def lines(self) -> list[str]:
        """The profile summary's `memory` line, and a warning when the actors do not fit."""
        if self.budget is None:
            return [f"  memory    no GPU memory budget stored for this profile on {self.gpu or 'this GPU'} yet: "
                    f"actors_per_gpu={self.actors_per_gpu} stands; the first actor measures one (reported at the end, "
                    "remembered in the artifact cache for the next run)"]
        b, fit = self.budget, self.fit
        text = (f"  memory    {b.peak_reserved / GIB:.2f} GiB per actor measured on {self.gpu} "
                f"(+ ~{CUDA_CONTEXT_BYTES / GIB:.1f} GiB CUDA context)")
        if fit is None:
            return [text + "; this GPU's memory is unknown here, so nothing was packed from it"]
        text += f": {fit} fit on a {self.gpu_bytes / GIB:.0f} GiB GPU"
        if self.auto:
            return [text + f"; auto packs at most {fit} actors per GPU"]
        if self.actors_per_gpu <= fit:
            return [text]
        return [text, f"  warning   actors_per_gpu={self.actors_per_gpu} (given) x the measured budget does not fit "
                      f"this GPU's memory: actors may run out of memory; set actors_per_gpu: {fit} (or auto)"]


def packing(profile, hardware, auto: bool, cache_dir: str | None = None) -> Packing | None:
    """The packing of a resolved CUDA profile on `hardware` (profile.Hardware); None on the CPU."""
    if not hardware.cuda or not str(profile.device).startswith("cuda"):
        return None
    budget = recall(batch_fields(profile), hardware.gpu_name, cache_dir or profile.cache_dir)
    gpu_bytes = int(hardware.gpu_mem_gib * GIB) if hardware.gpu_mem_gib else (budget.gpu_total if budget else None)
    return Packing(profile.actors_per_gpu, auto, gpu_model(hardware.gpu_name), gpu_bytes, budget)


def pack(profile, hardware, auto: bool):
    """`profile` (resolved) with `actors_per_gpu` capped at what the stored budget fits, when it was `auto`."""
    p = packing(profile, hardware, auto) if auto else None
    if p is None or p.fit is None or p.fit >= profile.actors_per_gpu:
        return profile
    log.info("actors_per_gpu %d -> %d: %.2f GiB per actor measured on %s", profile.actors_per_gpu, p.fit,
             p.budget.peak_reserved / GIB, p.gpu)
    return profile.replace(actors_per_gpu=p.fit)


def budgets_of(reports: list[dict]) -> list[MemoryBudget]:
    """The budgets in the actors' reports to the driver (observe/reports.py)."""
    known = {f.name for f in fields(MemoryBudget)}
    return [MemoryBudget(**{k: v for k, v in r.items() if k in known}) for r in reports if r.get("kind") == "memory"]


def after_job(budgets: list[MemoryBudget], actors_per_gpu: int) -> str | None:
    """A warning when the actors a job ran per GPU do not fit the budget its actors measured (the job ran with
    the default because none was stored; the next run with `auto` packs from the stored one)."""
    measured = [b for b in budgets if b.measured and b.gpu_total]
    if not measured:
        return None
    worst = max(measured, key=lambda b: b.peak_reserved)
    fit = per_gpu(worst, worst.gpu_total)
    if actors_per_gpu <= fit:
        return None
    return (f"warning       {actors_per_gpu} actors per GPU x {worst.peak_reserved / GIB:.2f} GiB (+ CUDA context) "
            f"do not fit a {worst.gpu_total / GIB:.0f} GiB GPU with headroom: set actors_per_gpu: {fit} "
            "(a rerun with actors_per_gpu auto packs from the budget this job stored)")


def replica_gpus(profile, max_batch: int, hardware, cache_dir: str | None = None) -> tuple[float, str]:
    """`num_gpus` of a Serve replica whose config says `auto`: 1 / the replicas the stored budget fits on one
    GPU, or 1 (one replica per GPU) when none is stored yet; with the reason, for `yoloray serve` to print."""
    budget = recall(detector_fields(profile, max_batch), hardware.gpu_name, cache_dir or profile.cache_dir)
    gpu_bytes = int(hardware.gpu_mem_gib * GIB) if hardware.gpu_mem_gib else (budget.gpu_total if budget else None)
    if budget is None or not gpu_bytes:
        return 1.0, (f"num_gpus auto: 1 (no GPU memory budget stored for this profile on "
                     f"{gpu_model(hardware.gpu_name) or 'this GPU'} yet; the replica measures one at warmup, "
                     "a later deploy packs from it)")
    fit = per_gpu(budget, gpu_bytes)
    return math.floor(1e4 / fit) / 1e4, (f"num_gpus auto: 1/{fit} ({budget.peak_reserved / GIB:.2f} GiB per replica measured on "
                       f"{gpu_model(hardware.gpu_name)}: {fit} fit on a {gpu_bytes / GIB:.0f} GiB GPU)")


def winner_lines(profile, hardware) -> list[str]:
    """`yoloray tune`'s lines on its winner's GPU memory: per batch actor (its layout runs) and per replica
    (its engine trial, batches of batch_size: what the serve config it writes runs)."""
    lines = []
    for what, role in ((batch_fields(profile), "batch actor"),
                       (detector_fields(profile, profile.batch_size), "serve replica")):
        budget = recall(what, hardware.gpu_name, profile.cache_dir)
        if budget is None:
            lines.append(f"GPU memory per {role}: not measured for the winner on {gpu_model(hardware.gpu_name)}")
            continue
        gpu_bytes = int(hardware.gpu_mem_gib * GIB) if hardware.gpu_mem_gib else budget.gpu_total
        lines.append(f"GPU memory per {role}: peak {budget.peak_reserved / GIB:.2f} GiB reserved "
                     f"(+ ~{CUDA_CONTEXT_BYTES / GIB:.1f} GiB CUDA context); {per_gpu(budget, gpu_bytes)} fit on a "
                     f"{gpu_bytes / GIB:.0f} GiB GPU")
    return lines
