"""Detections for a batch of images, columnar: no per-image or per-box Python objects on the hot path.

`Detections` is what `Detector.detect` returns. Image i's boxes are rows `offsets[i]:offsets[i+1]` of the flat
arrays, in original-image pixels. `to_rows()` gives the DESIGN.md schema as plain dicts (CLI, HTTP, tests);
`yoloray.data.sink` turns the same arrays into Arrow without a Python loop over boxes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detections:
    widths: np.ndarray  # (B,) int32, original width (after EXIF orientation); 0 where error
    heights: np.ndarray  # (B,) int32
    errors: list[str | None]  # (B,) None, or why this image has no result
    offsets: np.ndarray  # (B+1,) int64
    boxes: np.ndarray  # (M, 4) float32 x1, y1, x2, y2 in original pixels
    scores: np.ndarray  # (M,) float32
    class_ids: np.ndarray  # (M,) int16
    names: dict[int, str] = field(default_factory=dict)  # class id -> label
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage for this call

    def __len__(self) -> int:
        return len(self.errors)

    @classmethod
    def empty(cls, n: int, names: dict[int, str] | None = None) -> Detections:
        return cls(
            widths=np.zeros(n, np.int32),
            heights=np.zeros(n, np.int32),
            errors=[None] * n,
            offsets=np.zeros(n + 1, np.int64),
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            class_ids=np.zeros(0, np.int16),
            names=dict(names or {}),
        )

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def labels(self) -> np.ndarray:
        """Label string of every box (object array, aligned with class_ids)."""
        lut = np.array([self.names.get(i, str(i)) for i in range(max(self.names, default=-1) + 1)] or [""], object)
        ids = self.class_ids.astype(np.int64)
        out = np.empty(len(ids), object)
        known = ids < len(lut)
        out[known] = lut[ids[known]]
        out[~known] = [str(i) for i in ids[~known]]
        return out

    def image(self, i: int) -> dict:
        """One image in the DESIGN.md output schema (without key/source/frame/ts/engine)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        labels = self.labels()[a:b] if b > a else []
        dets = [
            {
                "x1": float(self.boxes[j, 0]),
                "y1": float(self.boxes[j, 1]),
                "x2": float(self.boxes[j, 2]),
                "y2": float(self.boxes[j, 3]),
                "score": float(self.scores[j]),
                "class_id": int(self.class_ids[j]),
                "label": str(labels[j - a]),
            }
            for j in range(a, b)
        ]
        return {
            "width": int(self.widths[i]),
            "height": int(self.heights[i]),
            "detections": dets,
            "error": self.errors[i],
        }

    def to_rows(self) -> list[dict]:
        return [self.image(i) for i in range(len(self))]

    @staticmethod
    def concat(parts: list[Detections]) -> Detections:
        if not parts:
            return Detections.empty(0)
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        timings: dict[str, float] = {}
        for p in parts:
            for k, v in p.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        return Detections(
            widths=np.concatenate([p.widths for p in parts]),
            heights=np.concatenate([p.heights for p in parts]),
            errors=[e for p in parts for e in p.errors],
            offsets=np.concatenate(offsets),
            boxes=np.concatenate([p.boxes for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            class_ids=np.concatenate([p.class_ids for p in parts]),
            names=parts[0].names,
            timings=timings,
        )
