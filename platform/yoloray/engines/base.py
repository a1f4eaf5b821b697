"""The backend interface: every engine takes a (B, 3, H, W) batch in [0, 1] and returns the raw head output.

Raw output is either (B, 4 + nc, N) (xywh + class scores; the Detector runs NMS) or, for NMS-free
end-to-end heads, (B, K, 6) = x1, y1, x2, y2, score, class (used as it is).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import torch


class EngineError(RuntimeError):
    """The engine cannot be built or run as configured; the message says what to change."""


def check_weights_file(model: str) -> None:
    """EngineError when `model` names a local .pt file that is not there (one message for every path: the
    engine's load, and the batch job's and `yoloray serve`'s checks before any actor or replica starts)."""
    if model.endswith(".pt") and "://" not in model and not os.path.isfile(model):
        raise EngineError(
            f"model weights {model} do not exist; pass --model with a .pt file, or a model YAML "
            "such as yolov8n.yaml for random-weight speed tests"
        )


class Engine(ABC):
    names: dict[int, str]
    stride: int
    end2end: bool
    dtype: torch.dtype  # the input dtype the engine wants
    device: torch.device
    channels_last: bool = False
    static_batch: int | None = None  # when set, a call's batch must be a multiple of it (pad short ones)

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Raw head output for a batch (see the module docstring)."""

    @abstractmethod
    def warmup(self, batch_size: int, imgsz: tuple[int, int]) -> None:
        """Run at the real input shape until no first-call cost (allocation, autotune, capture, compile) is left."""
