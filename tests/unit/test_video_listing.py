"""Listing a folder of videos demuxes nothing: one file unit per video. A file is indexed where its segments are
needed: in its read task (data/readers.py), or on the driver for a sample (`segments_of`: every distinct file
once, hard links sharing it, on threads, at most `files` of them); the segments and rows are the same as
indexing the files one by one; an unopenable file is one error unit and one error row."""

from __future__ import annotations

import os
import threading

import pytest

from yoloray.data import video_index
from yoloray.data.inputs import SourceOptions
from yoloray.data.readers import read_unit
from yoloray.data.scene import render_video_frame
from yoloray.data.synthetic import write_clip
from yoloray.data.units import list_units

W, H, N = 96, 64, 12
NAMES = ["broken.mp4", "cam0-again.mp4", "cam0.mp4", "cam1.mp4", "cam2.mp4"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    for k in range(3):
        write_clip(d / f"cam{k}.mp4", [render_video_frame(k, i, W, H, N)[0] for i in range(N)], W, H, 12, "h264", gop=4)
    os.link(d / "cam0.mp4", d / "cam0-again.mp4")  # the same content under a second name
    (d / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    return d


def _one_by_one(folder, options: SourceOptions) -> list[dict]:
    video_index._LOCAL_INDEXES.clear()
    units = []
    for name in sorted(os.listdir(folder)):
        base = {"kind": "video", "root": str(folder), "source": f"{folder}/{name}", "prefix": name, "rel": name}
        units += video_index.video_units(base, options)
    return units


def _no_demux(unit):
    raise AssertionError(f"listing demuxed {unit['rel']}")


def test_listing_demuxes_nothing_one_file_unit_per_video(folder, monkeypatch):
    monkeypatch.setattr(video_index, "_demux_index", _no_demux)
    units = list_units([str(folder)], SourceOptions(video_stride=2))
    assert [u["rel"] for u in units] == NAMES
    for u in units:
        assert u == {"unit_id": f"video:{folder}/{u['rel']}", "kind": "video", "root": str(folder),
                     "source": f"{folder}/{u['rel']}", "prefix": u["rel"], "rel": u["rel"]}
        assert video_index.is_video_file(u)


def test_segments_of_indexes_each_content_once_on_threads_same_as_one_by_one(folder, monkeypatch):
    options = SourceOptions(video_stride=2)
    units = list_units([str(folder)], options)
    demuxed, threads = [], set()
    real = video_index._demux_index

    def counted(unit):
        demuxed.append(unit["rel"])
        threads.add(threading.current_thread().name)
        return real(unit)

    monkeypatch.setattr(video_index, "_demux_index", counted)
    video_index._LOCAL_INDEXES.clear()
    together = list(video_index.segments_of(units, options))
    assert sorted(demuxed) in (sorted(["cam0.mp4", "cam1.mp4", "cam2.mp4", "broken.mp4"]),
                               sorted(["cam0-again.mp4", "cam1.mp4", "cam2.mp4", "broken.mp4"]))
    if (os.cpu_count() or 1) > 1:
        assert any(name.startswith("video-index") for name in threads)
    assert together == _one_by_one(folder, options)

    broken = [u for u in together if u["rel"] == "broken.mp4"]
    assert len(broken) == 1 and broken[0]["error"].startswith("cannot open video: ")
    kept = sum(len(u["keep"]) for u in together if "error" not in u)
    assert kept == 4 * N // 2  # four readable files, every second frame
    assert list(video_index.segments_of(together, options)) == together  # segments pass through as they are


def test_segments_of_a_sample_indexes_only_its_files(folder, monkeypatch):
    options = SourceOptions()
    units = list_units([str(folder)], options)
    demuxed = []
    real = video_index._demux_index
    monkeypatch.setattr(video_index, "_demux_index", lambda unit: demuxed.append(unit["rel"]) or real(unit))
    video_index._LOCAL_INDEXES.clear()
    sampled = list(video_index.segments_of(units, options, files=2))
    assert sorted(demuxed) == ["broken.mp4", "cam0-again.mp4"]
    assert sampled[2:] == units[2:]  # the rest pass through, not indexed
    assert [u["rel"] for u in sampled[:2]] == ["broken.mp4", "cam0-again.mp4"] and "keep" in sampled[1]


def test_a_file_unit_reads_as_its_segments_reference_rows_in_order(folder, monkeypatch):
    """The read task indexes the file: the rows (keys, order, segment references) are those of the segments
    `video_units` cuts on the driver; the unopenable file is one error row."""
    monkeypatch.setattr(video_index, "SEGMENT_MIN_FRAMES", 1)  # a segment per GOP: several rows per file
    options = SourceOptions(video_stride=3)
    units = list_units([str(folder)], options)
    read = [r for u in units for r in read_unit(u, options)]
    expected = [r for u in _one_by_one(folder, options) for r in video_index.reference_rows(u)]
    assert read == expected
    assert [r["key"] for r in read if r["source"].endswith("/cam1.mp4")] == [
        "cam1.mp4#frames=0-4", "cam1.mp4#frames=4-8", "cam1.mp4#frames=8-12"]
    (bad,) = [r for r in read if r["source"].endswith("/broken.mp4")]
    assert bad["key"] == "broken.mp4" and bad["segment"] is None and bad["error"].startswith("cannot open video: ")


def test_content_cache_is_bounded_by_weight(tmp_path):
    """Read workers each keep one: its bound is the frames the indexes hold, not a count of files."""
    paths = []
    for name in "abcd":
        (tmp_path / name).write_bytes(name.encode())
        paths.append(str(tmp_path / name))
    os.link(paths[0], tmp_path / "a-again")
    made = []
    cache = video_index.ContentCache(limit=5, weight=lambda value: value)
    get = lambda path, value: cache.get(path, lambda: made.append(value) or value)  # noqa: E731
    assert get(paths[0], 3) == 3 and get(str(tmp_path / "a-again"), 9) == 3  # a hard link is the same content
    assert get(paths[1], 2) == 2 and made == [3, 2]  # 5 in all: both kept
    assert get(paths[2], 1) == 1 and get(paths[0], 3) == 3 and made == [3, 2, 1, 3]  # over 5: started again
    assert get(paths[3], 6) == 6 and get(paths[3], 6) == 6 and made[-2:] == [6, 6]  # heavier than all: not kept
