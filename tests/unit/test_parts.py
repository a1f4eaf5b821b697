"""Parts on disk as the job goes (batch/parts.py): every N rows or S seconds, each key once, counts that agree
with the Parquet; error kinds (no Ray)."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from yoloray.batch.parts import PartWriter, batches_or_ticks
from yoloray.batch.pipeline import error_kind
from yoloray.data.sink import error_table


def _rows(keys: list[str], error: str = "not a decodable image (290 bytes, starts with b'x')") -> pa.Table:
    return error_table(keys, ["src"] * len(keys), None, None, [error] * len(keys), "engine")


def _written(root) -> list[str]:
    return [k for p in sorted(root.glob("part-*.parquet")) for k in pq.read_table(p).column("key").to_pylist()]


def test_a_part_every_n_rows_and_each_key_once(tmp_path):
    w = PartWriter(pafs.LocalFileSystem(), str(tmp_path), "run", rows=3, seconds=3600, error_kind=error_kind)
    w.add(_rows(["a", "b", "a"]))  # a repeat inside one batch (a re-emitted row) is kept once
    w.add(_rows(["b", "c"]))
    assert _written(tmp_path) == ["a", "b", "c"]  # 3 rows: a part
    w.add(_rows(["d"]))
    assert len(list(tmp_path.glob("part-*"))) == 1
    w.flush()
    assert _written(tmp_path) == ["a", "b", "c", "d"]
    assert len(w.written) == 4 and w.errors == {"not an image": 4}


def test_a_part_every_s_seconds_even_when_nothing_else_comes(tmp_path):
    w = PartWriter(pafs.LocalFileSystem(), str(tmp_path), "run", rows=10_000, seconds=0.2, error_kind=error_kind)

    def slow():
        yield _rows(["a"])
        time.sleep(1.5)  # a quiet stretch: the buffered row must not wait for the next batch
        yield _rows(["b"])

    seen = []
    for batch in batches_or_ticks(slow(), w.wait_s):
        if batch is None:
            w.flush()
            seen.append(("tick", _written(tmp_path)))
            continue
        w.add(batch)
    w.flush()
    assert ("tick", ["a"]) in seen
    assert _written(tmp_path) == ["a", "b"]


def test_error_kinds():
    assert error_kind("not a decodable image (290 bytes, starts with b'\\x89')") == "not an image"
    assert error_kind("empty input (0 bytes)") == "empty file"
    assert error_kind("truncated JPEG (no end-of-image marker); the file is incomplete") == "truncated image"
