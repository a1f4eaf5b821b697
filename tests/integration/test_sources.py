"""Every input kind -> rows of the data contract, read through local Ray."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from yoloray.data.inputs import INPUT_COLUMNS, SourceError, SourceOptions
from yoloray.data.readers import read_unit
from yoloray.data.sources import read_sources
from yoloray.data.units import list_units
from yoloray.data.video_index import segments_of

W, H, N_FRAMES, FPS = 64, 48, 10, 10.0


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def _jpeg(seed: int, ext: str = ".jpg") -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (H, W, 3), np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def _tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _frame(i: int) -> np.ndarray:
    f = np.full((H, W, 3), i * 20, np.uint8)
    cv2.putText(f, str(i), (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
    return f


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("src")
    d: dict = {"root": root, "files": {}}

    folder = root / "folder"
    for rel, ext in [
        ("images/val/frame_000001.jpg", ".jpg"),
        ("images/val/frame_000002.jpg", ".jpg"),
        ("images/train/deep/x.JPEG", ".jpg"),
        ("c.png", ".png"),
    ]:
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_jpeg(len(d["files"]), ext))
        d["files"][rel] = p.read_bytes()
    (folder / "notes.txt").write_text("not an image")  # skipped inside folders
    d["folder"] = folder

    wds = {}
    for i in range(3):
        wds[f"frame_{i:06d}.jpg"] = _jpeg(100 + i)
        wds[f"frame_{i:06d}.txt"] = b"label"
    d["wds"] = wds
    d["tar"] = _tar(root / "shard-000000.tar", wds)
    d["plain"] = {"sub/a.png": _jpeg(200, ".png"), "b.jpg": _jpeg(201)}
    d["targz"] = _tar(root / "plain.tar.gz", d["plain"], "w:gz")
    d["mixed"] = _tar(
        root / "mixed.tar", {"zero.jpg": b"", "text.jpg": b"hello, I am text", "ok.jpg": _jpeg(7)}
    )

    d["zipm"] = {"z/one.jpg": _jpeg(300), "two.png": _jpeg(301, ".png")}
    d["zip"] = root / "archive.zip"
    with zipfile.ZipFile(d["zip"], "w") as zf:
        for name, data in d["zipm"].items():
            zf.writestr(name, data)
        zf.writestr("__MACOSX/._two.png", b"junk")
        zf.writestr("readme.txt", b"x")

    d["pq_imgs"] = [_jpeg(400 + i) for i in range(5)]
    d["parquet"] = root / "images.parquet"
    pq.write_table(
        pa.table(
            {"key": [f"k{i}" for i in range(5)], "image": pa.array(d["pq_imgs"], pa.binary()), "n": range(5)}
        ),
        d["parquet"],
        row_group_size=2,
    )
    d["parquet_nokey"] = root / "nokey.parquet"
    pq.write_table(pa.table({"img": pa.array(d["pq_imgs"][:3], pa.large_binary())}), d["parquet_nokey"])
    d["parquet_hf"] = root / "hf.parquet"
    hf = pa.StructArray.from_arrays(
        [pa.array(d["pq_imgs"][:2], pa.binary()), pa.array(["a.jpg", "b.jpg"])], names=["bytes", "path"]
    )
    pq.write_table(pa.table({"image": hf}), d["parquet_hf"])

    d["video"] = root / "clip.mp4"
    vw = cv2.VideoWriter(str(d["video"]), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    assert vw.isOpened()
    for i in range(N_FRAMES):
        vw.write(_frame(i))
    vw.release()
    cap, d["frames"] = cv2.VideoCapture(str(d["video"])), []
    while (r := cap.read())[0]:
        d["frames"].append(r[1])
    assert len(d["frames"]) == N_FRAMES
    return d


def _rows(paths, options: SourceOptions | None = None) -> list[dict]:
    rows = read_sources([str(p) for p in paths], options or SourceOptions()).take_all()
    for r in rows:
        assert set(r) == set(INPUT_COLUMNS)
    return rows


def _by_key(rows) -> dict[str, dict]:
    out = {r["key"]: r for r in rows}
    assert len(out) == len(rows), "keys must be unique"
    return out


def test_folder_glob_and_file_uri(ray_local, data):
    folder = data["folder"]
    rows = _by_key(_rows([folder], SourceOptions(files_per_task=2)))
    assert set(rows) == set(data["files"])
    for key, r in rows.items():
        assert r["image"] == data["files"][key]
        assert r["source"] == f"{folder}/{key}"
        assert r["frame"] is None and r["ts"] is None and r["error"] is None

    uri_rows = _by_key(_rows([f"file://{folder}/"]))
    assert set(uri_rows) == set(rows)
    assert uri_rows["c.png"]["source"] == f"file://{folder}/c.png"
    assert uri_rows["c.png"]["image"] == data["files"]["c.png"]

    units = list_units([f"{folder}/images/**/*.jp*g"])
    assert {k for u in units for k in u["keys"]} == {"val/frame_000001.jpg", "val/frame_000002.jpg"}
    units = list_units([f"{folder}/images/**/*.[jJ]*"])
    assert len({k for u in units for k in u["keys"]}) == 3
    units = list_units([f"file://{folder}/images/*/frame_00000[!2].jpg"])
    assert [u["keys"] for u in units] == [["val/frame_000001.jpg"]]
    assert units[0]["source_root"] == f"file://{folder}/images"
    one = list_units([str(folder / "images/val/frame_000001.jpg")])
    assert one[0]["keys"] == ["frame_000001.jpg"]


def test_archives(ray_local, data):
    rows = _by_key(_rows([data["tar"], data["targz"], data["zip"], data["mixed"]]))
    expected = {f"shard-000000.tar::{k}": v for k, v in data["wds"].items() if k.endswith(".jpg")}
    expected |= {f"plain.tar.gz::{k}": v for k, v in data["plain"].items()}
    expected |= {f"archive.zip::{k}": v for k, v in data["zipm"].items()}
    expected |= {"mixed.tar::zero.jpg": b"", "mixed.tar::text.jpg": b"hello, I am text"}
    expected["mixed.tar::ok.jpg"] = _jpeg(7)
    assert set(rows) == set(expected)
    for key, data_bytes in expected.items():
        assert rows[key]["image"] == data_bytes, key  # bytes as-is, even bad ones: the detector reports those
        assert rows[key]["error"] is None
    assert rows["shard-000000.tar::frame_000001.jpg"]["source"] == str(data["tar"])


def test_parquet(ray_local, data):
    rows = _by_key(_rows([data["parquet"], data["parquet_nokey"], data["parquet_hf"]]))
    assert len(list_units([str(data["parquet"])])) == 1  # small row groups: one range of row groups
    units = list_units([str(data["parquet"])], SourceOptions(files_per_task=2))  # row groups of 2, 2, 1 rows
    assert [u["row_groups"] for u in units] == [[0], [1], [2]]
    assert [r["key"] for u in units for r in read_unit(u, SourceOptions())] == [f"images.parquet::k{i}" for i in range(5)]
    for i, img in enumerate(data["pq_imgs"]):
        assert rows[f"images.parquet::k{i}"]["image"] == img
    for i in range(3):
        assert rows[f"nokey.parquet::{i}"]["image"] == data["pq_imgs"][i]
    assert rows["hf.parquet::1"]["image"] == data["pq_imgs"][1]
    assert len(rows) == 10
    with pytest.raises(SourceError, match="no binary column 'pixels'"):
        list_units([str(data["parquet"])], SourceOptions(image_column="pixels"))
    bad = data["root"] / "nobytes.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), bad)
    with pytest.raises(SourceError, match="image_column"):
        list_units([str(bad)])


def _decode(b: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)


def test_video(ray_local, data):
    """A video reads as keyframe segment references (frames are decoded downstream, tests/integration/
    test_video.py): here an MPEG-4 part 2 clip from OpenCV's writer, one segment of every frame."""
    video = data["video"]
    (row,) = _rows([video])
    assert row["key"] == f"clip.mp4#frames=0-{N_FRAMES}" and row["image"] is None and row["error"] is None
    unit = json.loads(row["segment"])
    assert unit["keep"] == list(range(N_FRAMES)) and unit["source"] == str(video)
    kept = lambda options: [i for u in segments_of(list_units([str(video)], options), options)  # noqa: E731
                            for i in u["keep"]]
    assert kept(SourceOptions(video_stride=3)) == [0, 3, 6, 9]
    assert kept(SourceOptions(video_fps=5)) == [0, 2, 4, 6, 8]

    broken = data["root"] / "broken.mp4"
    broken.write_bytes(b"definitely not a video" * 10)
    (row,) = list(read_unit(list_units([str(broken)])[0], SourceOptions()))
    assert row["key"] == "broken.mp4" and row["image"] is None and "cannot open video" in row["error"]


def test_unreadable_member_becomes_error_row(data):
    full = (data["root"] / "mixed.tar").read_bytes()
    trunc = data["root"] / "truncated.tar"
    trunc.write_bytes(full[: 512 * 4 + 100])  # zero.jpg, text.jpg, header + part of the data of ok.jpg
    rows = [r for u in list_units([str(trunc)]) for r in read_unit(u, SourceOptions())]
    assert [r["key"] for r in rows] == [f"truncated.tar::{n}.jpg" for n in ("zero", "text", "ok")]
    assert [r["error"] for r in rows[:2]] == [None, None]
    assert rows[2]["image"] is None and "cannot read tar member" in rows[2]["error"]


def test_keys_stable_across_runs(ray_local, data):
    paths = [data["folder"], data["tar"], data["zip"], data["parquet"], data["video"]]
    a = [r["key"] for r in _rows(paths)]
    b = [r["key"] for r in _rows(paths)]
    assert len(a) == len(set(a)) == 4 + 3 + 2 + 5 + 1  # a video reads as its segment references (one here)
    assert sorted(a) == sorted(b)
    assert [u["unit_id"] for u in list_units([str(p) for p in paths])] == [
        u["unit_id"] for u in list_units([str(p) for p in paths])
    ]


def test_source_errors(data, tmp_path):
    with pytest.raises(SourceError, match="input not found"):
        list_units([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(SourceError, match="no supported inputs under folder"):
        list_units([str(tmp_path / "empty")])
    _tar(tmp_path / "empty.tar", {})
    with pytest.raises(SourceError, match="no image members"):
        list_units([str(tmp_path / "empty.tar")])
    _tar(tmp_path / "labels.tar", {"a.txt": b"x"})
    with pytest.raises(SourceError, match="no image members"):
        list_units([str(tmp_path / "labels.tar")])
    (tmp_path / "zero.tar").write_bytes(b"")
    with pytest.raises(SourceError, match="empty or not a tar"):
        list_units([str(tmp_path / "zero.tar")])
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    with pytest.raises(SourceError, match="no image members"):
        list_units([str(tmp_path / "empty.zip")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match="unsupported input type"):
        list_units([str(tmp_path / "notes.txt")])
    with pytest.raises(SourceError, match="matched no supported files"):
        list_units([str(tmp_path / "*.jpg")])
    with pytest.raises(SourceError, match="video_stride or video_fps"):
        list_units([str(data["video"])], SourceOptions(video_stride=2, video_fps=5))
    with pytest.raises(SourceError, match="no inputs"):
        list_units([])
    # two inputs producing the same key: ask for the common parent
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.jpg").write_bytes(b"x")
    with pytest.raises(SourceError, match="common parent"):
        list_units([str(tmp_path / "a"), str(tmp_path / "b")])
    assert len(list_units([str(tmp_path / "a"), str(tmp_path / "a" / "x.jpg")])[0]["keys"]) == 1  # deduped


def test_empty_archive_inside_folder_is_an_error_row(tmp_path):
    (tmp_path / "shards").mkdir()
    _tar(tmp_path / "shards" / "a.tar", {"x.jpg": b"1"})
    _tar(tmp_path / "shards" / "b.tar", {})
    rows = [r for u in list_units([str(tmp_path / "shards")]) for r in read_unit(u, SourceOptions())]
    assert [(r["key"], r["error"]) for r in rows] == [
        ("a.tar::x.jpg", None),
        ("b.tar", "archive has no image members"),
    ]
