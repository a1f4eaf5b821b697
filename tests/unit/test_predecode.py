"""Upstream CPU decode of `decode: hybrid` batch jobs: the rows a Ray task prepares give the Detector exactly
what it would have made itself, bad images become error rows, and only the chosen share is taken."""

import numpy as np
import pyarrow as pa
import pytest

from yoloray.batch.predecode import PIXELS, SIZE_COLUMNS, chosen, predecode, prepared_inputs
from yoloray.config import Profile
from yoloray.data.inputs import INPUT_SCHEMA
from yoloray.detector import Detector
from yoloray.vision.prepare import Prepared

IMGSZ = (384, 640)


@pytest.mark.parametrize("n,share", [(10, 0.3), (128, 0.45), (7, 0.0), (5, 1.0), (1, 0.5)])
def test_chosen_takes_the_share_spread_evenly(n, share):
    take = chosen(n, share)
    assert take.sum() == int(np.floor(n * share + 1e-9))
    if take.sum() >= 2:  # no long runs: gaps between taken rows differ by at most one
        gaps = np.diff(np.flatnonzero(take))
        assert gaps.max() - gaps.min() <= 1


def _rows(photos):
    jpeg = photos["fullhd"].read_bytes()
    png = photos["gray_png"].read_bytes()
    images = [jpeg, jpeg[: len(jpeg) // 2], png, None, jpeg, photos["bus"].read_bytes()]
    errors = [None, None, None, "unreadable tar member", None, None]
    n = len(images)
    return pa.Table.from_pydict(
        {"key": [f"k{i}" for i in range(n)], "image": images, "source": ["s"] * n, "frame": [None] * n,
         "ts": [None] * n, "error": errors, "segment": [None] * n},
        schema=INPUT_SCHEMA,
    )


def test_predecoded_rows_detect_exactly_like_the_detector(photos, checkpoints):
    batch = _rows(photos)
    out = predecode(batch, IMGSZ, max_pixels=50_000_000, reduced_decode=True, share=1.0)
    assert out.column_names == [*batch.column_names, PIXELS, *SIZE_COLUMNS]
    errors = out.column("error").to_pylist()
    assert "truncated JPEG" in errors[1]  # failed upstream: an error row, not a lost row
    assert errors[3] == "unreadable tar member"  # a read error is kept as it was
    pixels = out.column(PIXELS).to_pylist()
    assert [p is not None for p in pixels] == [True, False, True, False, True, True]
    assert all(len(p) == IMGSZ[0] * IMGSZ[1] * 3 for p in pixels if p is not None)
    assert out.column("image").null_count == 6  # taken rows travel as pixels only
    assert (out.column("orig_w")[0].as_py(), out.column("orig_h")[0].as_py()) == (1920, 1080)
    assert (out.column("decoded_w")[0].as_py(), out.column("decoded_h")[0].as_py()) == (960, 540)  # 1/2 DCT

    inputs = prepared_inputs(out, IMGSZ)
    assert isinstance(inputs[0], Prepared) and not inputs[0].pixels.flags.owndata  # a view of the Arrow buffer
    cfg = Profile(device="cpu", model=str(checkpoints["v8"]), imgsz=IMGSZ, conf=0.2, reduced_decode=True)
    det = Detector(cfg)
    good = [0, 2, 4, 5]
    got = det.detect([inputs[i] for i in good])
    ref = det.detect([batch.column("image")[i].as_py() for i in good])
    assert got.errors == [None] * 4 and got.offsets[-1] > 0
    np.testing.assert_array_equal(got.offsets, ref.offsets)
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.scores, ref.scores)
    np.testing.assert_array_equal(got.widths, ref.widths)


def test_a_share_leaves_the_other_rows_encoded(photos):
    batch = _rows(photos)
    out = predecode(batch, IMGSZ, max_pixels=50_000_000, reduced_decode=False, share=0.5)
    taken = chosen(batch.num_rows, 0.5) & np.array([e is None for e in batch.column("error").to_pylist()])
    for i, row_taken in enumerate(taken):
        if row_taken:
            assert out.column("image")[i].as_py() is None
        else:
            assert out.column("image")[i].as_py() == batch.column("image")[i].as_py()
            assert out.column(PIXELS)[i].as_py() is None
    inputs = prepared_inputs(out, IMGSZ)
    assert [isinstance(x, Prepared) for x in inputs] == [bool(t and out.column(PIXELS)[i].is_valid)
                                                       for i, t in enumerate(taken)]
    full = next(x for x in inputs if isinstance(x, Prepared))
    assert full.decoded_hw == full.orig_hw  # reduced_decode off: full-size decode


def test_a_prepared_image_of_another_size_is_refused(checkpoints):
    det = Detector(Profile(device="cpu", model=str(checkpoints["v8"]), imgsz=256))
    wrong = Prepared(np.zeros((384, 640, 3), np.uint8), (540, 960), (1080, 1920))
    with pytest.raises(ValueError, match="does not fit imgsz"):
        det.detect([wrong])
