"""Upstream CPU decode for `decode: hybrid` batch jobs.

Ray Data tasks (fused with the read tasks, so on any CPU of the cluster) decode and letterbox
`hybrid_cpu_share` of the images with the same `prepare_cpu` the Detector uses; the detector actor then
GPU-decodes only the rest, and no decode thread in the actor competes with it for the GIL. A prepared row
carries its model-input pixels (`pixels`, H*W*3 BGR bytes) and the sizes that map boxes back; its encoded
`image` is dropped so it does not travel twice. An image that fails to decode gets its `error` here, and the
actor writes it as an error row like any unreadable input.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from yoloray.data.inputs import encoded_views
from yoloray.vision.decode import ImageError
from yoloray.vision.prepare import Prepared, prepare_cpu

PIXELS = "pixels"
SIZE_COLUMNS = ("decoded_h", "decoded_w", "orig_h", "orig_w")


def chosen(n: int, share: float) -> np.ndarray:
    """Which of n rows the CPU takes: `share` of them, spread evenly (row i when floor((i+1)s) > floor(is))."""
    i = np.arange(n)
    return np.floor((i + 1) * share + 1e-9) > np.floor(i * share + 1e-9)


def predecode(batch: pa.Table, imgsz: tuple[int, int], max_pixels: int, reduced_decode: bool, share: float) -> pa.Table:
    """Input rows -> the same rows plus PIXELS and SIZE_COLUMNS (null where the actor decodes)."""
    n = batch.num_rows
    take = chosen(n, share) & ~np.asarray(batch.column("error").is_valid()) & np.asarray(batch.column("image").is_valid())
    images = encoded_views(batch.column("image"))
    errors = batch.column("error").to_pylist()
    pixels: list[bytes | None] = [None] * n
    sizes = np.zeros((n, 4), np.int32)
    has_size = np.zeros(n, bool)
    for i in np.flatnonzero(take):
        try:
            p = prepare_cpu(images[i], imgsz, max_pixels, reduced_decode)
        except ImageError as e:
            errors[i] = str(e)
            continue
        pixels[i] = p.pixels.tobytes()
        sizes[i] = (*p.decoded_hw, *p.orig_hw)
        has_size[i] = True
    column = batch.column("image")
    image = pc.if_else(pa.array(~take), column, pa.nulls(n, column.type))  # taken rows: pixels (or an error) only
    out = batch.set_column(batch.schema.get_field_index("image"), "image", image)
    out = out.set_column(out.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
    out = out.append_column(PIXELS, pa.array(pixels, pa.binary()))
    for j, name in enumerate(SIZE_COLUMNS):
        out = out.append_column(name, pa.array(sizes[:, j], pa.int32(), mask=~has_size))
    return out


def prepared_inputs(batch: pa.Table, imgsz: tuple[int, int]) -> list:
    """A predecoded batch -> per row a Prepared (zero-copy view of its pixels) or its encoded bytes."""
    images = encoded_views(batch.column("image"))
    if PIXELS not in batch.column_names:
        return images
    views = encoded_views(batch.column(PIXELS))
    valid = np.asarray(batch.column(PIXELS).is_valid())
    sizes = np.stack([batch.column(c).fill_null(0).to_numpy() for c in SIZE_COLUMNS], axis=1).tolist()
    shape = (*imgsz, 3)
    return [
        Prepared(np.frombuffer(views[i], np.uint8).reshape(shape), tuple(sizes[i][:2]), tuple(sizes[i][2:]))
        if valid[i] else images[i]
        for i in range(batch.num_rows)
    ]
