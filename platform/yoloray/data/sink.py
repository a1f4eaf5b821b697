"""The output Parquet schema (DESIGN.md "Data contract") and the conversion from `Detections` to Arrow.

One output row per input image or video frame:

    key: string, source: string, frame: int64, ts: float64, width: int32, height: int32,
    detections: list<struct<x1, y1, x2, y2, score: float32, class_id: int16, label: string>>,
    error: string, engine: string

Conventions:
- Boxes are in original-image pixels (what `Detections` already holds).
- A row with `error` set has an EMPTY detections list (never null) and null `width`/`height`; rows without an
  error always have a (possibly empty) list. Readers can therefore `explode`/`list_flatten` without null checks.
- `frame` and `ts` are null for still images.
- The list column is built from the flat columnar arrays of `Detections` with `pa.ListArray.from_arrays`,
  no Python loop over boxes.

`write_parquet_atomic` writes to a hidden temporary name (`.<name>.tmp-<uuid>`, which pyarrow dataset
discovery ignores) in the target directory and then moves it into place, so a reader never sees a half-written
file. On local disks the move is a rename (atomic); on object stores (s3://, gs://) it is a server-side copy +
delete, and the final object only appears once complete.

No torch here: this module runs in Ray Data writer tasks and on the driver.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from yoloray.results import Detections

DETECTION_TYPE = pa.struct(
    [
        pa.field("x1", pa.float32()),
        pa.field("y1", pa.float32()),
        pa.field("x2", pa.float32()),
        pa.field("y2", pa.float32()),
        pa.field("score", pa.float32()),
        pa.field("class_id", pa.int16()),
        pa.field("label", pa.string()),
    ]
)
DETECTIONS_TYPE = pa.list_(DETECTION_TYPE)

OUTPUT_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("source", pa.string()),
        pa.field("frame", pa.int64()),
        pa.field("ts", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("detections", DETECTIONS_TYPE),
        pa.field("error", pa.string()),
        pa.field("engine", pa.string()),
    ]
)


def _column(values: Any, typ: pa.DataType, n: int, name: str) -> pa.Array:
    """Any of list / numpy (NaN or None = null) / Arrow array / None (all null) -> Arrow array of `typ`."""
    if values is None:
        return pa.nulls(n, typ)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        arr = values if values.type == typ else values.cast(typ)
    else:
        if not isinstance(values, np.ndarray):
            values = list(values)
        arr = pa.array(values, type=typ, from_pandas=True)
    if len(arr) != n:
        raise ValueError(f"column {name!r} has {len(arr)} values, expected {n} (one per image)")
    return arr


def _empty_lists(n: int) -> pa.Array:
    children = [pa.array([], f.type) for f in DETECTION_TYPE]
    struct = pa.StructArray.from_arrays(children, fields=list(DETECTION_TYPE))
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), struct, type=DETECTIONS_TYPE)


def _table(keys, sources, frames, ts, width, height, detections, errors, engine_key: str) -> pa.Table:
    n = len(detections)
    cols = [
        _column(keys, pa.string(), n, "keys"),
        _column(sources, pa.string(), n, "sources"),
        _column(frames, pa.int64(), n, "frames"),
        _column(ts, pa.float64(), n, "ts"),
        width,
        height,
        detections,
        _column(errors, pa.string(), n, "errors"),
        pa.array([engine_key] * n, pa.string()),
    ]
    return pa.Table.from_arrays(cols, schema=OUTPUT_SCHEMA)


def detections_to_table(
    dets: Detections,
    keys: Sequence[str] | np.ndarray | pa.Array,
    sources: Sequence[str] | np.ndarray | pa.Array,
    frames: Sequence[int | None] | np.ndarray | pa.Array | None,
    ts: Sequence[float | None] | np.ndarray | pa.Array | None,
    engine_key: str,
) -> pa.Table:
    """`Detections` of B images + their input columns -> a B-row table in `OUTPUT_SCHEMA`.

    `frames`/`ts` may be None (all null), or contain None/NaN for nulls (what Ray numpy batches give).
    Boxes of an image that has an error are dropped so that error rows always carry an empty list.
    """
    n = len(dets)
    err_mask = np.fromiter((e is not None for e in dets.errors), bool, n)
    offsets = np.asarray(dets.offsets, np.int64)
    if len(offsets) != n + 1:
        raise ValueError(f"Detections.offsets has {len(offsets)} entries, expected {n + 1}")
    counts = np.diff(offsets)
    boxes = np.asarray(dets.boxes, np.float32).reshape(-1, 4)[offsets[0] : offsets[-1]]
    scores = np.asarray(dets.scores, np.float32)[offsets[0] : offsets[-1]]
    class_ids = np.asarray(dets.class_ids, np.int16)[offsets[0] : offsets[-1]]
    labels = (
        np.asarray(dets.labels(), object)[offsets[0] : offsets[-1]] if len(boxes) else np.empty(0, object)
    )
    if err_mask.any() and counts[err_mask].any():
        keep = np.repeat(~err_mask, counts)
        boxes, scores, class_ids, labels = boxes[keep], scores[keep], class_ids[keep], labels[keep]
        counts = np.where(err_mask, 0, counts)
    list_offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=list_offsets[1:])
    if list_offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("too many boxes for one table; convert fewer images at a time")

    struct = pa.StructArray.from_arrays(
        [
            pa.array(np.ascontiguousarray(boxes[:, 0])),
            pa.array(np.ascontiguousarray(boxes[:, 1])),
            pa.array(np.ascontiguousarray(boxes[:, 2])),
            pa.array(np.ascontiguousarray(boxes[:, 3])),
            pa.array(scores),
            pa.array(class_ids),
            pa.array(labels, pa.string()),
        ],
        fields=list(DETECTION_TYPE),
    )
    detections = pa.ListArray.from_arrays(
        pa.array(list_offsets.astype(np.int32)), struct, type=DETECTIONS_TYPE
    )
    width = pa.array(np.asarray(dets.widths, np.int32), pa.int32(), mask=err_mask)
    height = pa.array(np.asarray(dets.heights, np.int32), pa.int32(), mask=err_mask)
    return _table(keys, sources, frames, ts, width, height, detections, list(dets.errors), engine_key)


def error_table(
    keys: Sequence[str] | np.ndarray | pa.Array,
    sources: Sequence[str] | np.ndarray | pa.Array,
    frames: Sequence[int | None] | np.ndarray | pa.Array | None,
    ts: Sequence[float | None] | np.ndarray | pa.Array | None,
    errors: Sequence[str] | np.ndarray | pa.Array,
    engine_key: str,
) -> pa.Table:
    """Rows that never reached the detector (unreadable input): empty detections, null width/height."""
    n = len(keys)
    errs = _column(errors, pa.string(), n, "errors")
    if errs.null_count:
        raise ValueError("error_table needs an error message for every row")
    nulls = pa.nulls(n, pa.int32())
    return _table(keys, sources, frames, ts, nulls, nulls, _empty_lists(n), errs, engine_key)


def _resolve(path: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    if filesystem is not None:
        return filesystem, path
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def write_parquet_atomic(table: pa.Table, path: str, filesystem: pafs.FileSystem | None = None) -> None:
    """Write `table` to `path` (local path, URI, or a path on `filesystem`) so readers never see a partial file."""
    fs, target = _resolve(path, filesystem)
    parent, name = posixpath.split(target.replace(os.sep, "/"))
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise
