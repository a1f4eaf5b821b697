"""Batched NMS on the device (torchvision ops), for a whole batch in one call: no per-image Python loop.

Semantics are ultralytics' `non_max_suppression` (best class per box, `score > conf`, class-aware unless
agnostic, `max_det` per image): boxes are offset by class exactly as ultralytics does (class * 7680, in the
model's float32), and images are separated by an extra integer offset added in float64, where it is exact,
so one `torchvision.ops.nms` call decides every image as ultralytics' per-image loop would.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

MAX_WH = 7680  # ultralytics' per-class offset
MAX_NMS = 30000  # ultralytics' cap on boxes going into NMS, per image


@functools.cache
def nms_kernel():
    """torchvision's compiled NMS operator (what `torchvision.ops.nms` calls), its library loaded without
    importing the torchvision package: that import pulls in torch._dynamo through torchvision.ops (2.1-2.6 s of
    `import yoloray.detector` on the 2-core development machine, paid by every actor at start)."""
    if not hasattr(torch.ops.torchvision, "nms"):
        spec = importlib.util.find_spec("torchvision")
        libs = sorted(Path(spec.submodule_search_locations[0]).glob("_C.*")) if spec else []
        if libs:
            torch.ops.load_library(str(libs[0]))
        else:  # an unusual install: the package import finds its library itself
            import torchvision  # noqa: F401
    return torch.ops.torchvision.nms


def xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    xy, wh = x[..., :2], x[..., 2:4] / 2
    return torch.cat((xy - wh, xy + wh), -1)


def batched_nms(
    pred: torch.Tensor, conf: float, iou: float, max_det: int, agnostic: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """pred: (B, 4 + nc, N) raw head output (xywh + class scores).

    Returns (image_index, boxes_xyxy, scores, class_ids) of kept boxes, grouped by image in order and by
    descending score inside each image."""
    bs, ch, _ = pred.shape
    nc = ch - 4
    scores_all, cls_all = pred[:, 4:, :].max(1)  # (B, N)
    keep = scores_all > conf
    img_idx, anchor = keep.nonzero(as_tuple=True)
    if img_idx.numel() == 0:
        return _empty(pred.device)
    x = pred[img_idx, :, anchor]  # (M, 4 + nc)
    scores = scores_all[img_idx, anchor]
    cls = cls_all[img_idx, anchor]
    boxes = xywh2xyxy(x[:, :4].float())
    scores32 = scores.float()
    counts = torch.bincount(img_idx, minlength=bs)
    if int(counts.max()) > MAX_NMS:  # rare: keep each image's top MAX_NMS, as ultralytics does
        img_idx, boxes, scores32, cls = _cap_per_image(img_idx, boxes, scores32, cls, MAX_NMS)
    offset = boxes + (cls[:, None].float() * (0 if agnostic else MAX_WH))  # float32, as ultralytics
    span = float(MAX_WH * (nc + 1) + 4 * MAX_WH)
    separated = offset.double() + img_idx[:, None].double() * span
    kept = nms_kernel()(separated, scores32.double(), iou)  # by descending score
    # group by image (stable: keeps descending score inside an image), then max_det per image
    order = torch.sort(img_idx[kept], stable=True).indices
    kept = kept[order]
    ki = img_idx[kept]
    rank = torch.arange(len(kept), device=kept.device) - _first_index(ki, bs)[ki]
    kept = kept[rank < max_det]
    return img_idx[kept], boxes[kept], scores32[kept], cls[kept]


def end2end_filter(
    pred: torch.Tensor, conf: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output of an NMS-free head, (B, K, 6) = x1, y1, x2, y2, score, class: filtered by conf, as is."""
    keep = pred[..., 4] > conf
    rank = keep.long().cumsum(1) - 1
    keep &= rank < max_det
    img_idx, k = keep.nonzero(as_tuple=True)
    sel = pred[img_idx, k].float()
    return img_idx, sel[:, :4], sel[:, 4], sel[:, 5].long()


def _first_index(sorted_idx: torch.Tensor, bs: int) -> torch.Tensor:
    counts = torch.bincount(sorted_idx, minlength=bs)
    return torch.cumsum(counts, 0) - counts


def _cap_per_image(img_idx, boxes, scores, cls, cap):
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.sort(img_idx[order], stable=True).indices]
    ii = img_idx[order]
    rank = torch.arange(len(order), device=order.device) - _first_index(ii, int(ii.max()) + 1)[ii]
    sel = order[rank < cap]
    return img_idx[sel], boxes[sel], scores[sel], cls[sel]


def _empty(device):
    z = torch.zeros(0, device=device)
    return z.long(), torch.zeros((0, 4), device=device), z, z.long()
