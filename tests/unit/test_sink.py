"""Output schema and Detections -> Arrow conversion (no Ray)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from yoloray.data import sink
from yoloray.data.sink import OUTPUT_SCHEMA, detections_to_table, error_table, write_parquet_atomic
from yoloray.results import Detections


def _dets() -> Detections:
    # image 0: 2 boxes, image 1: error, image 2: none, image 3: 1 box with a class id missing from names
    return Detections(
        widths=np.array([64, 0, 32, 10], np.int32),
        heights=np.array([48, 0, 16, 20], np.int32),
        errors=[None, "cannot decode image", None, None],
        offsets=np.array([0, 2, 2, 2, 3], np.int64),
        boxes=np.array([[1, 2, 3, 4], [5, 6, 7, 8], [0.5, 1.5, 2.5, 3.5]], np.float32),
        scores=np.array([0.9, 0.5, 0.25], np.float32),
        class_ids=np.array([0, 1, 7], np.int16),
        names={0: "person", 1: "car"},
    )


KEYS = ["a.jpg", "b.jpg", "clip.mp4#frame=3", "d.jpg"]
SOURCES = ["/d/a.jpg", "/d/b.jpg", "/d/clip.mp4", "/d/d.jpg"]


def _per_image(table: pa.Table) -> list[np.ndarray]:
    det = table.column("detections").combine_chunks()
    flat = det.flatten()
    xyxy = np.stack([flat.field(n).to_numpy() for n in ("x1", "y1", "x2", "y2")], 1)
    off = det.offsets.to_numpy()
    return [xyxy[off[i] : off[i + 1]] for i in range(len(det))]


def test_schema_exact():
    expected = pa.schema(
        [
            ("key", pa.string()),
            ("source", pa.string()),
            ("frame", pa.int64()),
            ("ts", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            (
                "detections",
                pa.list_(
                    pa.struct(
                        [
                            ("x1", pa.float32()),
                            ("y1", pa.float32()),
                            ("x2", pa.float32()),
                            ("y2", pa.float32()),
                            ("score", pa.float32()),
                            ("class_id", pa.int16()),
                            ("label", pa.string()),
                        ]
                    )
                ),
            ),
            ("error", pa.string()),
            ("engine", pa.string()),
        ]
    )
    assert OUTPUT_SCHEMA.equals(expected)
    t = detections_to_table(_dets(), KEYS, SOURCES, [None, None, 3, None], [None, None, 0.1, None], "eng1")
    assert t.schema.equals(OUTPUT_SCHEMA)
    t.validate(full=True)
    assert error_table(["x"], ["s"], None, None, ["boom"], "eng1").schema.equals(OUTPUT_SCHEMA)


def test_offsets_round_trip_and_fields():
    d = _dets()
    t = detections_to_table(d, KEYS, SOURCES, None, None, "eng1")
    per = _per_image(t)
    for i in range(len(d)):
        np.testing.assert_array_equal(per[i], d.boxes[d.offsets[i] : d.offsets[i + 1]])
    rows = t.to_pylist()
    assert [r["key"] for r in rows] == KEYS
    assert [r["source"] for r in rows] == SOURCES
    assert rows[0]["detections"][1] == {
        "x1": 5.0, "y1": 6.0, "x2": 7.0, "y2": 8.0, "score": 0.5, "class_id": 1, "label": "car",
    }  # fmt: skip
    assert rows[0]["detections"][0]["label"] == "person"
    assert rows[3]["detections"][0]["label"] == "7"  # unknown id -> its number
    assert rows[2]["detections"] == []
    assert (rows[0]["width"], rows[0]["height"]) == (64, 48)
    assert {r["engine"] for r in rows} == {"eng1"}
    # the same content as Detections.to_rows (the non-vectorised reference)
    ref = d.to_rows()
    for r, e in zip(rows, ref, strict=True):
        assert r["detections"] == e["detections"]
        assert r["error"] == e["error"]


def test_errors_have_empty_list_and_null_size():
    d = _dets()
    rows = detections_to_table(d, KEYS, SOURCES, None, None, "e").to_pylist()
    assert rows[1]["error"] == "cannot decode image"
    assert rows[1]["detections"] == []
    assert rows[1]["width"] is None and rows[1]["height"] is None
    assert all(r["error"] is None for i, r in enumerate(rows) if i != 1)

    # boxes attached to an error row are dropped, the other images keep theirs
    d.errors = ["bad", None, None, None]
    t = detections_to_table(d, KEYS, SOURCES, None, None, "e")
    per = _per_image(t)
    assert [len(p) for p in per] == [0, 0, 0, 1]
    np.testing.assert_array_equal(per[3], d.boxes[2:3])


def test_nullable_frames_ts_from_numpy():
    d = _dets()
    frames = np.array([np.nan, np.nan, 3.0, np.nan])  # what Ray numpy batches give for int64 with nulls
    ts = np.array([None, None, 0.1, None], object)
    t = detections_to_table(d, np.array(KEYS, object), SOURCES, frames, ts, "e")
    assert t.column("frame").to_pylist() == [None, None, 3, None]
    assert t.column("ts").to_pylist() == [None, None, 0.1, None]
    with pytest.raises(ValueError, match="keys"):
        detections_to_table(d, KEYS[:2], SOURCES, None, None, "e")


def test_empty_batch():
    t = detections_to_table(Detections.empty(0), [], [], [], [], "e")
    assert t.num_rows == 0 and t.schema.equals(OUTPUT_SCHEMA)


def test_error_table():
    t = error_table(
        ["x.tar::a.jpg", "x.tar"], ["x.tar", "x.tar"], [None, None], None, ["truncated", "bad"], "e"
    )
    rows = t.to_pylist()
    assert [r["error"] for r in rows] == ["truncated", "bad"]
    assert all(r["detections"] == [] and r["width"] is None for r in rows)
    with pytest.raises(ValueError):
        error_table(["x"], ["s"], None, None, [None], "e")


def test_atomic_write(tmp_path, monkeypatch):
    t = detections_to_table(_dets(), KEYS, SOURCES, None, None, "e")
    out = tmp_path / "out" / "part-0.parquet"
    write_parquet_atomic(t, str(out))
    assert os.listdir(out.parent) == ["part-0.parquet"]
    back = pq.read_table(out)
    assert back.schema.equals(OUTPUT_SCHEMA) and back.equals(t)

    write_parquet_atomic(t.slice(0, 1), "file://" + str(out))  # URI + overwrite
    assert pq.read_table(out).num_rows == 1
    assert os.listdir(out.parent) == ["part-0.parquet"]

    def broken(table, where, filesystem=None, **kw):
        with filesystem.open_output_stream(where) as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(sink.pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(t, str(tmp_path / "out" / "part-1.parquet"))
    assert os.listdir(out.parent) == ["part-0.parquet"]
