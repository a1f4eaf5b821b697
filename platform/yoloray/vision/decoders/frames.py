"""`FrameBatch`: what every decoder hands the Detector (DESIGN.md "Decoders").

A batch has n items (images, or sampled video frames). Each item either has a frame or an error. Frames come in
two forms, whichever the decoder made cheapest:

- `device_groups`: full-size RGB uint8 tensors (g, 3, h, w) already on the Detector's device (nvJPEG,
  nvImageCodec, NVDEC), same-sized frames stacked into one group; `Detector.run` letterboxes each group on the
  device in one call. A floating-point group is model input already (letterboxed, RGB in [0, 1], the engine's
  dtype: NVDEC's fused NV12 path) and is used as it is.
- `host_frames`: BGR uint8 (H, W, 3) arrays already letterboxed to the Detector's imgsz on the CPU (OpenCV, PyAV:
  decode and resize of one frame stay in the thread or task that decoded it); `Detector.run` uploads them in
  one pinned copy.

`slots[j]` is the item index of frame j: the device groups' frames in order, then the host frames. `geom` maps
each item's boxes back to its original pixels. Video decoders also fill `keys`, `frame_index` and `pts`
(seconds), one per item.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from yoloray.vision.letterbox import Geometry


@dataclass
class FrameBatch:
    geom: Geometry
    errors: list[str | None]
    device_groups: list = field(default_factory=list)  # torch uint8 (g, 3, h, w) RGB, or model input, on the device
    host_frames: list[np.ndarray] = field(default_factory=list)  # letterboxed BGR uint8 (H, W, 3)
    slots: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    keys: list[str] | None = None
    frame_index: np.ndarray | None = None  # int64 per item (video)
    pts: np.ndarray | None = None  # float64 seconds per item (video)

    @classmethod
    def empty(cls, n: int) -> FrameBatch:
        return cls(Geometry.allocate(n), [None] * n)

    def __len__(self) -> int:
        return len(self.errors)

    @property
    def n_device(self) -> int:
        return sum(int(g.shape[0]) for g in self.device_groups)
