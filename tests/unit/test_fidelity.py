"""Fidelity against ultralytics, stage by stage and end to end, on the same weights and real photos.

Tolerances: letterboxed input max abs diff <= 1/255; raw head output allclose (atol 1e-3 on box pixels,
1e-5 on scores); NMS kept set identical; mapped boxes within 1e-3 px; end to end every reference box matched
(IoU >= 0.99, same class, score within 1e-3). These hold the torch backend (pinned: `auto` is ONNX Runtime on a
CPU, which tests/unit/test_onnxruntime.py holds to the same end-to-end tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ultralytics import YOLO
from ultralytics.data.augment import LetterBox
from ultralytics.utils import nms as ul_nms
from ultralytics.utils import ops as ul_ops

from yoloray.config import Profile
from yoloray.detector import Detector
from yoloray.fidelity import compare, from_ultralytics
from yoloray.vision.decode import decode_cpu, probe
from yoloray.vision.letterbox import Geometry, boxes_to_original, letterbox_cpu
from yoloray.vision.nms import batched_nms

PHOTOS = ["bus", "zidane", "wide_crop", "tall_small", "fullhd", "exif6"]
CONF = {"v8": 0.3, "v11": 0.02, "v26": 0.3}
TORCH = {"backend": "torch"}  # the torch path, stage by stage
SHAPES = [(320, 320), (256, 320), (320, 192)]


def _decode(path):
    data = path.read_bytes()
    return decode_cpu(data, probe(data, 10**9))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", PHOTOS)
def test_letterbox_equals_ultralytics(photos, name, shape):
    im = _decode(photos[name])
    ours = letterbox_cpu(im, shape)
    ref = LetterBox(shape, auto=False, stride=32)(image=im.copy())
    assert ours.shape == ref.shape
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def _sorted_rows(x):
    out = []
    for rows in x.cpu().numpy():
        out.append(torch.from_numpy(rows[np.lexsort(rows.T[::-1].round(2))]))
    return torch.stack(out)


def _preprocess_like_ultralytics(model, imgs, shape, nms=None):
    """The tensor ultralytics' predictor feeds its model, built with its own predictor code."""
    model.predict(imgs[0], imgsz=shape, rect=False, nms=nms, device="cpu", verbose=False)  # sets up model.predictor
    pred = model.predictor
    pred.imgsz = shape
    return pred.preprocess(imgs)


@pytest.mark.parametrize("family", ["v8", "v11", "v26"])
def test_raw_output_and_nms_and_scaling_match(photos, checkpoints, family):
    shape = (256, 320)
    imgs = [_decode(photos[n]) for n in ("bus", "zidane", "wide_crop")]
    ul = YOLO(str(checkpoints[family]))
    det = Detector(Profile(device="cpu", model=str(checkpoints[family]), imgsz=shape, conf=0.25, batch_size=4, **TORCH))
    x_ref = _preprocess_like_ultralytics(ul, imgs, shape, nms=False if det.engine.end2end else None)
    # preprocessing: our host path gives the same tensor
    x_ours = torch.from_numpy(np.stack([letterbox_cpu(i, shape) for i in imgs])).permute(0, 3, 1, 2).flip(1).float() / 255
    assert (x_ours - x_ref).abs().max() <= 1 / 255 + 1e-6
    # raw model output on the same tensor
    raw_ours = det.infer(x_ref)
    raw_ref = ul.predictor.inference(x_ref)
    raw_ref = raw_ref[0] if isinstance(raw_ref, (tuple, list)) else raw_ref
    if det.engine.end2end:  # top-k rows: the order of equal scores is arbitrary, compare as sorted sets
        raw_ours, raw_ref = _sorted_rows(raw_ours), _sorted_rows(raw_ref)
    torch.testing.assert_close(raw_ours, raw_ref, atol=1e-3, rtol=1e-5)
    if det.engine.end2end:
        return  # NMS-free head: nothing below applies (its filtering is covered end to end)
    # NMS on the same raw output: same kept boxes, same order inside each image
    ref = ul_nms.non_max_suppression(raw_ref.clone(), 0.25, 0.7, max_det=300)
    idx, boxes, scores, cls = batched_nms(raw_ref.clone(), 0.25, 0.7, 300)
    assert sum(len(r) for r in ref) > 20, "test model should produce work for NMS"
    for i, r in enumerate(ref):
        sel = idx == i
        torch.testing.assert_close(boxes[sel], r[:, :4], atol=1e-4, rtol=0)
        torch.testing.assert_close(scores[sel], r[:, 4], atol=1e-6, rtol=0)
        assert torch.equal(cls[sel].float(), r[:, 5])
    # mapping back to original pixels equals ultralytics' scale_boxes
    geom = Geometry.allocate(len(imgs))
    for i, im in enumerate(imgs):
        geom.set(i, im.shape[:2], shape, im.shape[:2])
    mapped = boxes_to_original(boxes, idx, geom)
    for i, r in enumerate(ref):
        expect = ul_ops.scale_boxes(shape, r[:, :4].clone(), imgs[i].shape)
        torch.testing.assert_close(mapped[idx == i], expect, atol=1e-3, rtol=0)


@pytest.mark.parametrize("shape", [(320, 320), (256, 320)])
@pytest.mark.parametrize("family", ["v8", "v11", "v26"])
def test_end_to_end_matches_predict(photos, checkpoints, family, shape):
    names = ["bus", "zidane", "wide_crop", "tall_small", "fullhd", "exif6", "gray_png", "webp"]
    files = [photos[n] for n in names]
    weights = str(checkpoints[family])
    det = Detector(Profile(device="cpu", model=weights, imgsz=shape, conf=CONF[family], batch_size=3, **TORCH)).warmup()
    ours = det.detect([f.read_bytes() for f in files])
    assert ours.errors == [None] * len(files)
    # an end-to-end head is used as it is: ultralytics' NMS-free mode (nms=False) is the reference
    nms = None if not det.engine.end2end else False
    ref_results = YOLO(weights).predict(
        [str(f) for f in files], imgsz=shape, rect=False, conf=CONF[family], nms=nms, device="cpu", verbose=False
    )
    ref = from_ultralytics(ref_results)
    assert list(ours.widths) == list(ref.widths) and list(ours.heights) == list(ref.heights)
    assert ref.offsets[-1] > 50
    fid = compare(ref, ours, iou=0.99, score_tol=1e-3)
    assert fid.rate == 1.0, fid
    assert fid.extra == 0, fid


def test_end2end_head_output_used_as_is(checkpoints):
    e2e = Detector(Profile(device="cpu", model=str(checkpoints["v26"]), imgsz=256))
    assert e2e.engine.end2end  # YOLO26 has a one-to-one head: it runs, and no NMS is applied
    raw = e2e.infer(torch.rand(2, 3, 256, 256))
    assert raw.shape[-1] == 6  # (B, K, 6) = x1, y1, x2, y2, score, class
    assert not Detector(Profile(device="cpu", model=str(checkpoints["v8"]), imgsz=256)).engine.end2end
