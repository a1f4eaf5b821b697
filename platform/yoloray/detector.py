"""Detector: the one warmed unit that the batch job, Tune and Serve all run.

`run(FrameBatch)`: letterbox -> engine -> batched NMS -> original pixels, for frames any decoder made
(vision/decoders/: CPU threads, the GPU's JPEG decoder, PyAV or NVDEC video). `detect(images)`: the still-image
decoder the config names, then `run`. A bad image becomes an error entry for that image only; the rest of the
batch is unaffected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from yoloray.config import ConfigError, EngineConfig, Profile
from yoloray.engines import EngineError, build_engine
from yoloray.observe.trace import StageRanges
from yoloray.results import Detections
from yoloray.vision.decode import ImageError
from yoloray.vision.decoders.frames import FrameBatch
from yoloray.vision.decoders.stills import StillDecoder
from yoloray.vision.letterbox import Geometry, boxes_to_original, letterbox_gpu
from yoloray.vision.nms import batched_nms, end2end_filter
from yoloray.vision.prepare import Prepared

log = logging.getLogger(__name__)

# Hardware work queues per CUDA context (the driver's default is 8). Streams share the queues, and a kernel
# queued behind another stream's work in the same queue waits for it: with 8, the GPU JPEG decoder's kernels
# waited behind whole inference batches (decode beside inference 1,000 images/s; with 32, 4,900: benchmarks/README).
CUDA_CONNECTIONS = "32"


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

    def __init__(self, config: Profile | EngineConfig | None = None, decode_threads: int | None = None,
                 profile: bool = False):
        """`config`: the Profile to run (an EngineConfig alone runs with the default decoding and NMS); any field
        left `auto` is resolved for this machine (`yoloray.profile`), and `self.config` is what runs."""
        from yoloray.profile import resolve_here

        config = Profile(engine=config) if isinstance(config, EngineConfig) else config or Profile()
        self.config = resolve_here(config)
        self.device = resolve_device(self.config.device)
        if self.device.type == "cpu" and (reasons := self.config.cuda_only()):
            raise ConfigError(f"{reasons[0]} (this Detector runs on the CPU)")
        if self.device.type == "cuda":  # create the CUDA context while the model loads on the CPU
            if not torch.cuda.is_initialized():  # read when the context is created
                os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", CUDA_CONNECTIONS)
            threading.Thread(target=torch.cuda.init, name="cuda-init", daemon=True).start()
        self.engine = build_engine(self.config, self.device)
        self.names = self.engine.names
        self.imgsz = self.config.imgsz
        for side in self.imgsz:
            if side % self.engine.stride:
                raise ConfigError(f"imgsz {self.imgsz} must be a multiple of the model stride {self.engine.stride}")
        self.batch_size = self.config.batch_size
        self.key = self.config.output_key()
        self.profile = profile  # synchronize the device between stages so per-stage timings are exact
        threads = (decode_threads or self.config.decode_threads or int(os.environ.get("YOLORAY_DECODE_THREADS", 0))
                   or min(32, os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self._local = threading.local()
        self._engine_lock = threading.Lock()
        try:  # a GPU decoder that cannot run here fails the build, not the first batch
            self.decoder = StillDecoder(self.config, self.imgsz, self.device, self._pool)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.warm = False

    # ---------------------------------------------------------------- public
    def warmup(self) -> Detector:
        """Run the engine at the real input shape (and capture/compile) so no call pays a first-batch cost."""
        self.engine.warmup(self.batch_size, self.imgsz)
        self.decoder.warmup()
        self.warm = True
        return self

    def detect(self, images: Sequence[bytes | np.ndarray | Prepared]) -> Detections:
        """One result per input, in order: boxes in original pixels, or an error for that image.
        Inputs: encoded bytes, decoded BGR arrays, or images already letterboxed to this imgsz (Prepared)."""
        parts = [self._detect_batch(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return Detections.concat(parts) if parts else Detections.empty(0, self.names)

    def run(self, frames: FrameBatch) -> Detections:
        """One result per item of a decoded batch (at most `batch_size` frames), in item order: letterbox ->
        engine -> NMS -> boxes in original pixels; items the decoder could not decode keep their error."""
        with self._stream(), StageRanges(self.device.type == "cuda") as ranges:  # profiler ranges (--trace)
            return self._run(frames, ranges)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor-level path for ready batches: (B, 3, H, W) in [0, 1] on the device -> raw head output.
        Short batches are padded to a multiple of the engine's static batch (its micro_batch) where it has one."""
        n = x.shape[0]
        static = self.engine.static_batch
        if static is not None and n % static:
            x = torch.cat([x, x.new_zeros((-n % static, *x.shape[1:]))])
        with self._engine_lock:
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
        if len(idx) and bool((slots[1:] < slots[:-1]).any()):  # rows not in input order: regroup by image
            order = torch.sort(image, stable=True).indices
            image, boxes, scores, cls = image[order], boxes[order], scores[order], cls[order]
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

    def stream(self):
        """Context manager: the calling thread's CUDA stream (a no-op on the CPU). Decoders that queue GPU work
        for `run` (NVDEC) run inside it, so their frames are ready in the stream's order."""
        return self._stream()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- internals
    def _detect_batch(self, images: Sequence[bytes | np.ndarray | Prepared]) -> Detections:
        with self._stream(), StageRanges(self.device.type == "cuda") as ranges:  # profiler ranges (--trace)
            ranges.next("decode")
            t0 = time.perf_counter()
            frames = self.decoder.decode(images)
            decoded = time.perf_counter() - t0
            dets = self._run(frames, ranges)
            dets.timings = {"decode": decoded, **dets.timings}
            return dets

    def _run(self, frames: FrameBatch, ranges: StageRanges) -> Detections:
        n = len(frames)
        geom, slots = frames.geom, frames.slots
        t1 = time.perf_counter()
        if len(slots) == 0:
            dets = Detections.empty(n, self.names)
            dets.timings = {}
        else:
            ranges.next("letterbox")
            x = self._model_input(frames)
            t2 = self._sync_time()
            ranges.next("inference")
            raw = self.infer(x)
            t3 = self._sync_time()
            ranges.next("nms")
            dets = self.postprocess(raw, geom, slots, n)
            t4 = time.perf_counter()
            dets.timings = {"letterbox": t2 - t1, "inference": t3 - t2, "nms": t4 - t3}
        dets.errors = list(frames.errors)
        dets.widths[slots] = geom.orig_w[slots].astype(np.int32)
        dets.heights[slots] = geom.orig_h[slots].astype(np.int32)
        return dets

    def _model_input(self, frames: FrameBatch) -> torch.Tensor:
        """The batch's frames as one model input (k, 3, H, W): device groups letterboxed in order (a float group
        is model input already: NVDEC's fused path; alone, it is used as it is), then the host frames."""
        groups = frames.device_groups
        if len(groups) == 1 and not frames.host_frames and groups[0].dtype == self.engine.dtype:
            return groups[0]
        x = torch.empty((len(frames.slots), 3, *self.imgsz), dtype=self.engine.dtype, device=self.device)
        start = 0
        for group in groups:  # decoders bound a group's size (decoders/stills.py)
            stop = start + int(group.shape[0])
            if group.is_floating_point():
                x[start:stop] = group
            else:
                letterbox_gpu(group, self.imgsz, x[start:stop])
            start = stop
        if frames.host_frames:
            self._upload(frames.host_frames, x[start:])
        return x

    def _upload(self, arrays: list[np.ndarray], out: torch.Tensor) -> None:
        """Letterboxed BGR uint8 HWC arrays -> `out` (k, 3, H, W) RGB in [0, 1]: one uint8 copy to the device
        from pinned memory, then layout, channel order and scale on the device."""
        k = len(arrays)
        host = torch.empty((k, *self.imgsz, 3), dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        np.stack(arrays, out=host.numpy())
        dev = host.to(self.device, non_blocking=True)
        out.copy_(dev.permute(0, 3, 1, 2).flip(1)).div_(255)

    def _stream(self):
        """Each calling thread gets its own CUDA stream, so concurrent calls (an actor with
        max_concurrent_calls_per_actor > 1) overlap decode and copies with another call's inference."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(stream)

    def _sync_time(self) -> float:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Detector(model={c.model}, backend={c.backend}, precision={c.precision}, imgsz={c.imgsz}, "
            f"batch={c.batch_size}, device={self.device}, decode={c.decode}, gpu_decoder={c.gpu_decoder}, key={self.key})"
        )


__all__ = ["Detector", "EngineError", "ImageError", "resolve_device"]
