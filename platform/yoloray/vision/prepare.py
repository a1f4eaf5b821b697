"""One image made ready for the model on the CPU: decode (reduced where allowed), then letterbox.

The Detector's decode threads and the batch job's upstream decode tasks (`batch/predecode.py`) both call
`prepare_cpu`, so an image prepared in a Ray task is the same array the Detector would have made itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloray.vision.decode import check_array, decode_cpu, probe, reduction_factor
from yoloray.vision.letterbox import letterbox_cpu


@dataclass(frozen=True)
class Prepared:
    """A letterboxed BGR uint8 (H, W, 3) model input, with the sizes that map its boxes back:
    `decoded_hw` is what was letterboxed (smaller than `orig_hw` after a reduced decode)."""

    pixels: np.ndarray
    decoded_hw: tuple[int, int]
    orig_hw: tuple[int, int]


def prepare_cpu(item, imgsz: tuple[int, int], max_pixels: int, reduced_decode: bool) -> Prepared:
    """Encoded bytes or a decoded array -> Prepared; ImageError says what is wrong with a bad input."""
    if isinstance(item, np.ndarray):
        im = check_array(item, max_pixels)
        orig_hw = im.shape[:2]
    else:
        info = probe(item, max_pixels)
        orig_hw = (info.height, info.width)
        factor = reduction_factor(orig_hw, imgsz) if reduced_decode and info.is_jpeg else 1
        im = decode_cpu(item, info, factor)
        if factor == 1 and im.shape[:2] != orig_hw:  # EXIF says one thing, the pixels another: trust pixels
            orig_hw = im.shape[:2]
    return Prepared(letterbox_cpu(im, imgsz), tuple(im.shape[:2]), tuple(orig_hw))
