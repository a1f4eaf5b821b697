"""`yoloray tune` on a local Ray (CPU): a tiny grid sweep with a failing point and its layout level (real Ray Data
batch jobs over a tiny sample), the report, the winner profile and its Serve config, an Optuna sweep resumed after
its driver was killed, a sweep over an archive of two H.264 clips (trials on their frames, layout runs over the
files), and user errors (exit 2, one line)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pandas as pd
import pytest
import yaml

ray = pytest.importorskip("ray")

from yoloray.config import Profile  # noqa: E402
from yoloray.tune.layout import layout_summary  # noqa: E402
from yoloray.tune.sweep import main  # noqa: E402

# fp32/bf16 x batch 1/4 run; fp16 is kept (the user asked for it) and fails at trial start on the CPU
SPACE = {"backend": "torch", "precision": ["fp32", "bf16", "fp16"], "batch_size": [1, 4], "imgsz": 64,
         "channels_last": False, "reduced_decode": False, "calls_per_actor": [1, 2]}
FAST = ["--gpus", "0", "--frame-size", "320x180", "--window-seconds", "0.2", "--max-windows", "2",
        "--layout-top", "1", "--layout-images", "12"]
LIMITS = {"max_p99_ms": 60_000.0, "max_gpu_mem_gib": 1.0, "min_fidelity": 0.5}


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("tune")
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE))
    out, serve = root / "runs" / "tiny", root / "serve_configs" / "tiny.yaml"
    rc = main(["--space", str(root / "space.yaml"), "--out", str(out), "--serve-config", str(serve), *FAST,
               "--max-p99-ms", str(LIMITS["max_p99_ms"]), "--max-gpu-mem-gib", str(LIMITS["max_gpu_mem_gib"]),
               "--min-fidelity", str(LIMITS["min_fidelity"])])
    return rc, out, serve


def test_sweep_writes_every_trial_and_picks_a_winner_within_limits(sweep):
    rc, out, _ = sweep
    assert rc == 0
    for name in ("trials.parquet", "trials.csv", "layout.parquet", "layout.csv", "report.html", "profile.yaml",
                 "serve.yaml", "sweep.yaml", "trials.png", "p99_vs_throughput.png", "memory_vs_batch.png", "layout.png"):
        assert (out / name).is_file(), name
    assert (out / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and page.count("<table") == 2 and "gain: " in page
    df = pd.read_parquet(out / "trials.parquet")
    assert len(df) == 6 and df["trial_id"].is_unique
    assert len(pd.read_csv(out / "trials.csv")) == 6
    ok = df[df["status"] == "ok"]
    assert set(zip(ok["precision"], ok["batch_size"])) == {("fp32", 1), ("fp32", 4), ("bf16", 1), ("bf16", 4)}
    assert (ok["measured_images_per_s"] > 0).all() and (ok["p99_ms"] >= ok["p50_ms"]).all()
    assert (ok["window_min"] <= ok["window_max"]).all() and ok["window_min"].notna().all()  # the windows' spread
    failed = df[df["precision"] == "fp16"]
    assert len(failed) == 2 and (failed["status"] == "build_failed").all()
    assert failed["reason"].str.contains("fp16 needs a CUDA device").all()
    assert (failed["images_per_s"] == 0).all()

    eligible = ok[(ok["p99_ms"] <= LIMITS["max_p99_ms"]) & (ok["gpu_mem_gib"] <= LIMITS["max_gpu_mem_gib"])
                  & (ok["fidelity"] >= LIMITS["min_fidelity"])]
    best = eligible.loc[eligible["images_per_s"].idxmax()]

    # the layout level: the best engine trial as real batch jobs, once per listed layout, and the default profile;
    # then the two fastest of those three runs twice more each
    runs = pd.read_parquet(out / "layout.parquet")
    assert (runs["status"] == "ok").all(), runs[["engine", "layout", "reason"]]
    assert (runs["images"] == 12).all() and (runs["images_per_s"] > 0).all()
    assert len(runs) == 7 and sorted(runs.groupby(["engine", "layout"]).size()) == [1, 3, 3]
    first = runs[runs["run"] == 1]
    assert sorted(zip(first["engine"], first["layout"])) == sorted(
        [("default", "default profile"), (best["trial_id"], "calls=1"), (best["trial_id"], "calls=2")])
    again, top = runs[runs["run"] > 1], first.nlargest(2, "images_per_s")
    assert set(zip(again["engine"], again["layout"])) == set(zip(top["engine"], top["layout"]))
    layout = layout_summary(runs)
    default = Profile.model_validate(yaml.safe_load(layout.loc[layout["engine"] == "default", "profile"].iloc[0]))
    assert default.is_resolved() and default.imgsz == (384, 640)  # auto: the 320x180 frames scaled to 640
    winner = layout.loc[layout["images_per_s"].idxmax()]  # by the median of its runs
    profile = Profile.from_yaml(out / "profile.yaml")
    assert profile.is_resolved() and profile.to_yaml() == winner["profile"]
    if winner["engine"] != "default":
        assert (profile.precision, profile.batch_size, profile.imgsz) == (best["precision"], best["batch_size"], (64, 64))
        assert profile.calls_per_actor == winner["calls_per_actor"]
    assert profile.device == "cpu" and profile.backend == "torch"


def test_serve_config_loads_with_ray_serve_schema(sweep):
    from ray.serve.schema import ServeDeploySchema

    _, out, serve = sweep
    text = serve.read_text()
    assert (out / "serve.yaml").read_text() == text
    data = yaml.safe_load(text)
    schema = ServeDeploySchema.model_validate(data)
    app = schema.applications[0]
    assert app.import_path == "yoloray.serve.app:build_app" and app.route_prefix == "/"
    assert set(app.args) == {"profile", "max_batch_size", "batch_wait_timeout_s"}
    engine = Profile.parse(app.args["profile"])
    assert engine == Profile.from_yaml(out / "profile.yaml")
    assert app.args["max_batch_size"] == engine.batch_size
    deployment = app.deployments[0]
    assert deployment.name == "Detector" and deployment.ray_actor_options.num_gpus == 0


def _terminated(exp_dir) -> set[str]:
    """Trial ids the saved experiment state records as finished."""
    done = set()
    for state in exp_dir.glob("experiment_state-*.json"):
        try:
            data = json.loads(state.read_text())
        except (json.JSONDecodeError, OSError):  # being rewritten
            continue
        for trial_json, _ in data.get("trial_data", []):
            trial = json.loads(trial_json)
            if trial.get("status") == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def test_resume_after_the_driver_is_killed(tmp_path, local_ray):
    space = {**SPACE, "precision": ["fp32", "bf16"], "batch_size": [1, 2, 4]}  # 6 points, 4 trials: Optuna
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    out = tmp_path / "runs" / "resumable"
    cmd = [sys.executable, "-m", "yoloray.tune.sweep", "--address", local_ray]
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0.5", "YOLO_OFFLINE": "true", "RAY_USAGE_STATS_ENABLED": "0"}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([*cmd, "--space", str(tmp_path / "space.yaml"), "--out", str(out), *FAST,
                              "--max-windows", "3", "--budget-trials", "4", "--cpus-per-trial", "2", "--layout-top", "0",
                              "--serve-config", str(tmp_path / "serve.yaml")], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 150
    done: set[str] = set()
    while not done:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.2)
        done = _terminated(out / "tune")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert len(done) < 4
    before = {t: (out / "tune" / f"trial_{t}" / "result.json").read_bytes() for t in done}

    second = subprocess.run([*cmd, "--resume", str(out)], env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr
    df = pd.read_parquet(out / "trials.parquet")
    assert len(df) == 4 and df["trial_id"].is_unique and (df["status"] == "ok").all()
    assert done <= set(df["trial_id"])
    assert len({json.dumps({k: r[k] for k in ("precision", "batch_size")}) for _, r in df.iterrows()}) == 4
    dirs = {p.name.removeprefix("trial_") for p in (out / "tune").glob("trial_*")}
    assert set(df["trial_id"]) <= dirs  # (a trial started but never recorded before the kill leaves a stray dir)
    for t, blob in before.items():  # finished trials were not run again
        assert (out / "tune" / f"trial_{t}" / "result.json").read_bytes() == blob
    assert (tmp_path / "serve.yaml").is_file() and (out / "profile.yaml").is_file()


@pytest.mark.parametrize("space, args, message", [
    ({"precision": ["fp8"]}, [], "precision: 'fp8' is not allowed; allowed: fp32, fp16, bf16"),
    ({"bogus": [1]}, [], "unknown knob 'bogus'"),
    ({"batch_size": []}, [], "batch_size: empty list"),
    (None, ["--budget-trials", "2", "--budget-minutes", "1"], "not allowed with argument"),
    (None, ["--model", "missing.pt"], "--model missing.pt: no such file"),
    (None, ["--frame-size", "wide"], "--frame-size 'wide' is not WxH"),
    (None, ["--gpus", "-1"], "--gpus must be >= 0"),
    (None, ["--resume", "{tmp}/nothing"], "nothing to resume"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, space, args, message):
    argv = ["--out", str(tmp_path / "run")] + [a.replace("{tmp}", str(tmp_path)) for a in args]
    if space is not None:
        (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
        argv += ["--space", str(tmp_path / "space.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("yoloray tune: error: "), err
    assert message in err


def test_an_existing_sweep_needs_resume(sweep, capsys):
    _, out, _ = sweep
    assert main(["--out", str(out)]) == 2
    assert "add --resume" in capsys.readouterr().err


VW, VH = 96, 160  # portrait clips: their input shape (640x384) is not the --frame-size default's (384x640)


@pytest.fixture(scope="module")
def video_sweep(tmp_path_factory, local_ray):
    from yoloray.data.scene import render_video_frame
    from yoloray.data.synthetic import write_clip

    root = tmp_path_factory.mktemp("tune_video")
    clips = root / "clips"
    clips.mkdir()
    for k in range(2):
        write_clip(clips / f"cam{k}.mp4", [render_video_frame(k, i, VW, VH, 12)[0] for i in range(12)], VW, VH, 12,
                   "h264", gop=6)
    (root / "space.yaml").write_text(yaml.safe_dump({"backend": "torch", "precision": "fp32", "batch_size": [1, 2],
                                                     "channels_last": False}))
    out = root / "runs" / "video"
    rc = main(["--archive", str(clips), "--space", str(root / "space.yaml"), "--out", str(out),
               "--serve-config", str(root / "serve.yaml"), *FAST[:-2], "--layout-images", "40"])
    return rc, out


def test_sweep_over_video_clips(video_sweep):
    from yoloray.profile import Hardware, Sample, resolve
    from yoloray.tune.layout import layout_points
    from yoloray.tune.settings import TuneConfig
    from yoloray.tune.space import Space

    rc, out = video_sweep
    assert rc == 0
    settings = TuneConfig.from_yaml(out / "sweep.yaml")
    assert settings.video and settings.frame_size == (VW, VH)  # not --frame-size 320x180
    assert Space.build(None, cuda=False, frame_size=settings.frame_size).values["imgsz"] == ("640x384",)
    frames = sorted((out / "inputs").iterdir())
    assert len(frames) == 24 and all(p.suffix == ".png" for p in frames)  # both clips' 12 frames, decoded
    assert {cv2.imread(str(p)).shape for p in frames} == {(VH, VW, 3)}

    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "ok").all(), trials[["status", "reason"]]
    assert (trials["measured_images_per_s"] > 0).all() and (trials["fidelity"] >= 0.9).all()
    assert set(trials["imgsz"].astype(str)) == {"640x384"}  # the clips' shape, from the listing's sample

    layout = pd.read_parquet(out / "layout.parquet")  # real jobs over the clips, repeated to >= 40 frames
    assert (layout["status"] == "ok").all(), layout[["engine", "layout", "reason"]]
    assert sorted(layout.groupby(["engine", "layout"]).size()) == [3, 3]  # two candidates: both run thrice
    assert (layout["images"] == 48).all() and (layout["errors"] == 0).all()
    assert sorted((out / "sample").iterdir())[0].suffix == ".mp4"

    profile = Profile.from_yaml(out / "profile.yaml")
    assert profile.is_resolved() and profile.imgsz == (640, 384) and profile.decode == "cpu"
    assert profile == resolve(profile, Hardware(cpus=2), Sample(((VW, VH),), ("video:h264",)))

    # the video grid on CUDA (not run here): NVDEC 1 or 2 actors x 1 or 2 calls per engine; PyAV 1 or 2 actors
    assert layout_points(None, True, "gpu", 7) == [{"actors_per_gpu": a, "calls_per_actor": c}
                                                   for a in (1, 2) for c in (7, 14)]
    assert layout_points(None, True, "cpu") == [{"actors_per_gpu": 1, "calls_per_actor": 2},
                                                {"actors_per_gpu": 2, "calls_per_actor": 2}]
