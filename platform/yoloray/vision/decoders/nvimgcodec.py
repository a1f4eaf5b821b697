"""GPU JPEG decoder `nvimgcodec`: nvImageCodec (`pip install 'yoloray[nvimgcodec]'`) on the hardware JPEG
engines, its CUDA decoder for streams the engines do not take; no process-wide lock. On the H200 it decodes
about 6% faster alone than nvJPEG, and is no faster in a batch job (benchmarks/README.md, "GPU JPEG decoders").
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

NVIMGCODEC_CPU_THREADS = 2  # host threads per nvImageCodec decoder: stream parsing only, the engines decode


@cache
def nvimgcodec_missing() -> str | None:
    """Why nvImageCodec cannot be used here (None when it can)."""
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except Exception as e:  # ImportError, or a library it loads is missing
        return f"nvImageCodec is not importable ({e}); pip install 'yoloray[nvimgcodec]' or use gpu_decoder: torchvision"
    return None


class NvImageCodecDecoder:
    """`decode(datas) -> list[tensor | None]` like TorchvisionDecoder; one per calling thread (an nvImageCodec
    decoder is not documented as safe to share between threads)."""

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
