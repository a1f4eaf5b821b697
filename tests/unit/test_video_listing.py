"""Listing a folder of videos: every distinct file is indexed once (hard links share it), on threads, and the
units are the same, in the same order, as indexing the files one by one; an unopenable file is one error unit."""

from __future__ import annotations

import os
import threading

import pytest

from yoloray.data import video_index
from yoloray.data.inputs import SourceOptions
from yoloray.data.scene import render_video_frame
from yoloray.data.synthetic import write_clip
from yoloray.data.units import list_units

W, H, N = 96, 64, 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    for k in range(3):
        write_clip(d / f"cam{k}.mp4", [render_video_frame(k, i, W, H, N)[0] for i in range(N)], W, H, 12, "h264", gop=4)
    os.link(d / "cam0.mp4", d / "cam0-again.mp4")  # the same content under a second name
    (d / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    return d


def test_distinct_files_indexed_once_on_threads_same_units_as_one_by_one(folder, monkeypatch):
    demuxed, threads = [], set()
    real = video_index._demux_index

    def counted(unit):
        demuxed.append(unit["rel"])
        threads.add(threading.current_thread().name)
        return real(unit)

    monkeypatch.setattr(video_index, "_demux_index", counted)
    video_index._LOCAL_INDEXES.clear()
    together = list_units([str(folder)], SourceOptions(video_stride=2))
    assert sorted(demuxed) in (sorted(["cam0.mp4", "cam1.mp4", "cam2.mp4", "broken.mp4"]),
                               sorted(["cam0-again.mp4", "cam1.mp4", "cam2.mp4", "broken.mp4"]))
    assert all(name.startswith("video-index") for name in threads)

    video_index._LOCAL_INDEXES.clear()
    one_by_one = []
    for name in sorted(os.listdir(folder)):
        base = {"kind": "video", "root": str(folder), "source": f"{folder}/{name}", "prefix": name, "rel": name}
        one_by_one += video_index.video_units(base, SourceOptions(video_stride=2))
    assert together == one_by_one

    broken = [u for u in together if u["rel"] == "broken.mp4"]
    assert len(broken) == 1 and broken[0]["error"].startswith("cannot open video: ")
    kept = sum(len(u["keep"]) for u in together if "error" not in u)
    assert kept == 4 * N // 2  # four readable files, every second frame
