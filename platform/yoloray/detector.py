"""Detector: the one warmed unit that the batch job, Tune and Serve all run.

bytes / arrays -> decode (CPU threads or nvJPEG) -> letterbox -> engine -> batched NMS -> original pixels.
A bad image becomes an error entry for that image only; the rest of the batch is unaffected.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from yoloray.config import ConfigError, EngineConfig
from yoloray.engines import EngineError, build_engine
from yoloray.results import Detections
from yoloray.vision.decode import (
    ImageError,
    check_array,
    decode_cpu,
    decode_jpegs_gpu,
    probe,
    reduction_factor,
)
from yoloray.vision.letterbox import Geometry, boxes_to_original, letterbox_cpu, letterbox_gpu
from yoloray.vision.nms import batched_nms, end2end_filter

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is visible; use device: cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    return dev


class Detector:
    """Build once (engine load, convert, compile), `warmup()`, then `detect()` many times."""

    def __init__(self, config: EngineConfig | None = None, decode_threads: int | None = None, profile: bool = False):
        self.config = config or EngineConfig()
        self.device = resolve_device(self.config.device)
        if self.device.type == "cpu":
            for field, bad in (("cuda_graph", True), ("decode", "gpu"), ("precision", "fp16")):
                if getattr(self.config, field) == bad:
                    raise ConfigError(f"{field}={bad!r} needs a CUDA device, but this Detector runs on the CPU")
        self.engine = build_engine(self.config, self.device)
        self.names = self.engine.names
        self.imgsz = self.config.imgsz
        for side in self.imgsz:
            if side % self.engine.stride:
                raise ConfigError(f"imgsz {self.imgsz} must be a multiple of the model stride {self.engine.stride}")
        self.batch_size = self.config.batch_size
        self.key = self.config.key()
        self.profile = profile  # synchronize the device between stages so per-stage timings are exact
        self._pool = ThreadPoolExecutor(decode_threads or min(8, os.cpu_count() or 1), thread_name_prefix="decode")
        pin = self.device.type == "cuda"
        self._host = torch.empty((self.batch_size, *self.imgsz, 3), dtype=torch.uint8, pin_memory=pin)
        self.warm = False

    # ---------------------------------------------------------------- public
    def warmup(self) -> Detector:
        """Run the engine at the real input shape (and capture/compile) so no call pays a first-batch cost."""
        self.engine.warmup(self.batch_size, self.imgsz)
        self.warm = True
        return self

    def detect(self, images: Sequence[bytes | np.ndarray]) -> Detections:
        """One result per input, in order: boxes in original pixels, or an error for that image."""
        parts = [self._detect_batch(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return Detections.concat(parts) if parts else Detections.empty(0, self.names)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor-level path for ready batches: (B, 3, H, W) in [0, 1] on the device -> raw head output.
        Short batches are padded where the engine needs a static batch."""
        n = x.shape[0]
        static = self.engine.static_batch
        if static is not None and n < static:
            x = torch.cat([x, x.new_zeros((static - n, *x.shape[1:]))])
        return self.engine(x)[:n]

    def postprocess(self, raw: torch.Tensor, geom: Geometry, slots: np.ndarray, n_images: int) -> Detections:
        """Raw output of the images that ran (batch row j is input image slots[j]) -> Detections for all."""
        c = self.config
        if self.engine.end2end:
            idx, boxes, scores, cls = end2end_filter(raw, c.conf, c.max_det)
        else:
            idx, boxes, scores, cls = batched_nms(raw, c.conf, c.iou, c.max_det, c.agnostic_nms)
        slots_t = torch.from_numpy(slots).to(raw.device)
        image = slots_t[idx]
        if len(idx):
            boxes = boxes_to_original(boxes, image, geom)
        image, boxes, scores, cls = (t.cpu() for t in (image, boxes, scores, cls))
        dets = Detections.empty(n_images, self.names)
        counts = np.bincount(image.numpy(), minlength=n_images)
        dets.offsets[1:] = np.cumsum(counts)
        dets.boxes = boxes.numpy().astype(np.float32, copy=False)
        dets.scores = scores.float().numpy()
        dets.class_ids = cls.numpy().astype(np.int16)
        return dets

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- internals
    def _detect_batch(self, images: Sequence[bytes | np.ndarray]) -> Detections:
        t0 = time.perf_counter()
        n = len(images)
        geom = Geometry.allocate(n)
        errors: list[str | None] = [None] * n
        on_gpu: dict[int, torch.Tensor] = {}
        if self.config.decode == "gpu":
            on_gpu = self._decode_gpu(images, geom, errors)
        cpu_items = [i for i in range(n) if i not in on_gpu and errors[i] is None]
        jobs = [self._pool.submit(self._prepare_cpu, images[i], i, geom) for i in cpu_items]
        prepared = {}
        for i, job in zip(cpu_items, jobs):
            try:
                prepared[i] = job.result()
            except ImageError as e:
                errors[i] = str(e)
        ok = [i for i in range(n) if errors[i] is None]
        t1 = time.perf_counter()
        dets: Detections
        if ok:
            x = torch.empty((len(ok), 3, *self.imgsz), dtype=self.engine.dtype, device=self.device)
            cpu_rows = [j for j, i in enumerate(ok) if i in prepared]
            if cpu_rows:  # images that ran fill the batch from the front, in input order
                host = self._host.numpy()
                for j in cpu_rows:
                    host[j] = prepared[ok[j]]
                up = self._host[: len(ok)].to(self.device, non_blocking=True)
                up = up[cpu_rows] if len(cpu_rows) != len(ok) else up
                x[cpu_rows] = up.permute(0, 3, 1, 2).flip(1).to(self.engine.dtype).div_(255)
            for j, i in enumerate(ok):
                if i in on_gpu:
                    letterbox_gpu(on_gpu[i], self.imgsz, x[j])
            t2 = self._sync_time()
            raw = self.infer(x)
            t3 = self._sync_time()
            dets = self.postprocess(raw, geom, np.asarray(ok, np.int64), n)
            t4 = time.perf_counter()
            dets.timings = {"decode": t1 - t0, "preprocess": t2 - t1, "inference": t3 - t2, "nms": t4 - t3}
        else:
            dets = Detections.empty(n, self.names)
            dets.timings = {"decode": t1 - t0}
        dets.errors = errors
        for i in ok:
            dets.widths[i], dets.heights[i] = int(geom.orig_w[i]), int(geom.orig_h[i])
        return dets

    def _prepare_cpu(self, item, i: int, geom: Geometry) -> np.ndarray:
        """Decode (reduced where allowed) and letterbox one image on the CPU; runs in a worker thread."""
        if isinstance(item, np.ndarray):
            im = check_array(item, self.config.max_pixels)
            orig_hw = im.shape[:2]
        else:
            info = probe(item, self.config.max_pixels)
            orig_hw = (info.height, info.width)
            factor = reduction_factor(orig_hw, self.imgsz) if self.config.reduced_decode and info.is_jpeg else 1
            im = decode_cpu(item, info, factor)
            if factor == 1 and im.shape[:2] != orig_hw:  # EXIF says one thing, the pixels another: trust pixels
                orig_hw = im.shape[:2]
        geom.set(i, im.shape[:2], self.imgsz, orig_hw)
        return letterbox_cpu(im, self.imgsz)

    def _decode_gpu(self, images, geom: Geometry, errors: list) -> dict[int, torch.Tensor]:
        """nvJPEG for the JPEG bytes in the batch; everything else is left to the CPU path."""
        jpeg_idx, datas = [], []
        for i, item in enumerate(images):
            if isinstance(item, np.ndarray):
                continue
            try:
                info = probe(item, self.config.max_pixels)
            except ImageError as e:
                errors[i] = str(e)
                continue
            if info.is_jpeg:
                jpeg_idx.append(i)
                datas.append(item)
        out = {}
        for i, t in zip(jpeg_idx, decode_jpegs_gpu(datas, self.device) if datas else []):
            if t is not None:
                hw = tuple(t.shape[1:])
                geom.set(i, hw, self.imgsz, hw)
                out[i] = t
        return out

    def _sync_time(self) -> float:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Detector(model={c.model}, backend={c.backend}, precision={c.precision}, imgsz={c.imgsz}, "
            f"batch={c.batch_size}, device={self.device}, key={self.key})"
        )


__all__ = ["Detector", "EngineError", "ImageError", "resolve_device"]
