"""Video in the batch job on a local Ray (CPU, PyAV, the demo detector): keyframe segments from the container
index (made in each file's read task: the listing demuxes nothing), the same rows as segments listed on the
driver, one row per sampled frame with the container's presentation time, a corrupt stretch as error rows, an
unopenable or empty file as one error row, segment-level resume, `yoloray detect clip.mp4`.

End states only: timings never go into assertions. NVDEC paths are in tests/gpu/test_video_gpu.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from yoloray.batch import run_job
from yoloray.config import Profile
from yoloray.data import video_index
from yoloray.data.inputs import SourceOptions
from yoloray.data.readers import read_tables
from yoloray.data.scene import render_video_frame
from yoloray.data.sources import read_units
from yoloray.data.synthetic import write_clip
from yoloray.data.units import list_units
from yoloray.data.video_index import segments_of
from yoloray.profile import resolve_here
from yoloray.vision.decoders.pyav import decode_segment

W, H, N, GOP, FPS = 320, 192, 36, 12, 30
pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    """The same 36 rendered frames as H.264 and HEVC mp4s (B-frames, a keyframe every 12 frames), the frames
    as OpenCV decodes them, and a copy of the H.264 clip with garbage over a quarter of its media data."""
    d = tmp_path_factory.mktemp("clips")
    frames = [render_video_frame(3, i, W, H, N)[0] for i in range(N)]
    out = {"dir": d}
    for codec in ("h264", "hevc"):
        out[codec] = d / f"{codec}.mp4"
        write_clip(out[codec], frames, W, H, FPS, codec, gop=GOP)
    cap = cv2.VideoCapture(str(out["h264"]))
    out["cv2"] = [r[1] for r in iter(cap.read, (False, None)) if r[0]]
    cap.release()
    data = bytearray(out["h264"].read_bytes())
    mdat = data.index(b"mdat") + 4
    size = int.from_bytes(data[mdat - 8 : mdat - 4], "big") - 8
    start = mdat + size // 3
    data[start : start + size // 4] = np.random.default_rng(0).integers(0, 256, size // 4, np.uint8).tobytes()
    out["corrupt"] = d / "corrupt.mp4"
    out["corrupt"].write_bytes(bytes(data))
    return out


@pytest.fixture(scope="module")
def config(demo_model) -> Profile:
    return resolve_here(Profile(model=demo_model, imgsz=(H, W), batch_size=8, device="cpu"))  # no `auto` left


def _units(path, **options) -> list[dict]:
    """The file's keyframe segments, indexed here on the driver (the job indexes it in its read task)."""
    return list(segments_of(list_units([str(path)], SourceOptions(**options)), SourceOptions(**options)))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_keyframe_segments_decode_every_frame_once(clips, codec, monkeypatch):
    monkeypatch.setattr(video_index, "SEGMENT_MIN_FRAMES", 1)
    units = _units(clips[codec])
    assert [(u["start"], u["stop"]) for u in units] == [(0, 12), (12, 24), (24, 36)]
    assert len({u["unit_id"] for u in units}) == 3
    decoded = {}
    for u in units:
        for i, image, error in decode_segment(u):
            assert error is None and i not in decoded
            decoded[i] = image
    assert sorted(decoded) == list(range(N))
    if codec == "h264":  # the frames OpenCV's FFmpeg reader gives, in presentation order (B-frames reordered)
        worst = max(int(np.abs(decoded[i].astype(int) - clips["cv2"][i]).max()) for i in range(N))
        assert worst <= 2, worst
    # the reader sends one segment reference per unit, never frames
    (table,) = list(read_tables(units[1], SourceOptions()))
    assert table.num_rows == 1 and table.column("image").null_count == 1
    assert json.loads(table.column("segment")[0].as_py())["keep"] == list(range(12, 24))
    # x265's default open GOPs (leading frames after a CRA keyframe) are flagged for NVDEC (vision/decoders/nvdec.py)
    assert all(u["open_gop"] == (codec == "hevc") for u in units)


def test_closed_gop_hevc_is_not_flagged(clips, tmp_path):
    path = tmp_path / "closed.mp4"
    write_clip(path, [render_video_frame(3, i, W, H, N)[0] for i in range(N)], W, H, FPS, "hevc", gop=GOP,
               open_gop=False)
    assert not video_index.index_video({"kind": "video", "root": str(tmp_path), "prefix": path.name}).open_gop


def test_sampling_and_time_range_select_frames(clips):
    keep = lambda **o: [i for u in _units(clips["h264"], **o) for i in u["keep"]]  # noqa: E731
    assert keep(video_stride=5) == list(range(0, N, 5))
    assert keep(video_fps=10) == list(range(0, N, 3))
    assert keep(video_start=0.4, video_end=0.8) == list(range(12, 24))  # ts = i / 30 from the container


def test_job_rows_corrupt_stretch_and_unopenable_file(clips, config, tmp_path):
    broken = clips["dir"] / "not_a_video.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    out = tmp_path / "out"
    summary = run_job([str(clips["corrupt"]), str(broken)], str(out), config, rows_per_part=16)
    rows = pq.read_table(out).to_pylist()
    keys = Counter(r["key"] for r in rows)
    assert max(keys.values()) == 1
    assert set(keys) == {f"corrupt.mp4#frame={i}" for i in range(N)} | {"not_a_video.mp4"}
    (bad,) = [r for r in rows if r["key"] == "not_a_video.mp4"]
    assert "cannot open video" in bad["error"]
    frames = sorted((r for r in rows if r["frame"] is not None), key=lambda r: r["frame"])
    lost = [r["frame"] for r in frames if r["error"]]
    assert 0 < len(lost) < N, lost  # the corrupt stretch, and only it, has no results
    assert all("cannot decode video frame" in r["error"] for r in frames if r["error"])
    assert all(r["width"] == W and r["ts"] == pytest.approx(r["frame"] / FPS) for r in frames if not r["error"])
    assert sum(bool(r["detections"]) for r in frames if not r["error"]) > 0
    assert summary.errors == {"corrupt video": len(lost), "unreadable video": 1}


def test_resume_redoes_only_missing_frames_of_a_segment(clips, config, tmp_path):
    """A first run that stopped mid-segment (here: one that only asked for the first 0.5 s) leaves some of a
    segment's frames done; the rerun decodes the segment again but detects and writes only the rest. The file
    is one unit in both runs: the rerun with other source options is not taken for the finished first run."""
    out = tmp_path / "out"
    first = run_job([str(clips["hevc"])], str(out), config, source_options=SourceOptions(video_end=0.5),
                    rows_per_part=4)
    assert first.images == 15  # frames 0..14 of the one segment (all 36 frames)
    second = run_job([str(clips["hevc"])], str(out), config, rows_per_part=4)
    assert (second.images, second.skipped_done) == (N - 15, 15)
    keys = pq.read_table(out, columns=["key"]).column("key").to_pylist()
    assert sorted(keys) == sorted(f"hevc.mp4#frame={i}" for i in range(N))
    third = run_job([str(clips["hevc"])], str(out), config, rows_per_part=4)
    assert third.images == 0


def test_job_rows_are_the_driver_listed_segments_rows(clips, config, tmp_path):
    """Videos listed as whole files and indexed in their read tasks give the rows segment units listed on the
    driver gave: the same reference rows in the same order within a file, then the same output rows; a file
    that cannot be opened (not a video, zero bytes, a Matroska header without frames) is one error row."""
    import av

    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("h264", "hevc", "corrupt"):
        (folder / f"{name}.mp4").hardlink_to(clips[name])
    (folder / "not_a_video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    (folder / "zero.mp4").write_bytes(b"")
    with av.open(str(folder / "no_frames.mkv"), "w") as empty:
        stream = empty.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        empty.start_encoding()
    bad = {"not_a_video.mp4", "zero.mp4", "no_frames.mkv"}
    options = SourceOptions(video_stride=2)
    files = list_units([str(folder)], options)
    assert len(files) == 6 and all("keep" not in u for u in files)
    segments = list(segments_of(files, options))  # what list_units made before: the driver's index

    def read(units):
        rows = read_units(units, options).take_all()
        return {s: [r for r in rows if r["source"] == s] for s in sorted({r["source"] for r in rows})}

    by_file, by_segment = read(files), read(segments)
    assert by_file == by_segment  # same rows, same order within each file
    errors = {r["key"]: r["error"] for rows in by_file.values() for r in rows if r["error"]}
    assert set(errors) == bad and all(e.startswith("cannot open video: ") for e in errors.values())

    def job(units, name):
        run_job([str(folder)], str(tmp_path / name), config, source_options=options, units=units, rows_per_part=16)
        return sorted(pq.read_table(tmp_path / name).to_pylist(), key=lambda r: r["key"])

    rows = job(files, "by-file")
    assert rows == job(segments, "by-segment")
    expected = {f"{u['prefix']}#frame={i}" for u in segments if "keep" in u for i in u["keep"]} | bad
    assert Counter(r["key"] for r in rows) == Counter(expected)  # every kept frame once, one row per bad file


def test_detect_cli_on_a_clip(clips, demo_model):
    r = subprocess.run(
        [sys.executable, "-m", "yoloray.cli", "detect", str(clips["h264"]), "--imgsz", f"{H}x{W}", "--device", "cpu",
         "--json", "--model", demo_model],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout)
    assert [row["frame"] for row in rows] == list(range(N))
    assert all(row["error"] is None and row["key"] == f"h264.mp4#frame={row['frame']}" for row in rows)
    assert sum(bool(row["detections"]) for row in rows) > N / 2


def test_cpu_share_and_actor_decode_agree(clips, config):
    """The same segment decoded upstream in a Ray task (decode cpu) and by the actor itself (the path GPU
    actors take, PyAV here) gives the same rows."""
    from yoloray.batch.predictor import Predictor
    from yoloray.batch.video import expand_on_cpu

    (unit,) = _units(clips["h264"], video_stride=4)
    rows = pa.concat_tables(list(read_tables(unit, SourceOptions())))
    predictor = Predictor(config.model_dump(mode="json"))
    in_actor = predictor(rows).sort_by("key").to_pylist()
    upstream = predictor(expand_on_cpu(rows, config.imgsz, 1.0)).sort_by("key").to_pylist()
    assert [r["key"] for r in in_actor] == [f"h264.mp4#frame={i}" for i in sorted(range(0, N, 4), key=str)]
    assert in_actor == upstream


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """Three segments as the workers cut them (SEGMENT_MIN_FRAMES frames each; a patch would not reach them)."""
    n = 3 * video_index.SEGMENT_MIN_FRAMES
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    write_clip(path, [render_video_frame(1, i, 96, 64, n)[0] for i in range(n)], 96, 64, FPS, "h264",
               gop=video_index.SEGMENT_MIN_FRAMES)
    return path


def test_resume_drops_done_segments_and_redoes_the_rest(long_clip, config, tmp_path):
    """A first run that ended inside the second segment: the rerun drops the first segment whole, decodes the
    second for its missing frames only and does the rest; every kept frame once."""
    every = SourceOptions(video_stride=30)
    segments = list(segments_of(list_units([str(long_clip)], every), every))
    assert len(segments) >= 2
    second = segments[1]["keep"]
    assert len(second) >= 2
    end = (second[0] + 1) / FPS  # the first run stops after the second segment's first kept frame
    out = tmp_path / "out"
    first = run_job([str(long_clip)], str(out), config, rows_per_part=4,
                    source_options=SourceOptions(video_stride=30, video_end=end))
    assert first.images == len(segments[0]["keep"]) + 1
    rerun = run_job([str(long_clip)], str(out), config, rows_per_part=4, source_options=every)
    kept = [i for u in segments for i in u["keep"]]
    assert (rerun.images, rerun.skipped_done) == (len(kept) - first.images, first.images)
    keys = Counter(pq.read_table(out, columns=["key"]).column("key").to_pylist())
    assert keys == Counter(f"long.mp4#frame={i}" for i in kept)


def test_one_files_segments_spread_over_blocks(long_clip, config):
    """A file is one read task, which emits its segments together; they leave the read in blocks of one actor
    call's frames (here one segment each), so the CPU decode and the actors' calls take them in parallel
    instead of one after another in the file's read task."""
    from yoloray.batch.pipeline import detect
    from yoloray.batch.video import frames_per_row, kept_per_segment

    options = SourceOptions(video_stride=4)  # >= 30 frames a segment; a call is 8 x 4 = 32 frames
    units = list_units([str(long_clip)], options)
    assert len(units) == 1 and "keep" not in units[0]  # the listing indexed nothing
    segments = list(segments_of(units, options))  # as the read task cuts them
    assert len(segments) >= 2
    kept = [i for u in segments for i in u["keep"]]
    assert kept_per_segment(units, options) == len(kept) / len(segments)
    ds = detect(read_units(units, options), config.replace(decode="cpu"),
                frames_per_row=frames_per_row(len(kept) / len(segments), "cpu", 0.0),
                segment_frames=len(kept) / len(segments))
    rows = ds.materialize()
    assert sorted(r["frame"] for r in rows.iter_rows()) == kept
    stats = rows.stats()
    (read,) = re.findall(r"Operator \d+ (ReadReadUnits\S*): (\d+) tasks executed, (\d+) blocks produced", stats)
    assert "expand_on_cpu" not in read[0] and read[1:] == ("1", str(len(segments))), stats  # a block a segment


def test_exactly_once_after_a_killed_driver(clips, demo_model, tmp_path):
    """As for stills (test_batch.py): kill the driver once a part is on disk, rerun, every frame exactly once."""
    import os
    import signal
    import time

    import ray

    folder = tmp_path / "clips"
    folder.mkdir()
    for k in range(6):  # six files (six units) of the same clip
        os.link(clips["h264"], folder / f"cam{k}.mp4")
    expected = {f"cam{k}.mp4#frame={i}" for k in range(6) for i in range(0, N, 3)}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "yoloray.cli", "infer", str(folder), "--out", str(out), "--imgsz", f"{H}x{W}",
           "--batch-size", "4", "--device", "cpu", "--model", demo_model, "--video-stride", "3",
           "--address", ray.get_runtime_context().gcs_address]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"YOLORAY_ROWS_PER_PART": "4"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("part-*.parquet")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    done = {k for p in out.glob("part-*.parquet") for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()}
    assert done and done <= expected, f"first run's parts: {len(done)} keys, {len(done - expected)} unexpected"
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    keys = pq.read_table(out, columns=["key"]).column("key").to_pylist()
    counts = Counter(keys)
    assert counts == Counter(expected), (  # what went wrong, if this ever fails again (it did once, 2026-12-01)
        f"every sampled frame exactly once: {len(done)} done before the rerun; missing "
        f"{sorted(expected - set(keys))[:5]}, repeated {[k for k, n in counts.items() if n > 1][:5]}; "
        f"rerun said: {second.stdout[-1500:]}")
    if len(done) < len(expected):
        assert f"{len(expected) - len(done):,} new ({len(done):,} already done" in second.stdout, second.stdout[-1500:]


def test_variable_frame_rate_gets_the_container_times(tmp_path):
    """A VFR clip (irregular presentation times, B-frames): ts is each frame's own time from the container,
    and frame N is the N-th in presentation order."""
    from fractions import Fraction

    import av

    times_ms = [0, 33, 66, 150, 183, 300, 333, 500, 533, 566, 700, 733]
    frames = [render_video_frame(4, i, W, H, len(times_ms))[0] for i in range(len(times_ms))]
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"g": "6", "bf": "2"}
        for img, t in zip(frames, times_ms):
            f = av.VideoFrame.from_ndarray(img, format="bgr24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    (unit,) = _units(path)
    from yoloray.data.video_index import frame_ts

    assert [frame_ts(unit, i) for i in unit["keep"]] == pytest.approx([t / 1000 for t in times_ms], abs=1e-3)
    decoded = {i: im for i, im, err in decode_segment(unit) if err is None}
    assert sorted(decoded) == list(range(len(times_ms)))
    for i, im in decoded.items():  # the right picture at the right index
        diffs = [np.abs(im.astype(int) - f).mean() for f in frames]
        assert int(np.argmin(diffs)) == i
