"""How closely one set of detections reproduces a reference set (the fidelity check every fast path passes).

A reference box is matched when the other set has a box of the same class in the same image with
IoU >= `iou` and |score difference| <= `score_tol`; each box matches at most once (greedy, best IoU first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from yoloray.results import Detections


@dataclass(frozen=True)
class Fidelity:
    matched: int
    reference: int
    extra: int  # boxes in the tested set that matched nothing

    @property
    def rate(self) -> float:
        return 1.0 if self.reference == 0 else self.matched / self.reference


def compare(reference: Detections, tested: Detections, iou: float = 0.99, score_tol: float = 1e-3) -> Fidelity:
    if len(reference) != len(tested):
        raise ValueError(f"reference has {len(reference)} images, tested has {len(tested)}")
    matched = total = found = 0
    for i in range(len(reference)):
        ra, rb = reference.offsets[i], reference.offsets[i + 1]
        ta, tb = tested.offsets[i], tested.offsets[i + 1]
        total += rb - ra
        found += tb - ta
        if rb == ra or tb == ta:
            continue
        rbox, tbox = reference.boxes[ra:rb], tested.boxes[ta:tb]
        ious = np.nan_to_num(box_iou(torch.from_numpy(rbox), torch.from_numpy(tbox)).numpy())
        # zero-area boxes (clipped flat at the image border) have no IoU: coincident ones count as IoU 1
        coincide = np.abs(rbox[:, None, :] - tbox[None, :, :]).max(-1) <= 1e-3
        ious = np.where(coincide, 1.0, ious)
        same_cls = reference.class_ids[ra:rb, None] == tested.class_ids[None, ta:tb]
        score_diff = np.abs(reference.scores[ra:rb, None] - tested.scores[None, ta:tb])
        # best IoU first; among equal IoUs (coincident duplicates) the closest score first
        ious = np.where(same_cls & (score_diff <= score_tol) & (ious >= iou), ious - score_diff, -1.0)
        used_r, used_t = set(), set()
        for flat in np.argsort(-ious, axis=None):
            r, t = divmod(int(flat), ious.shape[1])
            if ious[r, t] < 0:
                break
            if r not in used_r and t not in used_t:
                used_r.add(r)
                used_t.add(t)
        matched += len(used_r)
    return Fidelity(matched=matched, reference=total, extra=found - matched)


def from_ultralytics(results, names: dict[int, str] | None = None) -> Detections:
    """ultralytics `Results` list (from `YOLO.predict`) -> Detections, for comparisons."""
    parts = []
    for r in results:
        d = Detections.empty(1, names or r.names)
        d.heights[0], d.widths[0] = r.orig_shape
        d.boxes = r.boxes.xyxy.cpu().numpy().astype(np.float32)
        d.scores = r.boxes.conf.cpu().float().numpy()
        d.class_ids = r.boxes.cls.cpu().numpy().astype(np.int16)
        d.offsets[1] = len(d.scores)
        parts.append(d)
    return Detections.concat(parts)
