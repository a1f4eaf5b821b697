"""Letterbox to a square or stride-aligned rectangle, on CPU arrays or GPU tensors, and the way back.

The geometry is ultralytics' `LetterBox(new_shape, auto=False, center=True, scaleup=True)` and its
`scale_boxes`: one ratio for both axes, each side rounded, padding split with `round(d/2 -+ 0.1)`, fill 114.
`Geometry` carries, per image, what maps boxes from the model input back to original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Placement:
    """Where an (h, w) image lands inside the (H, W) input."""

    new_w: int
    new_h: int
    top: int
    left: int


def placement(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Placement:
    h, w = src_hw
    r = min(dst_hw[0] / h, dst_hw[1] / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (dst_hw[1] - new_w) / 2, (dst_hw[0] - new_h) / 2
    return Placement(new_w, new_h, round(dh - 0.1), round(dw - 0.1))


def letterbox_cpu(img: np.ndarray, dst_hw: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Resize (cv2 INTER_LINEAR, as ultralytics) and pad an HxWx3 uint8 image into `out` (dst_h, dst_w, 3)."""
    p = placement(img.shape[:2], dst_hw)
    if out is None:
        out = np.empty((dst_hw[0], dst_hw[1], 3), np.uint8)
    if (img.shape[1], img.shape[0]) != (p.new_w, p.new_h):
        img = cv2.resize(img, (p.new_w, p.new_h), interpolation=cv2.INTER_LINEAR)
    bottom, right = p.top + p.new_h, p.left + p.new_w
    out[: p.top] = PAD_VALUE
    out[bottom:] = PAD_VALUE
    out[p.top : bottom, : p.left] = PAD_VALUE
    out[p.top : bottom, right:] = PAD_VALUE
    out[p.top : bottom, p.left : right] = img
    return out


def letterbox_gpu(imgs, dst_hw: tuple[int, int], out) -> None:
    """Letterbox same-sized RGB uint8 images (N, 3, h, w) on their device into `out` (N, 3, H, W), values in
    [0, 1] in out's dtype: one bilinear resize for the group (half-pixel centres like cv2 INTER_LINEAR; within
    1/255 of the CPU path), then the 114 border."""
    import torch.nn.functional as F

    p = placement(tuple(imgs.shape[-2:]), dst_hw)
    out.fill_(PAD_VALUE / 255.0)
    import torch

    x = imgs.to(torch.float32 if out.dtype == torch.float32 else torch.float16)  # fp16: exact steps of 1/8 at 255
    if tuple(imgs.shape[-2:]) != (p.new_h, p.new_w):
        x = F.interpolate(x, size=(p.new_h, p.new_w), mode="bilinear", align_corners=False, antialias=False)
    out[:, :, p.top : p.top + p.new_h, p.left : p.left + p.new_w] = x.clamp_(0, 255).div_(255.0)


@dataclass
class Geometry:
    """Per-image mapping from model-input pixels back to original pixels, for a batch (numpy, float32).

    x_orig = (x_in - pad_x) / gain_x * scale_x, clipped to [0, orig_w]. `scale_*` is 1 unless the image was
    decoded at a reduced size (then orig / decoded)."""

    pad_x: np.ndarray
    pad_y: np.ndarray
    gain_x: np.ndarray
    gain_y: np.ndarray
    scale_x: np.ndarray
    scale_y: np.ndarray
    orig_w: np.ndarray
    orig_h: np.ndarray

    @classmethod
    def allocate(cls, n: int) -> Geometry:
        f = lambda v: np.full(n, v, np.float32)  # noqa: E731
        return cls(f(0), f(0), f(1), f(1), f(1), f(1), f(1), f(1))

    def set(self, i: int, decoded_hw: tuple[int, int], dst_hw: tuple[int, int], orig_hw: tuple[int, int]) -> None:
        p = placement(decoded_hw, dst_hw)
        self.pad_x[i], self.pad_y[i] = p.left, p.top
        self.gain_x[i], self.gain_y[i] = p.new_w / decoded_hw[1], p.new_h / decoded_hw[0]
        self.scale_x[i], self.scale_y[i] = orig_hw[1] / decoded_hw[1], orig_hw[0] / decoded_hw[0]
        self.orig_w[i], self.orig_h[i] = orig_hw[1], orig_hw[0]


def boxes_to_original(boxes, image_index, geom: Geometry):
    """Map xyxy boxes (torch, model-input pixels) of images `image_index` back to original pixels, clipped.
    Same operation order as ultralytics' scale_boxes, so the exact path reproduces it bit for bit."""
    import torch

    dev = boxes.device
    g = {k: torch.from_numpy(v).to(dev)[image_index] for k, v in vars(geom).items()}
    out = boxes.float().clone()
    out[:, 0] -= g["pad_x"]
    out[:, 1] -= g["pad_y"]
    out[:, 2] -= g["pad_x"]
    out[:, 3] -= g["pad_y"]
    out[:, 0] /= g["gain_x"]
    out[:, 1] /= g["gain_y"]
    out[:, 2] /= g["gain_x"]
    out[:, 3] /= g["gain_y"]
    if bool((geom.scale_x != 1).any() or (geom.scale_y != 1).any()):
        out[:, 0::2] *= g["scale_x"][:, None]
        out[:, 1::2] *= g["scale_y"][:, None]
    out[:, 0::2] = torch.minimum(out[:, 0::2].clamp_(min=0), g["orig_w"][:, None])
    out[:, 1::2] = torch.minimum(out[:, 1::2].clamp_(min=0), g["orig_h"][:, None])
    return out
