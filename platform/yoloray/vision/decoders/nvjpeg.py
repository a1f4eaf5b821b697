"""GPU JPEG decoder `torchvision` (the default): nvJPEG through `torchvision.io.decode_jpeg`, to RGB uint8
(3, H, W) tensors on the device.

Its batched decode runs on the GPU's hardware JPEG engines where there are some (the H200's show busy in
`nvidia-smi dmon`). Torchvision keeps one decoder per process behind a mutex. It also runs on a CPU device,
which the unit tests use to exercise the GPU route's bookkeeping without a GPU.
"""

from __future__ import annotations

import warnings

import torch


class TorchvisionDecoder:
    """`decode(datas) -> list[tensor | None]`, None where nvJPEG refuses an image (the CPU decodes those)."""

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
