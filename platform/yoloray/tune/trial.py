"""One measured trial of `yoloray tune`: build and warm a Detector, check its fidelity, time it in windows.

Measurement follows Triton's perf_analyzer: full batches of encoded images go through `Detector.detect` (what
ships: decode, letterbox, engine, NMS) back to back for a window; a window gives images/s and the p50/p99
batch latency. Windows repeat until the last three agree within `stability` (10%) on images/s and p99, or a cap
(`max_windows`, `max_trial_s`) is reached. Every window is reported to Tune (`ray.tune.report`).

Video (an `--archive` of video files, tune/archive.py): the inputs are frames decoded from the user's videos
(PyAV, stored as PNG); the trial decodes them into BGR arrays once, before it builds anything, and times
`detect` on the arrays (letterbox, engine, NMS). The video decode is not in the figure: NVDEC decodes a
segment inside a batch actor (PyNvVideoCodec sessions per calling thread), which one trial process cannot time
the way a job runs it, so the layout level's real jobs over the user's video files measure it. The trial's
`decode` is the one the batch job uses (NVDEC where it runs, else PyAV), so the winner's profile decodes so.

Fidelity: the match rate of the trial's detections against an fp32 reference Detector (torch backend, TF32
off, full-size decode) on the first `fidelity_images` inputs (`yoloray.fidelity.compare`, IoU 0.9, score
tolerance 0.05). The reference is computed once per model/imgsz/device and cached under RUN/reference/.

A trial never raises for a configuration that cannot run: a failed build (ConfigError, EngineError or any
build-time exception) is `build_failed`, an out-of-memory is `oom`, a broken limit is
`constraint_violated: ...`. Each ends the trial with one report carrying `status`, `reason` and
`images_per_s = 0` (the figure measured so far stays in `measured_images_per_s`), so the sweep goes on.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yoloray.config import ConfigError, Profile
from yoloray.profile import EXACT_PATH
from yoloray.tune.settings import TuneConfig
from yoloray.tune.space import KNOBS, LAYOUT_KNOBS

FIDELITY_IOU = 0.9
FIDELITY_SCORE_TOL = 0.05
MIN_BATCHES_PER_WINDOW = 3
STABLE_WINDOWS = 3


def engine_fields(point: dict[str, Any], settings: TuneConfig) -> dict[str, Any]:
    """The full Profile mapping of a point: knobs, the space's fixed fields, model and device."""
    fixed = {k: v for k, v in settings.space.items() if k not in KNOBS and k not in LAYOUT_KNOBS}
    fields = {**fixed, **point, "model": settings.model, "device": "cuda" if settings.gpus else "cpu"}
    if fields.get("backend") not in (None, "auto", "onnxruntime"):  # laid over a resolved profile (report.py), a
        fields.setdefault("provider", None)  # torch point must not keep the ONNX Runtime provider auto chose
    return fields


def calibration_folder(images: list[bytes]) -> Path:
    """The trial's frames as files (int8 calibration reads a folder), once per node and set of frames."""
    from yoloray.engines.quantize import images_digest

    digest = images_digest(images)
    folder = Path(tempfile.gettempdir()) / "yoloray-calibration" / digest
    if not folder.is_dir():
        work = folder.with_name(f".{digest}.{os.getpid()}")
        work.mkdir(parents=True, exist_ok=True)
        for i, data in enumerate(images):
            (work / f"{i:04d}.jpg").write_bytes(data)  # decoded by content, whatever the format
        try:
            work.rename(folder)
        except OSError:  # another trial on this node finished first: the same files
            shutil.rmtree(work, ignore_errors=True)
    return folder


def run_trial(config: dict, settings: dict, images: list[bytes], weights: bytes | None = None) -> None:
    """The Tune function trainable (wrapped with tune.with_parameters / with_resources by the sweep).
    `weights`: the model file's bytes, used on a node where the driver's path does not exist."""
    from ray import tune

    cfg = TuneConfig.model_validate(settings)
    if weights is not None and not Path(cfg.model).is_file():
        digest = hashlib.sha256(weights).hexdigest()[:16]
        local = Path(tempfile.gettempdir()) / "yoloray-weights" / digest / Path(cfg.model).name
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(weights)
            os.replace(tmp, local)
        cfg = cfg.model_copy(update={"model": str(local)})
    torch.set_num_threads(cfg.cpus_per_trial)
    measure(config["engine"], cfg, images, tune.report)


@contextlib.contextmanager
def exact_math():
    """fp32 without TF32 shortcuts, for the reference detections."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def reference_detections(cfg: Profile, images: list[bytes], cache_dir: Path | None):
    """Detections of the fp32 reference path for `cfg`'s model and input size, cached as a pickle."""
    from yoloray.detector import Detector

    keep = ("model", "imgsz", "device", "conf", "iou", "max_det", "agnostic_nms", "max_pixels")
    ref_cfg = Profile.parse({**{k: getattr(cfg, k) for k in keep}, **EXACT_PATH, "backend": "torch",
                             "batch_size": max(1, len(images))}, source="reference")
    digest = hashlib.sha256(ref_cfg.output_key().encode() + ref_cfg.device.encode())
    for im in images:
        digest.update(hashlib.sha256(im).digest())
    path = cache_dir / f"{digest.hexdigest()[:24]}.pkl" if cache_dir else None
    if path is not None and path.is_file():
        with contextlib.suppress(Exception), path.open("rb") as f:
            return pickle.load(f)
    with exact_math():
        detector = Detector(ref_cfg, decode_threads=1).warmup()
        try:
            dets = detector.detect(images)
        finally:
            detector.close()
    if path is not None:
        with contextlib.suppress(OSError):  # a node that cannot write RUN/ simply does not cache
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(pickle.dumps(dets))
            os.replace(tmp, path)
    return dets


def make_batches(images: list[bytes], batch_size: int, count: int = 4) -> list[list[bytes]]:
    """`count` full batches cycling through the input set (each starting where the previous one ended)."""
    n = len(images)
    return [[images[(b * batch_size + k) % n] for k in range(batch_size)] for b in range(count)]


def run_window(detector, batches: list[list[bytes]], window_s: float) -> dict[str, float]:
    """Full batches back to back for `window_s` (and at least 3 batches): throughput and latency figures."""
    latencies, images, i = [], 0, 0
    start = time.perf_counter()
    while True:
        batch = batches[i % len(batches)]
        i += 1
        t = time.perf_counter()
        detector.detect(batch)  # returns host arrays: the device work is done
        end = time.perf_counter()
        latencies.append(end - t)
        images += len(batch)
        if end - start >= window_s and len(latencies) >= MIN_BATCHES_PER_WINDOW:
            break
    ms = np.asarray(latencies) * 1000.0
    return {"measured_images_per_s": images / (end - start), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "per_image_ms": float(ms.mean() / len(batches[0])),
            "batches": len(latencies)}


def model_throughput(detector, seconds: float) -> float:
    """Images/s of the engine alone (`Detector.infer` on a ready device tensor), for comparison."""
    x = torch.rand((detector.batch_size, 3, *detector.imgsz), device=detector.device).to(detector.engine.dtype)
    sync = torch.cuda.synchronize if detector.device.type == "cuda" else (lambda *a: None)
    sync()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        detector.infer(x)
        sync()
        n += 1
    return n * detector.batch_size / (time.perf_counter() - start)


def is_stable(history: list[dict], tolerance: float) -> bool:
    if len(history) < STABLE_WINDOWS:
        return False
    for key in ("measured_images_per_s", "p99_ms"):
        vals = np.asarray([h[key] for h in history[-STABLE_WINDOWS:]])
        if np.any(np.abs(vals - vals.mean()) > tolerance * vals.mean()):
            return False
    return True


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def remember_budget(detector) -> None:
    """Store the trial Detector's GPU memory budget (peaks since before its build) for `yoloray serve`'s
    `num_gpus: auto` and the tune summary (observe/budgets.py); nothing on the CPU."""
    from yoloray.observe import budgets, memory

    budget = memory.measure(detector.device)
    if budget.measured:
        config = detector.config
        budgets.remember(budget, budgets.detector_fields(config, config.batch_size), config.cache_dir)


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def measure(point: dict, settings: TuneConfig, images: list[bytes], report: Callable[[dict], Any]) -> dict:
    """Measure one point; every result goes to `report`; returns the last one."""
    from yoloray.detector import Detector
    from yoloray.engines import EngineError
    from yoloray.fidelity import compare

    base: dict[str, Any] = {"status": "ok", "reason": "", "window": 0, "images_per_s": 0.0,
                            "measured_images_per_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "per_image_ms": 0.0,
                            "batches": 0, "gpu_mem_gib": 0.0, "fidelity": float("nan"),
                            "model_images_per_s": 0.0, "stable": False, "engine_key": ""}

    def end(status: str, reason: str, **figures) -> dict:
        metrics = {**base, **figures, "status": status, "reason": reason[:500], "images_per_s": 0.0}
        report(metrics)
        return metrics

    detector = None
    if settings.video:  # PNG frames of the user's videos -> the decoded frames the trial times
        from yoloray.tune.archive import decoded

        images, encoded = decoded(images), images
    else:
        encoded = images
    fid_images = images[: settings.fidelity_images]
    try:
        try:
            cfg = Profile.parse(engine_fields(point, settings), source="trial")
            if cfg.precision == "int8" and cfg.calibration is None:  # calibrate on the sweep's own frames
                cfg = cfg.replace(calibration=str(calibration_folder(encoded)))
            base["engine_key"] = cfg.output_key()
            reference = reference_detections(cfg, fid_images, Path(settings.out) / "reference")
            if cfg.device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            detector = Detector(cfg, decode_threads=settings.cpus_per_trial).warmup()
        except (ConfigError, EngineError) as e:
            return end("build_failed", str(e).removeprefix("trial: ").removeprefix("config: "))
        except Exception as e:
            if _is_oom(e):
                raise
            return end("build_failed", f"{type(e).__name__}: {e}")
        fid = compare(reference, detector.detect(fid_images), iou=FIDELITY_IOU, score_tol=FIDELITY_SCORE_TOL).rate
        base["fidelity"] = fid = float(fid)
        if settings.min_fidelity is not None and fid < settings.min_fidelity:
            return end("constraint_violated: fidelity", f"fidelity {fid:.3f} < --min-fidelity {settings.min_fidelity}")
        batches = make_batches(images, detector.batch_size)
        history: list[dict] = []
        start = time.perf_counter()
        for window in range(1, settings.max_windows + 1):
            stats = run_window(detector, batches, settings.window_s)
            history.append(stats)
            metrics = {**base, **stats, "window": window, "images_per_s": stats["measured_images_per_s"],
                       "gpu_mem_gib": _peak_gib(detector.device), "stable": is_stable(history, settings.stability)}
            if settings.max_gpu_mem_gib is not None and metrics["gpu_mem_gib"] > settings.max_gpu_mem_gib:
                return end("constraint_violated: gpu memory", f"peak GPU memory {metrics['gpu_mem_gib']:.2f} GiB > "
                           f"--max-gpu-mem-gib {settings.max_gpu_mem_gib}", **metrics)
            final = metrics["stable"] or window == settings.max_windows or (
                time.perf_counter() - start >= settings.max_trial_s)
            if final:
                metrics["model_images_per_s"] = model_throughput(detector, min(settings.window_s, 1.0))
                remember_budget(detector)
                if settings.max_p99_ms is not None and metrics["p99_ms"] > settings.max_p99_ms:
                    return end("constraint_violated: p99 latency", f"p99 batch latency {metrics['p99_ms']:.1f} ms > "
                               f"--max-p99-ms {settings.max_p99_ms}", **metrics)
            report(metrics)
            if final:
                return metrics
        return metrics  # not reached: the last window is final
    except Exception as e:
        if not _is_oom(e):
            raise
        return end("oom", str(e).splitlines()[0] if str(e) else type(e).__name__)
    finally:
        if detector is not None:
            detector.close()
        del detector
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
