"""`yoloray infer` with profiles on a local Ray (CPU): no flags -> every `auto` resolved for this machine and the
inputs, printed, written as OUT/_profile.yaml and exactly what ran; `--profile` and $YOLORAY_PROFILE rerun it."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from yoloray.cli import PROFILE_ENV, main
from yoloray.config import Profile
from yoloray.data.synthetic import generate

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("frames"), frames=6, seed=3, width=320, height=180, formats=("folder",),
                    workers=1)


def test_infer_with_no_flags_resolves_prints_and_writes_the_profile(frames, demo_model, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    src = str(frames.images_val.parent)
    assert main(["infer", src, "--out", str(tmp_path / "a")]) == 0
    printed = capfd.readouterr().out
    assert "profile for no GPU" in printed and "imgsz=384x640*" in printed and "precision=fp32*" in printed
    profile = Profile.from_yaml(tmp_path / "a" / "_profile.yaml")
    assert profile.is_resolved() and profile.model == demo_model and profile.device == "cpu"
    assert profile.imgsz == (384, 640)  # the 320x180 frames' rect letterbox at 640
    rows = pq.read_table(tmp_path / "a").to_pylist()
    assert len(rows) == 6 and {r["engine"] for r in rows} == {profile.output_key()}

    # the written profile reruns as written, from --profile or from $YOLORAY_PROFILE; flags still override it
    assert main(["infer", src, "--out", str(tmp_path / "b"), "--profile", str(tmp_path / "a" / "_profile.yaml")]) == 0
    assert Profile.from_yaml(tmp_path / "b" / "_profile.yaml") == profile
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "a" / "_profile.yaml"))
    assert main(["infer", src, "--out", str(tmp_path / "c"), "--batch-size", "2"]) == 0
    assert Profile.from_yaml(tmp_path / "c" / "_profile.yaml") == profile.replace(batch_size=2)
    capfd.readouterr()


def test_an_explicit_value_that_cannot_run_is_an_error(frames, tmp_path, capfd, monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    assert main(["infer", str(frames.images_val.parent), "--out", str(tmp_path / "o"), "--precision", "fp16"]) == 2
    err = capfd.readouterr().err
    assert "precision fp16 needs a CUDA device" in err and not (tmp_path / "o").exists()
    monkeypatch.setenv(PROFILE_ENV, str(tmp_path / "missing.yaml"))
    assert main(["infer", str(frames.images_val.parent), "--out", str(tmp_path / "o")]) == 2
    assert f"does not exist (from ${PROFILE_ENV})" in capfd.readouterr().err
