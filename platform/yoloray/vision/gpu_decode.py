"""Batched JPEG decode on the GPU, to RGB uint8 (3, H, W) tensors on the device.

Two decoders, one interface (`decode(datas) -> list[tensor | None]`, None where the decoder refuses an image;
the caller decodes those on the CPU):

- `torchvision` (the default): nvJPEG through `torchvision.io.decode_jpeg`. Its batched decode runs on the
  GPU's hardware JPEG engines where there are some (the H200's show busy in `nvidia-smi dmon`). Torchvision
  keeps one decoder per process behind a mutex. It also runs on a CPU device, which the unit tests use to
  exercise the GPU route's bookkeeping without a GPU.
- `nvimgcodec`: nvImageCodec (`pip install 'yoloray[nvimgcodec]'`) on the hardware JPEG engines, its CUDA
  decoder for streams the engines do not take; no process-wide lock. On the H200 it decodes about 6% faster
  alone, and is no faster in a batch job (benchmarks/README.md, "GPU JPEG decoders").
"""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import torch

GPU_DECODERS = ("torchvision", "nvimgcodec")
NVIMGCODEC_CPU_THREADS = 2  # host threads per nvImageCodec decoder: stream parsing only, the engines decode


@cache
def nvimgcodec_missing() -> str | None:
    """Why nvImageCodec cannot be used here (None when it can)."""
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except Exception as e:  # ImportError, or a library it loads is missing
        return f"nvImageCodec is not importable ({e}); pip install 'yoloray[nvimgcodec]' or use gpu_decoder: torchvision"
    return None


def open_gpu_decoder(kind: str, device: torch.device):
    """A decoder for one calling thread (decoders are not shared between threads). ValueError says why the
    decoder asked for cannot run here."""
    if kind == "torchvision":
        return TorchvisionDecoder(device)
    if kind != "nvimgcodec":
        raise ValueError(f"gpu_decoder {kind!r} is not one of {', '.join(GPU_DECODERS)}")
    if device.type != "cuda":
        raise ValueError(f"gpu_decoder nvimgcodec needs a CUDA device, not {device}; use gpu_decoder: torchvision")
    if (why := nvimgcodec_missing()) is not None:
        raise ValueError(why)
    try:
        return NvImageCodecDecoder(device)
    except RuntimeError as e:
        raise ValueError(f"nvImageCodec could not open a decoder on {device} ({e}); use gpu_decoder: torchvision") from None


class TorchvisionDecoder:
    name = "torchvision"

    def __init__(self, device: torch.device):
        self.device = device

    def decode(self, datas) -> list:
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():  # read-only buffers: nvJPEG only reads them
            warnings.simplefilter("ignore")
            tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
        read = {"mode": ImageReadMode.RGB, "device": self.device, "apply_exif_orientation": True}
        try:
            return list(decode_jpeg(tensors, **read))
        except RuntimeError:
            out = []
            for t in tensors:  # find the ones nvJPEG refuses (CMYK, progressive oddities) and leave them to the CPU
                try:
                    out.append(decode_jpeg(t, **read))
                except RuntimeError:
                    out.append(None)
            return out


class NvImageCodecDecoder:
    name = "nvimgcodec"

    def __init__(self, device: torch.device, backends: tuple[str, ...] = ("HW_GPU_ONLY", "GPU_ONLY")):
        """`backends`: nvImageCodec backend kinds in the order tried (the benchmark holds it to one)."""
        from nvidia import nvimgcodec

        self.device = device
        index = device.index if device.index is not None else torch.cuda.current_device()
        backends = [nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind)) for kind in backends]
        self._nvimgcodec = nvimgcodec
        self._decoder = nvimgcodec.Decoder(device_id=index, max_num_cpu_threads=NVIMGCODEC_CPU_THREADS, backends=backends)
        self._params = nvimgcodec.DecodeParams(
            apply_exif_orientation=True, color_spec=nvimgcodec.ColorSpec.SRGB, sample_format=nvimgcodec.SampleFormat.P_RGB
        )

    def decode(self, datas) -> list:
        streams, where = [], []
        for i, d in enumerate(datas):
            try:
                streams.append(self._nvimgcodec.CodeStream(np.frombuffer(d, np.uint8)))
                where.append(i)
            except Exception:  # a stream it cannot parse: the CPU says what is wrong with it
                pass
        out: list = [None] * len(datas)
        if not streams:
            return out
        stream = torch.cuda.current_stream(self.device)
        images = self._decoder.decode(streams, params=self._params, cuda_stream=stream.cuda_stream)
        for i, im in zip(where, images):
            if im is not None:
                out[i] = torch.from_dlpack(im)  # zero-copy, owns the image; ready in this stream's order
        return out
