"""The live progress line (observe/live.py) and a batch job's progress against its units
(observe/job_progress.py): no Ray, real tar/zip files, rows fed as the driver feeds them."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile

import pyarrow as pa

from yoloray.data.inputs import SourceOptions
from yoloray.observe.job_progress import JobProgress, expected_rows
from yoloray.observe.live import LiveLine, Rate, duration


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def rows(sources: list[str], errors: int = 0) -> pa.Table:
    err = [None] * (len(sources) - errors) + ["truncated image"] * errors
    return pa.table({"source": pa.array(sources, pa.string()), "error": pa.array(err, pa.string())})


def test_duration_and_rate_fields():
    assert duration(7) == "0:07" and duration(205) == "3:25" and duration(3723) == "1:02:03"
    r = Rate(total=400, start=0.0)
    r.done = 100
    text = r.fields("frames", now=10.0)
    assert text == "frames 100/400 (25%)  10.0 frames/s  ETA 0:30"
    assert r.fields("frames", now=10.0, tty=True).startswith("[######..................] frames 100/400")
    r.total = None
    assert r.fields("frames", now=10.0) == "frames 100  10.0 frames/s"


def test_periodic_lines_when_not_a_terminal():
    out = io.StringIO()
    n = {"v": 0}

    def render(elapsed):
        n["v"] += 1
        return f"tick {n['v']}"

    line = LiveLine("job", render, stream=out, interval_s=0.05).start()
    time.sleep(0.3)
    line.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and all(ln.startswith("job: tick ") for ln in lines)
    assert "\r" not in out.getvalue()
    line.close()  # idempotent: no second final line
    assert out.getvalue().splitlines() == lines


def test_terminal_redraws_one_line():
    out = Tty()
    line = LiveLine("job", lambda e: "x" * 10, stream=out)
    assert line.tty and line.interval_s < 1
    line.draw()
    line.render = lambda e: "short"
    line.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, finished once
    assert text == "\rjob: " + "x" * 10 + "\rjob: short" + " " * 5 + "\n"  # the longer line is blanked


def test_totals_from_units(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for name in ("1.jpg", "2.png", "notes.txt", "3.JPG"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        zf.writestr("x.jpg", b"abc")
        zf.writestr("__MACOSX/._x.jpg", b"abc")
        zf.writestr("readme.md", b"abc")
    root = str(tmp_path)
    opts = SourceOptions()
    tar = {"unit_id": "tar:a", "kind": "tar", "root": root, "source": f"{root}/a.tar", "prefix": "a.tar"}
    zip_ = {"unit_id": "zip:b", "kind": "zip", "root": root, "source": f"{root}/b.zip", "prefix": "b.zip"}
    assert expected_rows(tar, opts) == 3
    assert expected_rows(zip_, opts) == 1
    assert expected_rows({**tar, "root": "s3://bucket", "source": "s3://bucket/a.tar"}, opts) is None
    video = {"unit_id": "v", "kind": "video", "source": "v.mp4", "start": 0, "stop": 10}
    assert expected_rows(video, SourceOptions(video_stride=3)) == 4
    assert expected_rows({**video, "stop": None}, opts) is None
    assert expected_rows(video, SourceOptions(video_fps=5)) is None
    assert expected_rows({"kind": "parquet", "num_rows": 7}, opts) == 7


def test_job_progress_counts_units_frames_and_errors(tmp_path):
    units = [
        {"unit_id": "files:1", "kind": "files", "root": "/r", "source_root": "/r", "keys": ["a.jpg", "b.jpg"]},
        {"unit_id": "parquet:p#rg=0", "kind": "parquet", "source": "/r/p.parquet", "num_rows": 3},
        {"unit_id": "parquet:p#rg=1", "kind": "parquet", "source": "/r/p.parquet", "num_rows": 2},
    ]
    out = io.StringIO()
    p = JobProgress(units, SourceOptions(), stream=out, interval_s=60)
    assert p.units_total == 3 and p.frames.total == 7
    assert "starting" in p.render(1.0)
    p.begin(0)
    p.rows(rows(["/r/a.jpg", "/r/p.parquet", "/r/p.parquet"], errors=1))
    assert p.units_done == 0 and p.errors == 1
    p.rows(rows(["/r/b.jpg"]))
    assert p.units_done == 1  # the files unit has both its images
    text = p.render(5.0)
    assert text.startswith("units 1/3  frames 4/7 (57%)") and "errors 1" in text and "ETA" in text
    p.rows(rows(["/r/p.parquet"] * 3))
    assert p.units_done == 3 and p.frames.done == 7
    with p:
        pass
    assert out.getvalue().splitlines()[-1].startswith("infer: units 3/3  frames 7/7 (100%)")


def test_unknown_totals_and_a_resumed_run():
    units = [{"unit_id": "video:v#0-end", "kind": "video", "source": "v.mp4", "start": 0, "stop": None}]
    out = io.StringIO()
    p = JobProgress(units, SourceOptions(), stream=out, interval_s=60)
    assert p.frames.total is None
    with p:
        p.begin(5)
        p.rows(rows(["v.mp4"] * 4))
        assert "frames 9  " in p.render(3.0) and "(5 done before)" in p.render(3.0)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("infer: units 1/1  frames 9/9 (100%)"), last  # at the end, what came is the total


def test_nothing_printed_for_a_run_with_nothing_to_do():
    out = io.StringIO()
    p = JobProgress([{"unit_id": "f", "kind": "files", "source_root": "", "keys": ["a.jpg"]}], stream=out,
                    interval_s=60)
    with p:  # run_job returned before starting the Dataset (every input already had results)
        pass
    assert out.getvalue() == "" and p.live._thread is None


def test_epoch_lines_of_a_finetune_run():
    from types import SimpleNamespace

    from yoloray.observe.epochs import epoch_line, epoch_progress

    assert epoch_line("finetune", 3, 30, 200.0, {"metrics/mAP50-95(B)": 0.41234}) == (
        "finetune: epoch 3/30 (10%)  0.9 epochs/min  ETA 30:00  mAP50-95 0.412")
    assert epoch_line("finetune", 30, 30, 2000.0) == "finetune: epoch 30/30 (100%)  0.9 epochs/min"
    out = io.StringIO()
    callback = epoch_progress(stream=out)
    callback(SimpleNamespace(epoch=0, epochs=2, metrics={}))  # ultralytics' trainer: epoch is 0-based
    callback(SimpleNamespace(epoch=1, epochs=2))
    lines = out.getvalue().splitlines()
    assert [ln.split("  ")[0] for ln in lines] == ["finetune: epoch 1/2 (50%)", "finetune: epoch 2/2 (100%)"]


def test_archive_members_are_counted_beside_the_start(tmp_path, monkeypatch):
    """Counting a tar's members (reading its headers) does not hold up the job's start: the progress exists at
    once with no frame total and no ETA (units of uncounted sources cannot count as done, so an ETA from units
    would be wrong), and the total appears when the count is done, however long it takes."""
    import threading

    from yoloray.observe import job_progress

    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for name in ("1.jpg", "2.jpg", "3.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
    release = threading.Event()
    count = job_progress._count_members

    def slow_count(unit):
        release.wait(10)
        return count(unit)

    monkeypatch.setattr(job_progress, "_count_members", slow_count)
    root = str(tmp_path)
    units = [{"unit_id": "tar:a", "kind": "tar", "root": root, "source": f"{root}/a.tar", "prefix": "a.tar"},
             {"unit_id": "files:1", "kind": "files", "root": root, "source_root": root, "keys": ["x.jpg"]}]
    p = JobProgress(units, SourceOptions(), stream=io.StringIO(), interval_s=60)
    assert p.frames.total is None and p.units_total == 2  # constructed while the count is still waiting
    p.begin(0)
    p.rows(pa.table({"source": [f"{root}/x.jpg", f"{root}/a.tar"], "error": pa.nulls(2, pa.string())}))
    p.rows(pa.table({"source": [f"{root}/a.tar"], "error": pa.nulls(1, pa.string())}))
    line = p.render(5.0)
    assert "units 1/2" in line and "(counting totals)" in line and "ETA" not in line, line
    release.set()
    p.counted.join(10)
    assert p.frames.total == 4 and [g.expected for g in p.groups] == [1, 3]
    line = p.render(6.0)
    assert "frames 3/4" in line and "ETA" in line and "counting" not in line, line
    p.live.close()  # begin() started the line's thread


def test_video_files_counted_from_their_container_beside_the_start(tmp_path):
    """A video file unit (data/units.py lists one per file, nothing demuxed) counts the frames its container
    states (MP4), over --video-stride, in the count thread; a Matroska file states none, and a --video-fps
    resample or a time range is never counted: the total is then unknown."""
    from yoloray.data.scene import render_video_frame
    from yoloray.data.synthetic import write_clip
    from yoloray.data.units import list_units

    frames = [render_video_frame(1, i, 64, 48, 10)[0] for i in range(10)]
    write_clip(tmp_path / "a.mp4", frames, 64, 48, 10, "h264", gop=5)
    stride = SourceOptions(video_stride=3)
    units = list_units([str(tmp_path / "a.mp4")], stride)
    assert expected_rows(units[0], stride) == 4  # frames 0, 3, 6, 9
    p = JobProgress(units, stride, stream=io.StringIO(), interval_s=60)
    p.counted.join(10)
    assert p.frames.total == 4
    for options in (SourceOptions(video_fps=5), SourceOptions(video_end=0.5)):
        p = JobProgress(units, options, stream=io.StringIO(), interval_s=60)
        assert p.counted is None and p.frames.total is None
    write_clip(tmp_path / "b.mkv", frames, 64, 48, 10, "h264", gop=5)
    (tmp_path / "c.mp4").write_bytes(b"not a video")
    both = list_units([str(tmp_path / "b.mkv"), str(tmp_path / "c.mp4")], stride)
    assert [expected_rows(u, stride) for u in both] == [None, None]
