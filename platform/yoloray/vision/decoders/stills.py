"""Still images -> FrameBatch, routed by the config's `decode`: all on the CPU (OpenCV threads), all JPEGs on
the GPU JPEG decoder (`gpu_decoder`: nvJPEG or nvImageCodec), or `hybrid` (the CPU threads take
`hybrid_cpu_share` of the encoded images in parallel with the GPU). Non-JPEG, EXIF-rotated and refused images
always fall back to the CPU; a bad image becomes that item's error.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor

import numpy as np
import torch

from yoloray.vision.decoders.frames import FrameBatch
from yoloray.vision.decoders.opencv import OpenCVDecoder, collect_host
from yoloray.vision.prepare import Prepared

GPU_DECODERS = ("torchvision", "nvimgcodec")
GPU_LETTERBOX_GROUP = 32  # images resized in one call (bounds the fp16 staging memory: 32 x 1080p ~ 400 MB)


def open_gpu_decoder(kind: str, device: torch.device):
    """A GPU JPEG decoder for one calling thread (decoders are not shared between threads). ValueError says
    why the decoder asked for cannot run here."""
    if kind == "torchvision":
        from yoloray.vision.decoders.nvjpeg import TorchvisionDecoder

        return TorchvisionDecoder(device)
    if kind != "nvimgcodec":
        raise ValueError(f"gpu_decoder {kind!r} is not one of {', '.join(GPU_DECODERS)}")
    from yoloray.vision.decoders.nvimgcodec import NvImageCodecDecoder, nvimgcodec_missing

    if device.type != "cuda":
        raise ValueError(f"gpu_decoder nvimgcodec needs a CUDA device, not {device}; use gpu_decoder: torchvision")
    if (why := nvimgcodec_missing()) is not None:
        raise ValueError(why)
    try:
        return NvImageCodecDecoder(device)
    except RuntimeError as e:
        raise ValueError(f"nvImageCodec could not open a decoder on {device} ({e}); use gpu_decoder: torchvision") from None


class StillDecoder:
    """The Detector's decoder for encoded images, decoded arrays and Prepared (letterboxed upstream) inputs."""

    def __init__(self, config, imgsz: tuple[int, int], device: torch.device, pool: Executor):
        """`config`: the engine config (decode, gpu_decoder, hybrid_cpu_share, max_pixels, reduced_decode)."""
        self.mode, self.gpu_decoder, self.share = config.decode, config.gpu_decoder, config.hybrid_cpu_share
        self.max_pixels, self.imgsz, self.device, self.pool = config.max_pixels, imgsz, device, pool
        self.cpu = OpenCVDecoder(imgsz, config.max_pixels, config.reduced_decode, pool)
        self._local = threading.local()
        if self.mode != "cpu":  # a decoder that cannot run here fails the build, not the first batch
            self.thread_gpu_decoder()

    def decode(self, images) -> FrameBatch:
        from yoloray.vision.decode import probe

        frames = FrameBatch.empty(len(images))
        to_gpu = self._gpu_candidates(images)
        cpu_jobs = {i: self.cpu.submit(im, i, frames.geom) for i, im in enumerate(images) if i not in to_gpu}
        probes = {i: self.pool.submit(probe, images[i], self.max_pixels) for i in to_gpu}
        self._decode_gpu(images, probes, frames, cpu_jobs)
        collect_host(cpu_jobs, frames)
        return frames

    def warmup(self) -> None:
        """Run this thread's GPU decoder once (engine and stream set-up)."""
        if self.mode != "cpu":
            import cv2

            self.thread_gpu_decoder().decode([cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()])

    def thread_gpu_decoder(self):
        """The calling thread's GPU JPEG decoder: concurrent calls never share one."""
        decoder = getattr(self._local, "gpu_decoder", None)
        if decoder is None:
            decoder = self._local.gpu_decoder = open_gpu_decoder(self.gpu_decoder, self.device)
        return decoder

    def _gpu_candidates(self, images) -> set[int]:
        """Which inputs the GPU decodes: none (decode=cpu), all encoded ones (gpu), or all but a CPU share
        that the decode threads take in parallel (hybrid)."""
        if self.mode == "cpu":
            return set()
        encoded = [i for i, im in enumerate(images) if not isinstance(im, (np.ndarray, Prepared))]
        if self.mode == "hybrid":
            encoded = encoded[round(len(encoded) * self.share) :]
        return set(encoded)

    def _decode_gpu(self, images, probes: dict, frames: FrameBatch, cpu_jobs: dict) -> None:
        """GPU-decode the probed JPEGs into device groups of same-sized images; anything the decoder refuses
        goes to the CPU threads."""
        from yoloray.vision.decode import ImageError

        jpeg_idx, infos = [], {}
        for i, job in sorted(probes.items()):
            try:
                info = job.result()
            except ImageError as e:
                frames.errors[i] = str(e)
                continue
            if info.is_jpeg and info.orientation == 1:
                jpeg_idx.append(i)
                infos[i] = info
            else:  # not JPEG, or EXIF-rotated (torchvision's batched nvJPEG ignores EXIF): the CPU applies it
                cpu_jobs[i] = self.cpu.submit(images[i], i, frames.geom)
        decoded = self.thread_gpu_decoder().decode([images[i] for i in jpeg_idx]) if jpeg_idx else []
        by_shape: dict[tuple, list] = {}
        for i, t in zip(jpeg_idx, decoded):
            if t is None:
                cpu_jobs[i] = self.cpu.submit(images[i], i, frames.geom)
                continue
            hw = tuple(t.shape[1:])
            frames.geom.set(i, hw, self.imgsz, (infos[i].height, infos[i].width))
            by_shape.setdefault(hw, []).append((i, t))
        slots: list[int] = []
        for members in by_shape.values():
            for k in range(0, len(members), GPU_LETTERBOX_GROUP):
                chunk = members[k : k + GPU_LETTERBOX_GROUP]
                frames.device_groups.append(torch.stack([t for _, t in chunk]))
                slots.extend(i for i, _ in chunk)
        frames.slots = np.asarray(slots, np.int64)
