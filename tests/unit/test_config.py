import subprocess
import sys

import pytest

from yoloray.config import PROFILE_HINT, ConfigError, Profile
from yoloray.serve.settings import ServeConfig


def test_yaml_round_trip(tmp_path):
    cfg = Profile(model="yolov8n.yaml", imgsz="384x640", precision="bf16", batch_size=64, channels_last=True,
                  conf=0.3, calls_per_actor=2)
    path = tmp_path / "profile.yaml"
    cfg.to_yaml(path)
    assert "imgsz: 384x640" in path.read_text()
    back = Profile.from_yaml(path)
    assert back == cfg
    assert back.imgsz == (384, 640) and back.engine.imgsz == (384, 640)
    assert (back.post.conf, back.layout.calls_per_actor, back.conf) == (0.3, 2, 0.3)
    assert back.output_key() == cfg.output_key() and back.build_key() == cfg.build_key()


def test_flat_files_of_earlier_versions_load(tmp_path):
    """A flat EngineConfig file (every field at the top) is sorted into the sections; nested and flat mix."""
    flat = tmp_path / "engine.yaml"
    flat.write_text("model: yolov8n.yaml\nprecision: bf16\nbatch_size: 32\nimgsz: [384, 640]\ndecode: cpu\n"
                    "reduced_decode: true\nconf: 0.4\nhybrid_cpu_share: 0.2\ndevice: cpu\n")
    p = Profile.from_yaml(flat)
    assert (p.engine.precision, p.engine.batch_size, p.decoding.reduced_decode, p.post.conf) == ("bf16", 32, True, 0.4)
    assert p.layout.hybrid_cpu_share == 0.2 and p.device == "cpu"
    assert Profile.parse({**p.model_dump(), "conf": 0.5}).post.conf == 0.5  # a flat override of a nested dump
    assert p.replace(batch_size=8, calls_per_actor=3).engine.batch_size == 8
    legacy = ServeConfig.parse({"engine": {"model": "yolov8n.yaml", "batch_size": 8, "conf": 0.3}})
    assert (legacy.profile.batch_size, legacy.profile.conf, legacy.max_batch_size) == (8, 0.3, 8)
    with pytest.raises(ConfigError, match="give `profile:` only"):
        ServeConfig.parse({"engine": {}, "profile": {}})
    p.to_yaml(tmp_path / "profile.yaml")  # a serve config may name a profile file (a tune winner's)
    assert ServeConfig.parse({"profile": str(tmp_path / "profile.yaml")}).profile == p
    with pytest.raises(ConfigError, match="does not exist"):
        ServeConfig.parse({"profile": str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"backend": "torch", "precision": "int8"}, "precision 'int8' is not supported by backend 'torch'; allowed: fp32, fp16, bf16"),
        ({"workspace_gib": 4}, "workspace_gib is not honoured by backend 'torch'"),
        ({"batch_size": 0}, "batch_size"),
        ({"imgsz": 650}, "multiple of the model stride 32"),
        ({"imgsz": "384x641"}, "width 641 must be a positive multiple"),
        ({"imgsz": "abc"}, "is not an int or 'HxW'"),
        ({"backend": "tensorrt"}, "backend"),
        ({"device": "gpu0"}, "device 'gpu0' is not one of"),
        ({"device": "cpu", "cuda_graph": True}, "cuda_graph needs a CUDA device"),
        ({"device": "cpu", "precision": "fp16"}, "fp16 needs a CUDA device"),
        ({"compile_mode": "default"}, "compile_mode is not honoured by backend 'torch'; leave it unset (honoured by: torch-compile)"),
        ({"batchsize": 8}, "batchsize: Extra inputs are not permitted"),
        ({"gpu_decoder": "nvdec"}, "gpu_decoder: Input should be 'torchvision' or 'nvimgcodec'"),
        ({"batch_size": 128, "micro_batch": 48}, "micro_batch 48 must divide batch_size 128 (e.g. 32)"),
        ({"micro_batch": 0}, "micro_batch"),
    ],
)
def test_invalid_combinations_name_the_field(fields, needle):
    with pytest.raises(ConfigError) as e:
        Profile.parse({"model": "yolov8n.yaml", **fields})
    assert needle in str(e.value)


def test_bad_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Profile.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("imgsz: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Profile.from_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        Profile.from_yaml(bad)


def test_output_key_changes_with_what_changes_detections_only():
    base = Profile(model="yolov8n.yaml")
    changes = {
        "model": "yolo11n.yaml", "backend": "torch-compile", "precision": "bf16", "imgsz": (384, 640),
        "reduced_decode": True, "conf": 0.3, "iou": 0.5, "max_det": 100, "agnostic_nms": True, "max_pixels": 1000,
        "gpu_decoder": "nvimgcodec", "decode": "gpu",
    }
    keys = {base.output_key()}
    for field, value in changes.items():
        k = base.replace(**{field: value}).output_key()
        assert k not in keys, field
        keys.add(k)
    same = {"batch_size": 8, "micro_batch": 8, "cuda_graph": True, "channels_last": True, "device": "cpu",
            "actors_per_gpu": 3, "calls_per_actor": 2, "batches_per_call": 1, "decode_threads": 4,
            "hybrid_cpu_share": 0.15}
    for field, value in same.items():  # scheduling and layout: a resumed job may change them
        assert base.replace(**{field: value}).output_key() == base.output_key(), field


def test_build_key_follows_the_engine_only():
    base = Profile(model="yolov8n.yaml")
    for field, value in {"batch_size": 8, "micro_batch": 8, "cuda_graph": True, "channels_last": True,
                         "precision": "bf16", "imgsz": 320, "max_det": 100}.items():
        assert base.replace(**{field: value}).build_key() != base.build_key(), field
    for field, value in {"conf": 0.5, "decode": "gpu", "calls_per_actor": 3, "device": "cpu"}.items():
        assert base.replace(**{field: value}).build_key() == base.build_key(), field


def test_key_tracks_weights_content(tmp_path):
    w = tmp_path / "w.pt"
    w.write_bytes(b"one")
    k1 = Profile(model=str(w)).output_key()
    w.write_bytes(b"two")
    assert Profile(model=str(w)).output_key() != k1


def test_key_stable_across_processes():
    code = "from yoloray.config import Profile; print(Profile(model='yolov8n.yaml', imgsz=320).output_key())"
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(keys) == 1
    assert keys.pop().strip() == Profile(model="yolov8n.yaml", imgsz=320).output_key()


@pytest.mark.parametrize("command", ["detect", "infer"])
@pytest.mark.parametrize(
    "name, text, message",
    [
        ("missing.yaml", None, "profile file {p} does not exist" + PROFILE_HINT),
        ("folder", "folder", "profile file {p} is a folder, not a file" + PROFILE_HINT),
        ("bad.yaml", "a: b: c\n", "profile file {p} is not valid YAML (line 1, column 5: mapping values are not allowed here)"),
        ("unknown.yaml", "engine:\n  bogus: 1\n", "profile file {p}: engine.bogus: Extra inputs are not permitted"),
        ("empty.yaml", "", "profile file {p} holds nothing, not a mapping" + PROFILE_HINT),
    ],
    ids=["missing", "folder", "not-yaml", "unknown-key", "empty"],
)
def test_profile_file_errors_are_one_line(tmp_path, capsys, command, name, text, message):
    """`--profile` that is missing, a folder, not YAML, not a profile: one line naming the file, exit code 2."""
    from yoloray.cli import main

    path = tmp_path / name
    if text == "folder":
        path.mkdir()
    elif text is not None:
        path.write_text(text)
    image = tmp_path / "a.jpg"
    image.write_bytes(b"not read")
    argv = [command, str(image), "--profile", str(path)] + (["--out", str(tmp_path / "out")] if command == "infer" else [])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err == f"yoloray {command}: error: {message.format(p=path)}\n", err
    assert "Traceback" not in out
