"""Keys are unique and stable whatever the names: bytes that are not UTF-8 in file and member names, repeated
tar/zip member names and parquet keys, and large archives cut into many units (no Ray: listing and reading)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from yoloray.data.inputs import SourceOptions
from yoloray.data.names import escape_name, unescape_name, unique_names
from yoloray.data.readers import read_unit
from yoloray.data.units import list_units

SPLIT = SourceOptions(files_per_task=64, unit_bytes=2)  # archives of 1-byte images: cut, 2 images a unit


def _rows(paths: list[str], options: SourceOptions = SourceOptions()) -> dict[str, dict]:
    rows = [r for u in list_units(paths, options) for r in read_unit(u, options)]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), [k for k, n in Counter(keys).items() if n > 1]
    for r in rows:
        r["key"].encode("utf-8")  # valid UTF-8: an Arrow string
        r["source"].encode("utf-8")
    return {r["key"]: r for r in rows}


def _tar(path: Path, members: list[tuple[str | bytes, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name if isinstance(name, str) else name.decode("utf-8", "surrogateescape"))
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class _RawName(zipfile.ZipInfo):
    """A member name stored as these exact bytes without the UTF-8 flag (what old Windows / Linux tools write)."""

    __slots__ = ("raw",)

    def _encodeFilenameFlags(self):  # noqa: N802 - zipfile's name
        return self.raw, self.flag_bits


def _zip(path: Path, members: list[tuple[str | bytes, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            if isinstance(name, bytes):
                info = _RawName(name.decode("cp437"))
                info.raw = name
                zf.writestr(info, data)
            else:
                zf.writestr(name, data)
    return path


def test_escape_is_lossless_and_one_to_one():
    names = [b"plain.jpg", "caf\u00e9.jpg".encode(), b"caf\xe9.jpg", b"caf\\xe9.jpg", b"a\\b.jpg", b"\xff\xfe\x00.jpg",
             b"\xe2\x82.jpg", "\u20ac.jpg".encode()]
    escaped = [escape_name(n) for n in names]
    assert len(set(escaped)) == len(names)
    assert escaped[:4] == ["plain.jpg", "caf\u00e9.jpg", "caf\\xe9.jpg", "caf\\\\xe9.jpg"]
    for n, e in zip(names, escaped):
        e.encode("utf-8")
        assert unescape_name(e) == n
    assert escape_name("caf\udce9.jpg") == "caf\\xe9.jpg"  # what os.listdir / tarfile give for the same bytes


def test_repeated_names_get_a_deterministic_suffix():
    assert unique_names(["a", "b", "a", "a#dup=2", "a"]) == ["a", "b", "a#dup=2", "a#dup=2#dup=2", "a#dup=3"]
    assert unique_names(["a", "a"]) == unique_names(["a", "a"])


def test_folder_with_names_that_are_not_utf8(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    odd = os.path.join(os.fsencode(root), b"caf\xe9.jpg")
    with open(odd, "wb") as f:
        f.write(b"odd")
    (root / "sub" / "ok.jpg").write_bytes(b"ok")
    rows = _rows([str(root)])
    assert set(rows) == {"caf\\xe9.jpg", "sub/ok.jpg"}
    assert rows["caf\\xe9.jpg"]["image"] == b"odd" and rows["caf\\xe9.jpg"]["error"] is None
    assert rows["caf\\xe9.jpg"]["source"] == f"{root}/caf\\xe9.jpg"
    assert os.path.join(os.fsencode(root), unescape_name("caf\\xe9.jpg")) == odd  # the key leads back to the file


def test_cli_lists_such_a_folder_without_a_traceback(tmp_path):
    """Listing happens before Ray starts; an unreachable --address then fails in seconds (no Ray started)."""
    root = tmp_path / "in"
    root.mkdir()
    with open(os.path.join(os.fsencode(root), b"\xff.jpg"), "wb") as f:
        f.write(b"x")
    r = subprocess.run([sys.executable, "-m", "yoloray.cli", "infer", str(root), "--out", str(tmp_path / "out"),
                        "--address", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2 and "no Ray cluster answers at 127.0.0.1:1" in r.stderr, r.stderr


def test_tar_names_not_utf8_and_repeated(tmp_path):
    shard = _tar(tmp_path / "shard.tar", [("a.jpg", b"1"), (b"caf\xe9.jpg", b"2"), ("a.jpg", b"3"),
                                         ("notes.txt", b"-"), ("a.jpg", b"4")])
    rows = _rows([str(shard)])
    assert {k: r["image"] for k, r in rows.items()} == {
        "shard.tar::a.jpg": b"1", "shard.tar::caf\\xe9.jpg": b"2", "shard.tar::a.jpg#dup=2": b"3",
        "shard.tar::a.jpg#dup=3": b"4",
    }
    # cut into units by offset: the same keys and bytes, whichever way it was cut
    units = list_units([str(shard)], SPLIT)
    assert len(units) == 2 and all("members" in u for u in units)
    assert {k: r["image"] for k, r in _rows([str(shard)], SPLIT).items()} == {k: r["image"] for k, r in rows.items()}


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_zip_names_not_utf8_and_repeated(tmp_path):
    archive = _zip(tmp_path / "a.zip", [(b"\xe9t\xe9.jpg", b"1"), ("dup.jpg", b"2"), ("dup.jpg", b"3"),
                                        ("\u00e9t\u00e9.jpg", b"4")])
    rows = _rows([str(archive)])
    assert {k: r["image"] for k, r in rows.items()} == {
        "a.zip::\\xe9t\\xe9.jpg": b"1", "a.zip::dup.jpg": b"2", "a.zip::dup.jpg#dup=2": b"3",
        "a.zip::\u00e9t\u00e9.jpg": b"4",
    }
    units = list_units([str(archive)], SPLIT)
    assert [u["members"] for u in units] == [[0, 2], [2, 4]]
    assert {k: r["image"] for k, r in _rows([str(archive)], SPLIT).items()} == {k: r["image"] for k, r in rows.items()}


def test_parquet_repeated_keys_across_row_groups(tmp_path):
    path = tmp_path / "p.parquet"
    keys = ["k1", "k2", "k1", None, "3", "k1"]  # a null key is its row number ("3"), which a real key repeats
    pq.write_table(pa.table({"key": keys, "image": [bytes([i]) for i in range(6)]}), path, row_group_size=2)
    expected = {"p.parquet::k1": 0, "p.parquet::k2": 1, "p.parquet::k1#dup=2": 2, "p.parquet::3": 3,
                "p.parquet::3#dup=2": 4, "p.parquet::k1#dup=3": 5}
    for options in (SourceOptions(), SourceOptions(files_per_task=2)):  # one unit, or one per row group
        rows = _rows([str(path)], options)
        assert {k: r["image"][0] for k, r in rows.items()} == expected


def test_large_archives_are_cut_into_many_units(tmp_path):
    members = [(f"img_{i:03d}.jpg", bytes([i]) * 1000) for i in range(10)]
    shard = _tar(tmp_path / "big.tar", members)
    options = SourceOptions(files_per_task=64, unit_bytes=3000)  # ~3 members a unit
    units = list_units([str(shard)], options)
    assert len(units) == 4 and len({u["unit_id"] for u in units}) == 4
    assert [len(u["members"]) for u in units] == [3, 3, 3, 1]
    got = _rows([str(shard)], options)
    assert {k: r["image"] for k, r in got.items()} == {f"big.tar::{n}": d for n, d in members}
    # a gzipped tar cannot be cut (no random access): one streamed unit
    gz = tmp_path / "big.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    assert len(list_units([str(gz)], options)) == 1
    assert set(_rows([str(gz)], options)) == {f"big.tar.gz::{n}" for n, _ in members}


def test_truncated_tar_range_gives_error_rows_for_the_rest(tmp_path):
    shard = _tar(tmp_path / "t.tar", [(f"{i}.jpg", b"x" * 2000) for i in range(4)])
    units = list_units([str(shard)], SourceOptions(files_per_task=2, unit_bytes=1))
    data = shard.read_bytes()
    shard.write_bytes(data[: 512 * 3 + 2000 + 1000])  # cut inside member 1's data
    rows = [r for u in units for r in read_unit(u, SourceOptions())]
    assert [r["key"] for r in rows] == [f"t.tar::{i}.jpg" for i in range(4)]
    assert rows[0]["error"] is None
    assert all(r["error"] and "cannot read tar member" in r["error"] for r in rows[1:])


def test_video_with_a_name_that_is_not_utf8(tmp_path):
    av = pytest.importorskip("av")
    import numpy as np

    root = tmp_path / "in"
    root.mkdir()
    path = os.path.join(os.fsencode(root), b"clip\xe9.mp4")
    with av.open(os.fsdecode(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    rows = _rows([str(root)])
    assert rows and all(k.startswith("clip\\xe9.mp4") for k in rows), list(rows)
    assert all(r["error"] is None for r in rows.values()), [r["error"] for r in rows.values()]
