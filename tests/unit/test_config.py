import subprocess
import sys

import pytest

from yoloray.config import ConfigError, EngineConfig


def test_yaml_round_trip(tmp_path):
    cfg = EngineConfig(model="yolov8n.yaml", imgsz="384x640", precision="bf16", batch_size=64, channels_last=True)
    path = tmp_path / "engine.yaml"
    cfg.to_yaml(path)
    back = EngineConfig.from_yaml(path)
    assert back == cfg
    assert back.imgsz == (384, 640)
    assert back.key() == cfg.key()


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
        EngineConfig.parse({"model": "yolov8n.yaml", **fields})
    assert needle in str(e.value)


def test_bad_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        EngineConfig.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("imgsz: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        EngineConfig.from_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        EngineConfig.from_yaml(bad)


def test_key_changes_with_every_output_changing_field():
    base = EngineConfig(model="yolov8n.yaml")
    changes = {
        "model": "yolo11n.yaml", "backend": "torch-compile", "precision": "bf16", "batch_size": 8,
        "imgsz": (384, 640), "channels_last": True, "decode": "cpu", "reduced_decode": True, "conf": 0.3,
        "iou": 0.5, "max_det": 100, "agnostic_nms": True, "max_pixels": 1000, "gpu_decoder": "nvimgcodec",
        "micro_batch": 8,
    }
    keys = {base.key()}
    for field, value in changes.items():
        if field == "decode":
            continue
        k = base.model_copy(update={field: value}).key()
        assert k not in keys, field
        keys.add(k)
    assert base.model_copy(update={"device": "cpu"}).key() == base.key()  # where it runs is not what it computes


def test_key_tracks_weights_content(tmp_path):
    w = tmp_path / "w.pt"
    w.write_bytes(b"one")
    k1 = EngineConfig(model=str(w)).key()
    w.write_bytes(b"two")
    assert EngineConfig(model=str(w)).key() != k1


def test_key_stable_across_processes():
    code = "from yoloray.config import EngineConfig; print(EngineConfig(model='yolov8n.yaml', imgsz=320).key())"
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(keys) == 1
    assert keys.pop().strip() == EngineConfig(model="yolov8n.yaml", imgsz=320).key()
