"""The batch job end to end on a local Ray (CPU, the bundled demo detector): every source kind, bad inputs,
exactly-once after a killed driver or a killed actor, the Python API inside a user's pipeline, CLI errors.

End states only: timings never go into assertions.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from yoloray.batch import ActorOptions, JobError, detect, run_job
from yoloray.batch.pipeline import JOB_FILE, SUMMARY_FILE, error_kind
from yoloray.config import Profile
from yoloray.data.inputs import SourceOptions
from yoloray.data.scene import CLASS_NAMES
from yoloray.data.sink import OUTPUT_SCHEMA
from yoloray.data.synthetic import generate
from yoloray.profile import resolve_here

W, H = 320, 192  # generated frame size
FRAMES, SHARD, VIDEO_FRAMES = 12, 6, 10
MANY, PER_SHARD = 150, 5  # inputs of the kill/resume jobs
ROWS_PER_PART = 8
YOLORAY = [sys.executable, "-m", "yoloray.cli"]
ENGINE_FLAGS = ["--imgsz", f"{H}x{W}", "--batch-size", "8", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("ray_local")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    return generate(
        tmp_path_factory.mktemp("footage"), frames=FRAMES, seed=0, width=W, height=H,
        video_frames=VIDEO_FRAMES, shard_size=SHARD, workers=1,
    )


@pytest.fixture(scope="module")
def config(demo_model) -> Profile:
    return resolve_here(Profile(model=demo_model, imgsz=(H, W), batch_size=8, device="cpu"))  # no `auto` left


@pytest.fixture(scope="module")
def jpegs(footage) -> list[bytes]:
    return [p.read_bytes() for p in sorted(footage.root.glob("images/*/*.jpg"))]


@pytest.fixture(scope="module")
def many(tmp_path_factory, jpegs) -> Path:
    """A folder of MANY small frames (the generated ones repeated under distinct names) in tar shards of
    PER_SHARD, so the job runs as several Ray Data tasks and writes several parts over time."""
    d = tmp_path_factory.mktemp("many")
    for s in range(MANY // PER_SHARD):
        with tarfile.open(d / f"shard-{s:02d}.tar", "w") as tf:
            for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                data = jpegs[i % len(jpegs)]
                info = tarfile.TarInfo(f"img_{i:04d}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return d


def many_keys() -> set[str]:
    return {f"shard-{i // PER_SHARD:02d}.tar::img_{i:04d}.jpg" for i in range(MANY)}


# ------------------------------------------------------------------------------------------------ helpers
def parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def read_out(out: Path) -> pa.Table:
    files = parts(out)
    assert files, f"no part files in {out}"
    for f in files:
        assert pq.read_schema(f).remove_metadata().equals(OUTPUT_SCHEMA), f
    return pa.concat_tables(pq.read_table(f) for f in files)


def assert_exactly_once(out: Path, expected: set[str]) -> pa.Table:
    table = read_out(out)
    keys = table.column("key").to_pylist()
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes, f"keys written more than once: {dupes[:5]}"
    assert set(keys) == expected, (
        f"missing {sorted(expected - set(keys))[:5]}, unexpected {sorted(set(keys) - expected)[:5]}"
    )
    return table


def assert_detections_sane(table: pa.Table, config: Profile) -> None:
    rows = table.to_pylist()
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows if r["error"]][:3]
    assert all((r["width"], r["height"]) == (W, H) for r in rows)
    assert {r["engine"] for r in rows} == {config.output_key()}
    with_boxes = sum(1 for r in rows if r["detections"])
    assert with_boxes >= len(rows) / 2, f"the demo detector found parts on only {with_boxes}/{len(rows)} frames"
    eps = 0.5
    for r in rows:
        for d in r["detections"]:
            assert -eps <= d["x1"] < d["x2"] <= r["width"] + eps, (r["key"], d)
            assert -eps <= d["y1"] < d["y2"] <= r["height"] + eps, (r["key"], d)
            assert config.conf <= d["score"] <= 1.0
            assert d["label"] == CLASS_NAMES[d["class_id"]]


def frame_names(lo: int, hi: int) -> list[str]:
    return [f"frame_{i:06d}.jpg" for i in range(lo, hi)]


def cli_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "YOLORAY_ROWS_PER_PART")}
    env.update({"YOLO_OFFLINE": "true", "RAY_USAGE_STATS_ENABLED": "0", **extra})
    return env


def ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


# ------------------------------------------------------------------------------------- 1. every source kind
def _sources(kind: str, d) -> tuple[list[str], SourceOptions, set[str]]:
    folder = d.root / "images"
    folder_keys = {p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")}
    shard_keys = {
        f"{p.name}::{n}" for k, p in enumerate(d.tar_shards) for n in frame_names(k * SHARD, (k + 1) * SHARD)
    }
    if kind == "folder":
        return [str(folder)], SourceOptions(), folder_keys
    if kind == "glob":
        return [str(folder / "*" / "frame_*.jpg")], SourceOptions(), folder_keys
    if kind == "tar":
        return [str(p) for p in d.tar_shards], SourceOptions(), shard_keys
    if kind == "zip":
        return [str(d.zip_path)], SourceOptions(), {f"archive.zip::{n}" for n in frame_names(0, FRAMES)}
    if kind == "parquet":
        return [str(d.parquet_path)], SourceOptions(), {f"images.parquet::{n}" for n in frame_names(0, FRAMES)}
    if kind == "video":
        return [str(d.video_path)], SourceOptions(), {f"clip.mp4#frame={i}" for i in range(VIDEO_FRAMES)}
    if kind == "video-stride-2":
        keys = {f"clip.mp4#frame={i}" for i in range(0, VIDEO_FRAMES, 2)}
        return [str(d.video_path)], SourceOptions(video_stride=2), keys
    if kind == "file-uri":
        return [f"file://{d.root / 'shards'}"], SourceOptions(), shard_keys
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["folder", "glob", "tar", "zip", "parquet", "video", "video-stride-2", "file-uri"]
)
def test_every_source_kind(kind, footage, config, tmp_path):
    sources, options, expected = _sources(kind, footage)
    out = tmp_path / "out"
    summary = run_job(sources, str(out), config, source_options=options, rows_per_part=ROWS_PER_PART)
    assert summary.images == len(expected) and summary.skipped_done == 0
    assert summary.errors == {}
    assert sum(summary.detections_per_class.values()) > 0
    assert set(summary.detections_per_class) <= set(CLASS_NAMES)
    table = assert_exactly_once(out, expected)
    assert_detections_sane(table, config)
    rows = table.to_pylist()
    if kind.startswith("video"):
        for r in rows:
            i = int(r["key"].rsplit("=", 1)[1])
            assert r["frame"] == i and r["source"] == str(footage.video_path)
            assert r["ts"] == pytest.approx(i / 30.0)  # generate() writes 30 fps
    else:
        assert all(r["frame"] is None and r["ts"] is None for r in rows)
    if kind == "file-uri":
        assert all(r["source"].startswith("file://") for r in rows)
    job = (out / JOB_FILE).read_text()
    assert config.output_key() in job


# ------------------------------------------------------------------------------------------ 2. mixed archive
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels; no real pixel data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _cmyk_jpeg(jpeg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("CMYK").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_mixed_archive_one_row_per_member(jpegs, config, tmp_path):
    members = {
        "good_0.jpg": jpegs[0],
        "good_1.jpg": jpegs[1],
        "good_2.jpg": jpegs[2],
        "truncated.jpg": jpegs[3][: len(jpegs[3]) // 2],
        "zero.jpg": b"",
        "notes.jpg": b"this is a text file with an image name\n" * 4,
        "huge.png": _png_header_only(50_000, 50_000),
        "cmyk.jpg": _cmyk_jpeg(jpegs[4]),
        "labels.txt": b"0 0.5 0.5 0.1 0.1\n",  # not an image member: no row
    }
    archive = tmp_path / "mixed.tar"
    with tarfile.open(archive, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    summary = run_job([str(archive)], str(out), config)
    image_members = [n for n in members if not n.endswith(".txt")]
    table = assert_exactly_once(out, {f"mixed.tar::{n}" for n in image_members})
    rows = {r["key"].split("::")[1]: r for r in table.to_pylist()}

    expect_error = {
        "truncated.jpg": ("truncated", "truncated image"),
        "zero.jpg": ("0 bytes", "empty file"),
        "notes.jpg": ("not a decodable image", "not an image"),
        "huge.png": ("50000x50000", "too many pixels"),
    }
    for name, (fragment, kind) in expect_error.items():
        r = rows[name]
        assert r["error"] and fragment in r["error"], (name, r["error"])
        assert error_kind(r["error"]) == kind
        assert r["detections"] == [] and r["width"] is None and r["height"] is None
    for name in ("good_0.jpg", "good_1.jpg", "good_2.jpg", "cmyk.jpg"):
        r = rows[name]
        assert r["error"] is None, (name, r["error"])
        assert (r["width"], r["height"]) == (W, H)
    assert any(rows[n]["detections"] for n in ("good_0.jpg", "good_1.jpg", "good_2.jpg"))
    assert summary.images == len(image_members)
    assert summary.errors == {"truncated image": 1, "empty file": 1, "not an image": 1, "too many pixels": 1}
    assert "errors        4" in summary.text()


# ----------------------------------------------------------------------- 3. exactly once after a killed driver
def test_resume_after_killed_driver(many, tmp_path):
    out = tmp_path / "out"
    # the driver connects to the module's Ray (as `ray job submit` drivers do): killing it kills its actors
    cmd = [*YOLORAY, "infer", str(many), "--out", str(out), *ENGINE_FLAGS, "--address", ray_address()]
    env = cli_env(YOLORAY_ROWS_PER_PART=str(ROWS_PER_PART))
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not parts(out) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert parts(out) or first.poll() == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        log.close()
    done_before = {k for p in parts(out) for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()}
    assert done_before <= many_keys()
    print(f"driver killed (rc {first.returncode}) with {len(done_before)}/{MANY} keys in {len(parts(out))} parts")

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    if len(done_before) < MANY:  # killed mid-job (the usual case): the rerun did only the rest
        assert f"{MANY - len(done_before):,} new ({len(done_before):,} already done" in second.stdout
    assert_exactly_once(out, many_keys())

    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stdout.splitlines()[-1].startswith("nothing to do"), third.stdout  # after the profile summary
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}
    assert after == before, "a finished job's rerun must write nothing"

    # a part lost after the job finished (deleted, or an object store that dropped it): the rerun redoes it
    lost = parts(out)[0]
    lost_keys = set(pq.read_table(lost, columns=["key"]).column("key").to_pylist())
    lost.unlink()
    fourth = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert f"{len(lost_keys):,} new" in fourth.stdout
    assert_exactly_once(out, many_keys())


# ------------------------------------------------------------------------- 4. exactly once after a killed actor
def _alive_detector_actor_pids() -> list[int]:
    import ray

    try:
        from ray.util.state import list_actors

        actors = [(a.class_name, a.pid) for a in list_actors(filters=[("state", "=", "ALIVE")], timeout=10)]
    except Exception:  # no dashboard (include_dashboard=False): read the actor table from the GCS
        actors = [(a["ActorClassName"], a["Pid"]) for a in ray._private.state.actors().values() if a["State"] == "ALIVE"]
    return [pid for name, pid in actors if "MapWorker" in name and "Predictor" in name and pid]


def test_exactly_once_after_killed_actor(many, config, tmp_path):
    out = tmp_path / "out"
    outcome: dict = {}

    def job():
        try:
            outcome["summary"] = run_job([str(many)], str(out), config, rows_per_part=ROWS_PER_PART)
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    killed = []
    deadline = time.monotonic() + 240
    while thread.is_alive() and not killed and time.monotonic() < deadline:
        pids = _alive_detector_actor_pids() if parts(out) else []
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.05)
    thread.join(timeout=300)
    print(f"killed actor pids {killed}; the job {'raised ' + repr(outcome['error']) if 'error' in outcome else 'finished'}")
    assert not thread.is_alive(), "the job hung after its actor was killed"
    if "error" in outcome:  # Ray Data gave up on the dead actor: the rerun must finish the rest, exactly once
        run_job([str(many)], str(out), config, rows_per_part=ROWS_PER_PART)
    assert_exactly_once(out, many_keys())


# ---------------------------------------------------------------------------- 5. Python API in a user pipeline
def test_detect_inside_user_pipeline(footage, config):
    import ray
    from ray.data.expressions import col

    paths = sorted(str(p) for p in footage.root.glob("images/*/*.jpg"))

    def load(row: dict) -> dict:  # user code: their own reader
        return {"key": Path(row["path"]).name, "image": Path(row["path"]).read_bytes(), "camera": "line-3"}

    ds = ray.data.from_items([{"path": p} for p in paths]).map(load)
    out = detect(ds, config)
    out = out.filter(expr=col("error").is_null()).map(lambda r: {**r, "n": len(r["detections"])})
    rows = out.take_all()
    assert sorted(r["key"] for r in rows) == sorted(Path(p).name for p in paths)
    assert set(rows[0]) == {*OUTPUT_SCHEMA.names, "n"}
    assert sum(r["n"] for r in rows) > 0
    assert {d["label"] for r in rows for d in r["detections"]} <= set(CLASS_NAMES)

    # a schema known up front is checked when the pipeline is built ...
    with pytest.raises(JobError, match="--batches-per-call must be >= 1"):
        detect(ds, config, ActorOptions(batches_per_call=0))
    with pytest.raises(JobError, match="need 'key' and 'image'.*pixels"):
        detect(ray.data.from_items([{"key": "a", "pixels": b"x"}]), config)
    # ... one known only when it runs (user code upstream), when it runs
    lazy = ray.data.from_items([{"path": paths[0]}]).map(lambda r: {"key": r["path"], "pixels": b"x"})
    with pytest.raises(Exception, match="need 'key' and 'image'") as info:
        detect(lazy, config).take_all()
    assert "pixels" in str(info.value)


def test_batches_per_call_sets_rows_per_actor_call(jpegs, config):
    """Blocks of 3 rows, engine batch 2: one batch per call takes one block per call (3 rows, run as 2 + 1);
    three batches per call take two blocks (6 rows, 2 + 2 + 2). Every call returns one output block, and the
    detections do not depend on how the rows were grouped."""
    import ray

    small = config.replace(batch_size=2)
    items = [{"key": f"k{i:02d}", "image": jpegs[i % len(jpegs)]} for i in range(24)]
    outputs = {}
    for per_call in (1, 3):
        ds = ray.data.from_items(items, override_num_blocks=8)
        out = detect(ds, small, ActorOptions(batches_per_call=per_call))
        blocks = list(out.iter_batches(batch_format="pyarrow", batch_size=None))
        outputs[per_call] = blocks
    assert [b.num_rows for b in outputs[1]] == [3] * 8
    assert [b.num_rows for b in outputs[3]] == [6] * 4

    def by_key(blocks):
        table = pa.concat_tables(blocks)
        return dict(zip(table.column("key").to_pylist(), table.column("detections").to_pylist()))

    one, three = by_key(outputs[1]), by_key(outputs[3])
    assert sorted(one) == [it["key"] for it in items]
    assert sum(map(len, one.values())) > 0
    for key, dets in one.items():
        assert len(dets) == len(three[key]), key
        for a, b in zip(dets, three[key]):
            assert a["class_id"] == b["class_id"] and a["x1"] == pytest.approx(b["x1"], abs=1e-3), key


# --------------------------------------------------------------------------------------------- 6. CLI errors
_RAY_LOG_PREFIXES = ("Token authentication is", "[")  # Ray's own start-up / connection log records


def _is_ray_log(line: str) -> bool:
    import re

    return bool(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING)\s", line)) or line.startswith(
        _RAY_LOG_PREFIXES
    )


def _cli_error(args: list[str]) -> str:
    r = subprocess.run(
        [*YOLORAY, "infer", *args, "--address", ray_address()],
        env=cli_env(), capture_output=True, text=True, timeout=240,
    )
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    assert r.returncode == 2, (r.returncode, r.stderr[-4000:])
    ours = [line for line in r.stderr.splitlines() if line.strip() and not _is_ray_log(line)]
    assert len(ours) == 1 and ours[0].startswith("yoloray infer: error: "), r.stderr
    return ours[0]


def test_cli_errors(footage, jpegs, tmp_path):
    msg = _cli_error([str(tmp_path / "missing"), "--out", str(tmp_path / "o1"), *ENGINE_FLAGS])
    assert "input not found" in msg and "missing" in msg

    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    msg = _cli_error([str(empty), "--out", str(tmp_path / "o2"), *ENGINE_FLAGS])
    assert "empty.tar" in msg and ("empty" in msg or "no image members" in msg)

    msg = _cli_error([str(footage.zip_path), "--out", str(tmp_path / "o3"), "--model", "nope.pt", *ENGINE_FLAGS])
    assert "nope.pt" in msg and "do not exist" in msg
    assert not list((tmp_path / "o3").glob("part-*"))

    msg = _cli_error([str(footage.zip_path), "--out", str(tmp_path / "o4"), "--batches-per-call", "0", *ENGINE_FLAGS])
    assert "--batches-per-call must be >= 1" in msg
    assert not (tmp_path / "o4").exists()

    # fp16 where the actors get no GPU: said on the driver, before any actor starts
    msg = _cli_error([str(footage.zip_path), "--out", str(tmp_path / "o5"), *ENGINE_FLAGS[:-2], "--precision", "fp16"])
    assert "fp16 needs a CUDA device" in msg and "no GPU" in msg  # resolved on the driver: device auto is the CPU
    assert not list((tmp_path / "o5").glob("part-*"))


def test_out_folder_of_another_engine_config(footage, config, tmp_path):
    """Resume is refused only when the output key changes (detections would differ), not for batch size or layout."""
    out = tmp_path / "out"
    first = run_job([str(footage.zip_path)], str(out), config)
    msg = _cli_error([str(footage.zip_path), "--out", str(out), *ENGINE_FLAGS, "--conf", "0.5"])
    assert "give other detections" in msg and "--out" in msg
    with pytest.raises(JobError, match="give other detections"):
        run_job([str(footage.zip_path)], str(out), config.replace(iou=0.5))
    again = run_job([str(footage.zip_path)], str(out), config.replace(batch_size=4, calls_per_actor=2, batches_per_call=1))
    assert again.images == 0 and again.skipped_done == first.images
    assert (out / SUMMARY_FILE).is_file()


def test_weights_that_are_not_a_checkpoint(footage, config, tmp_path):
    """A constructor failure inside the actor comes back as a JobError with the engine's message."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(JobError, match="not an ultralytics checkpoint"):
        run_job([str(footage.zip_path)], str(tmp_path / "out"), config.replace(model=str(bad)))
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


# ------------------------------------------------------------------- 7. issue 14: what a hostile archive found
def test_parts_reach_disk_while_the_job_runs(many, tmp_path):
    """A multi-shard job killed part-way (SIGKILL) leaves rows on disk: with the default rows per part, a part
    is still written every --part-seconds. The rerun redoes only what is missing, each key exactly once."""
    out = tmp_path / "out"
    cmd = [*YOLORAY, "infer", str(many), "--out", str(out), *ENGINE_FLAGS, "--address", ray_address(),
           "--part-seconds", "1"]
    env = cli_env(YOLORAY_LOG_DIR=str(tmp_path / "logs"))
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not parts(out) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, ("the job ended before its first part", first.stderr.read()[-2000:])
    done_before = {k for p in parts(out) for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()}
    assert 0 < len(done_before) < MANY and done_before <= many_keys()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{MANY - len(done_before):,} new ({len(done_before):,} already done" in second.stdout
    assert_exactly_once(out, many_keys())


def test_reads_run_as_their_own_tasks_not_inside_the_actors(many, config):
    """Ray Data fused a task-based read into the actor stage: every unit of a small job in one actor call.
    Reads are now a Ray Data read operator of their own, one task per unit, and actor calls get engine batches."""
    from yoloray.data.sources import read_sources

    out = detect(read_sources([str(many)]), config)
    blocks = list(out.iter_batches(batch_format="pyarrow", batch_size=None))
    assert sum(b.num_rows for b in blocks) == MANY
    # a call takes whole read blocks (5 rows) until it holds an engine-sized batch of rows; fused, one call took
    # batch_size x batches_per_call read units: all 30 shards (150 rows)
    assert len(blocks) > 1
    assert max(b.num_rows for b in blocks) < config.batch_size * ActorOptions().batches_per_call + PER_SHARD
    operators = [line for line in out.stats().splitlines() if line.startswith("Operator")]
    read = [line for line in operators if "ReadUnits" in line]
    assert read and not any("Predictor" in line for line in read), operators


def test_awkward_names_and_repeats_end_to_end(jpegs, config, tmp_path):
    """Names that are not UTF-8 in a folder, tar and zip, repeated tar members and repeated parquet keys: every
    input one row with a unique key; the summary agrees with the Parquet; a rerun finds them all done."""
    src = tmp_path / "src"
    (src / "frames").mkdir(parents=True)
    with open(os.path.join(os.fsencode(src / "frames"), b"caf\xe9.jpg"), "wb") as f:
        f.write(jpegs[0])
    (src / "frames" / "ok.jpg").write_bytes(jpegs[1])
    with tarfile.open(src / "shard.tar", "w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as tf:
        for name, data in (("a.jpg", jpegs[2]), ("caf\udce9.jpg", jpegs[3]), ("a.jpg", jpegs[4]),
                           ("junk.jpg", os.urandom(290))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"key": ["k", "k"], "image": [jpegs[5], jpegs[6]]}), src / "frames.parquet")
    expected = {"frames/caf\\xe9.jpg", "frames/ok.jpg", "shard.tar::a.jpg", "shard.tar::caf\\xe9.jpg",
                "shard.tar::a.jpg#dup=2", "shard.tar::junk.jpg", "frames.parquet::k", "frames.parquet::k#dup=2"}
    out = tmp_path / "out"
    summary = run_job([str(src)], str(out), config)
    table = assert_exactly_once(out, expected)
    assert summary.images == table.num_rows == len(expected)
    errors = Counter(error_kind(e) for e in table.column("error").drop_null().to_pylist())
    assert summary.errors == dict(errors) == {"not an image": 1}  # 290 bytes of garbage, not "empty file"
    again = run_job([str(src)], str(out), config)
    assert again.images == 0 and again.skipped_done == len(expected)


def test_a_failed_start_is_one_line_and_leaves_out_reusable(footage, config, tmp_path):
    """A checkpoint that is not one: one line that names the actor and the problem, Ray's output and the
    traceback in a log file; the same --out then takes a fixed configuration."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    logs = tmp_path / "logs"
    r = subprocess.run([*YOLORAY, "infer", str(footage.zip_path), "--out", str(out), "--model", str(bad),
                        *ENGINE_FLAGS, "--address", ray_address()],
                       env=cli_env(YOLORAY_LOG_DIR=str(logs)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "detector actor" in lines[0] and "not an ultralytics checkpoint" in lines[0], lines[0]
    (log,) = logs.glob("infer-*.log")
    assert str(log) in lines[0] and "Traceback" in log.read_text()
    assert not parts(out)
    fixed = subprocess.run([*YOLORAY, "infer", str(footage.zip_path), "--out", str(out), *ENGINE_FLAGS,
                            "--model", config.model, "--address", ray_address()],
                           env=cli_env(YOLORAY_LOG_DIR=str(logs)), capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert f"{FRAMES:,} new" in fixed.stdout
