"""Error kinds (observe/errors.py): the summary's groups and the `kind` label of the error metric."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from yoloray.observe.errors import ERROR_KINDS, error_kind
from yoloray.vision.decode import ImageError
from yoloray.vision.prepare import prepare_cpu


@pytest.mark.parametrize("data,kind", [
    (b"", "empty file"),
    (b"this is not an image", "not an image"),  # its message says "20 bytes": not an empty file
    (cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))[1].tobytes()[:300], "truncated image"),
])
def test_kind_of_real_decode_errors(data, kind):
    with pytest.raises(ImageError) as e:
        prepare_cpu(data, (64, 64), 10**8, True)
    assert error_kind(str(e.value)) == kind


def test_kinds_are_a_fixed_set():
    assert error_kind("cannot read tar member: permission denied") == "unreadable input"
    assert error_kind("") == "other"
    assert len(set(ERROR_KINDS)) == len(ERROR_KINDS) == 10
    assert error_kind("cannot open video clip.mp4: no stream") == "unreadable video"
    assert {error_kind(m) for m in ("x", "", "truncated", "corrupt", "over the limit")} <= set(ERROR_KINDS)
