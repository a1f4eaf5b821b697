"""The `yoloray tune` search space (no Ray): default shape per device, conditional knobs, space file errors."""

from __future__ import annotations

import pytest
import yaml

from yoloray.config import ConfigError, Profile
from yoloray.engines.capabilities import CAPABILITIES
from yoloray.tune.settings import TuneConfig
from yoloray.tune.space import KNOBS, OptunaSpace, Space, load_space_file, rect_imgsz, validate_mapping
from yoloray.tune.trial import engine_fields, is_stable, make_batches


def _parse(point, device):
    return Profile.parse({**point, "model": "yolov8n.yaml", "device": device})


def test_default_space_on_cpu_holds_only_what_the_cpu_runs():
    space = Space.build(None, cuda=False)
    points = space.points()
    assert points and all(set(p) == set(KNOBS) for p in points)
    assert {(p["backend"], p["provider"]) for p in points} == {("torch", None), ("onnxruntime", "cpu")}
    assert {p["precision"] for p in points if p["backend"] == "torch"} == {"fp32", "bf16"}
    assert {p["precision"] for p in points if p["backend"] == "onnxruntime"} == {"fp32", "int8"}
    assert {p["channels_last"] for p in points if p["backend"] == "onnxruntime"} == {False}  # not honoured
    assert {p["cuda_graph"] for p in points} == {False}
    assert {p["decode"] for p in points} == {"cpu"}
    assert {p["reduced_decode"] for p in points} == {True}  # the CPU decodes: DCT-reduced
    assert {p["compile_mode"] for p in points} == {None}
    assert {p["imgsz"] for p in points} == {"384x640"}  # the 1080p-aligned rectangle, not square 640
    assert max(p["batch_size"] for p in points) <= 16
    assert len(points) == 2 * 5 * 2 + 2 * 5  # torch: precision x batch x channels_last; onnxruntime: precision x batch
    assert len({tuple(sorted(p.items(), key=str)) for p in points}) == len(points)  # no duplicates
    for p in points:
        _parse(p, "cpu")  # every point is a valid Profile on the CPU
    assert space.warnings() == []


def _expected_cuda_points() -> int:
    """precision (fp16, bf16) x batch (32-256) x cuda_graph where honoured, torch only, nvJPEG (decode placement
    is the layout level's)."""
    return 2 * 4 * (2 if CAPABILITIES["torch"].cuda_graph else 1)


def test_default_space_on_cuda_is_small_enough_for_a_grid_and_conditional():
    space = Space.build(None, cuda=True)
    points = space.points()
    assert len(points) == _expected_cuda_points() == 16
    assert len({tuple(sorted(p.items(), key=str)) for p in points}) == len(points)
    assert {p["backend"] for p in points} == {"torch"}  # torch-compile: listed in a space file
    assert {p["precision"] for p in points} == {"fp16", "bf16"}  # fp32: the reference, not a contender
    assert {p["batch_size"] for p in points} == {32, 64, 128, 256}
    assert {p["imgsz"] for p in points} == {"384x640"}
    assert {p["channels_last"] for p in points} == {True}
    assert {p["decode"] for p in points} == {"gpu"}
    for p in points:
        cap = CAPABILITIES[p["backend"]]
        assert p["compile_mode"] == ("default" if cap.compile else None)
        if not cap.cuda_graph:
            assert p["cuda_graph"] is False
        assert p["reduced_decode"] is (p["decode"] == "hybrid")  # nvJPEG decodes at full size
        assert p["workspace_gib"] is None  # the default space does not search it
        _parse(p, "cuda")
    graphs = {p["cuda_graph"] for p in points if p["backend"] == "torch"}
    assert graphs == {False, True}
    # square frames: the rectangle is square 640, still one input shape
    assert {p["imgsz"] for p in Space.build(None, cuda=True, frame_size=(640, 640)).points()} == {"640"}
    assert {p["imgsz"] for p in Space.build(None, cuda=True, frame_size=(1080, 1920)).points()} == {"640x384"}


def test_each_onnxruntime_provider_is_a_row_with_its_own_precisions_and_knobs():
    space = Space.build({"backend": ["torch", "onnxruntime"], "provider": ["cuda", "tensorrt"],
                         "precision": ["fp16", "int8"], "workspace_gib": [None, 4], "cuda_graph": [False, True],
                         "batch_size": [64]}, cuda=True)
    assert space.backends() == ["torch", "onnxruntime/cuda", "onnxruntime/tensorrt"]
    points = space.points()
    rows = {(p["backend"], p["provider"]) for p in points}
    assert rows == {("torch", None), ("onnxruntime", "cuda"), ("onnxruntime", "tensorrt")}
    assert {p["precision"] for p in points if p["provider"] == "cuda"} == {"fp16"}  # int8: not on CUDA
    assert {p["precision"] for p in points if p["provider"] == "tensorrt"} == {"fp16", "int8"}
    assert {p["workspace_gib"] for p in points if p["provider"] != "tensorrt"} == {None}  # honoured by TensorRT only
    assert {p["workspace_gib"] for p in points if p["provider"] == "tensorrt"} == {None, 4}
    for p in points:
        _parse(p, "cuda")
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        point = OptunaSpace(space)(study.ask())["engine"]
        _parse(point, "cuda")
        seen.add((point["backend"], point["provider"], point["precision"]))
    assert ("onnxruntime", "tensorrt", "int8") in seen and ("onnxruntime", "cuda", "fp16") in seen


def test_values_left_out_of_the_default_space_can_still_be_listed():
    space = Space.build({"backend": ["torch", "torch-compile"], "precision": ["fp32", "fp16"],
                         "compile_mode": ["default", "max-autotune"],
                         "batch_size": [512], "imgsz": [640, "384x640"], "decode": ["cpu"]}, cuda=True)
    points = space.points()
    assert {p["precision"] for p in points} == {"fp32", "fp16"}
    assert {p["compile_mode"] for p in points if p["backend"] == "torch-compile"} == {"default", "max-autotune"}
    assert {p["batch_size"] for p in points} == {512}
    assert {p["imgsz"] for p in points} == {"640", "384x640"}
    assert {(p["decode"], p["reduced_decode"]) for p in points} == {("cpu", False)}  # unlisted: the default
    for p in points:
        _parse(p, "cuda")


def test_a_space_file_is_searched_as_written():
    """Only the listed knobs vary; every other knob is fixed at the resolved default profile's value, so a
    4-point file is 4 points, searched as a grid (it once became 8, and Optuna skipped batch_size 1)."""
    from yoloray.tune.sweep import DEFAULT_TRIALS, search_plan

    space = Space.build({"precision": ["fp32", "bf16"], "batch_size": [1, 8]}, cuda=False, frame_size=(1920, 1080))
    points = space.points()
    assert len(points) == 4
    assert {(p["precision"], p["batch_size"]) for p in points} == {("fp32", 1), ("fp32", 8), ("bf16", 1), ("bf16", 8)}
    for knob, value in {"backend": "torch", "imgsz": "384x640", "cuda_graph": False, "channels_last": False,
                        "decode": "cpu", "reduced_decode": False}.items():
        assert {p[knob] for p in points} == {value}, knob
    settings = TuneConfig(name="n", out="/tmp/n", model="m", budget_trials=DEFAULT_TRIALS)
    assert search_plan(len(points), settings) == (True, 4)
    base = {"backend": "torch", "provider": None, "precision": "fp16", "batch_size": 128, "imgsz": (384, 640), "cuda_graph": True,
            "channels_last": True, "compile_mode": None, "decode": "hybrid", "reduced_decode": False, "workspace_gib": None}
    cuda = Space.build({"batch_size": [64, 128]}, cuda=True, base=base).points()
    assert [(p["batch_size"], p["precision"], p["decode"], p["cuda_graph"]) for p in cuda] == [
        (64, "fp16", "hybrid", True), (128, "fp16", "hybrid", True)]


def test_rect_imgsz_is_stride_aligned():
    assert rect_imgsz((1920, 1080)) == "384x640"
    assert rect_imgsz((1080, 1920)) == "640x384"
    assert rect_imgsz((640, 640)) == "640"


def test_user_space_narrows_and_fixes():
    space = Space.build({"backend": "torch", "precision": ["fp32"], "batch_size": [1, 4], "imgsz": [64, "96x160"],
                         "channels_last": False, "reduced_decode": False, "conf": 0.3}, cuda=False)
    points = space.points()
    assert len(points) == 4
    assert {p["imgsz"] for p in points} == {"64", "96x160"}
    assert space.fixed == {"conf": 0.3}
    settings = TuneConfig(name="t", out="/tmp/t", model="yolov8n.yaml", space={"conf": 0.3})
    cfg = Profile.parse(engine_fields(points[0], settings))
    assert cfg.conf == 0.3 and cfg.device == "cpu"


def test_fixed_micro_batch_must_divide_every_batch_size():
    space = Space.build({"micro_batch": 32}, cuda=True)
    settings = TuneConfig(name="t", out="/tmp/t", model="yolov8n.yaml", space={"micro_batch": 32}, gpus=1)
    for point in space.points():
        assert Profile.parse(engine_fields(point, settings)).micro_batch == 32
    with pytest.raises(ConfigError, match="micro_batch 48 must divide every batch_size; it does not divide 32, 64, 128, 256"):
        Space.build({"micro_batch": 48}, cuda=True)
    with pytest.raises(ConfigError, match="micro_batch: 0"):
        Space.build({"micro_batch": 0}, cuda=True)


def test_cuda_only_values_on_a_cpu_run_are_kept_and_warned():
    space = Space.build({"precision": ["fp32", "fp16"], "batch_size": 1, "imgsz": 64}, cuda=False)
    assert "fp16" in {p["precision"] for p in space.points()}
    assert any("fp16 needs CUDA" in w for w in space.warnings())
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        _parse(next(p for p in space.points() if p["precision"] == "fp16"), "cpu")


def test_knob_without_effect_does_not_vary():
    space = Space.build({"backend": "torch-compile", "cuda_graph": [False, True], "batch_size": 1, "imgsz": 64,
                         "precision": "fp32", "decode": "cpu", "channels_last": False, "reduced_decode": False,
                         "compile_mode": ["default", "max-autotune"]}, cuda=True)
    points = space.points()
    assert len(points) == 2 and {p["cuda_graph"] for p in points} == {False}
    assert any("cuda_graph has no effect" in w for w in space.warnings())


@pytest.mark.parametrize("data, match", [
    ({"fooz": [1]}, r"unknown knob 'fooz'; knobs: backend, provider, precision"),
    ({"provider": ["openvino"]}, r"provider: 'openvino' is not allowed; allowed: cpu, cuda, tensorrt"),
    ({"precision": ["fp8"]}, r"precision: 'fp8' is not allowed; allowed: fp32, fp16, bf16"),
    ({"precision": "int4"}, r"precision: 'int4' is not allowed"),
    ({"backend": ["tensorrt-x"]}, r"backend: 'tensorrt-x' is not allowed; allowed: torch, torch-compile"),
    ({"compile_mode": ["fast"]}, r"compile_mode: 'fast' is not allowed; allowed: default, reduce-overhead"),
    ({"batch_size": []}, r"batch_size: empty list"),
    ({"batch_size": [0]}, r"batch_size: 0: .*greater than or equal to 1"),
    ({"batch_size": [2048]}, r"batch_size: 2048"),
    ({"imgsz": [100]}, r"imgsz: 100: height 100 must be a positive multiple of the model stride 32"),
    ({"workspace_gib": [0]}, r"workspace_gib: 0: .*greater than 0"),
    ({"cuda_graph": ["maybe"]}, r"cuda_graph: 'maybe'"),
    ({"model": "x.pt"}, r"model cannot be set in a space file"),
    ({"device": "cuda"}, r"device cannot be set"),
    ({"conf": [0.2, 0.3]}, r"conf is not searched; give one value"),
    ([1, 2], r"must be a mapping"),
])
def test_space_validation_errors_name_the_knob(data, match):
    with pytest.raises(ConfigError, match=match):
        validate_mapping(data, "space.yaml")


def test_space_file(tmp_path):
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump({"precision": ["fp32", "bf16"], "batch_size": [1, 8], "imgsz": "384x640"}))
    assert load_space_file(p) == {"precision": ["fp32", "bf16"], "batch_size": [1, 8], "imgsz": ["384x640"]}
    p.write_text("precision: [fp32\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space_file(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_space_file(tmp_path / "missing.yaml")


class _FakeTrial:
    """Records Optuna suggestions; picks the last choice."""

    def __init__(self, pick=-1):
        self.asked, self.pick = {}, pick

    def suggest_categorical(self, name, choices):
        self.asked[name] = list(choices)
        return choices[self.pick]


@pytest.mark.parametrize("mapping", [{"backend": ["torch", "torch-compile"], "cuda_graph": [False, True]},
                                     {"backend": ["torch", "torch-compile"], "cuda_graph": [False, True],
                                      "compile_mode": ["default", "max-autotune"]}])
def test_optuna_space_suggests_conditional_knobs_only_where_they_apply(mapping):
    space = Space.build(mapping, cuda=True)
    define = OptunaSpace(space)
    for pick in (0, -1):  # backend torch, then torch-compile
        trial = _FakeTrial(pick)
        point = define(trial)["engine"]
        assert point in space.points()
        assert "channels_last" not in trial.asked  # not listed: fixed
        if point["backend"] == "torch":
            assert "compile_mode" not in trial.asked and "cuda_graph" in trial.asked
        else:
            assert ("compile_mode" in trial.asked) is ("compile_mode" in mapping)  # one mode by default: not asked
            assert "cuda_graph" not in trial.asked
        assert "reduced_decode" not in trial.asked  # not listed: fixed


def test_default_budget_searches_the_default_cuda_space_with_optuna(tmp_path):
    from yoloray.tune import sweep
    from yoloray.tune.sweep import DEFAULT_TRIALS, search_plan

    def settings(*flags):
        args = sweep.build_parser().parse_args(["--model", "yolov8n.yaml", "--out", str(tmp_path / "run"), *flags])
        return sweep.settings_from_args(args)[0]

    default = settings()
    assert (default.budget_trials, default.budget_minutes) == (DEFAULT_TRIALS, sweep.DEFAULT_MINUTES)
    assert settings("--budget-trials", "5").budget_minutes is None  # a trial count alone has no time cap
    assert settings("--budget-minutes", "3").budget_trials is None
    assert search_plan(len(Space.build(None, cuda=True).points()), default) == (True, 16)  # the default: a grid
    cuda = len(Space.build({"precision": ["fp16", "bf16"], "batch_size": [16, 32, 64, 128, 256],
                            "cuda_graph": [False, True], "decode": ["gpu", "hybrid"]}, cuda=True).points())
    assert cuda > DEFAULT_TRIALS
    assert search_plan(cuda, default) == (False, DEFAULT_TRIALS)  # Optuna + ASHA, not the full grid
    assert search_plan(cuda, settings("--budget-trials", str(cuda))) == (True, cuda)  # the exhaustive grid
    assert search_plan(cuda, settings("--budget-minutes", "30")) == (False, cuda)  # as many as fit
    assert search_plan(8, default) == (True, 8)  # a space smaller than the budget is a grid


def test_trial_helpers():
    imgs = [b"a", b"b", b"c"]
    assert make_batches(imgs, 2, 2) == [[b"a", b"b"], [b"c", b"a"]]
    w = {"measured_images_per_s": 100.0, "p99_ms": 10.0}
    assert not is_stable([w, w], 0.1)
    assert is_stable([w, w, {"measured_images_per_s": 105.0, "p99_ms": 10.5}], 0.1)
    assert not is_stable([w, w, {"measured_images_per_s": 150.0, "p99_ms": 10.0}], 0.1)


def test_a_torch_point_laid_over_a_cpu_default_drops_the_auto_provider():
    """On a CPU the default profile resolves to ONNX Runtime with provider cpu; the report lays the engine
    winner (a torch point) over it when there is no layout level, which must not keep that provider (a resumed
    sweep failed there: 'provider is only honoured by backend onnxruntime')."""
    from yoloray.profile import Hardware, resolve

    default = resolve(Profile(model="yolov8n.yaml", device="cpu", imgsz=(64, 64)), Hardware(cpus=2))
    assert (default.backend, default.provider) == ("onnxruntime", "cpu")
    settings = TuneConfig(name="t", out="/tmp/t", model="yolov8n.yaml")
    winner = default.replace(**engine_fields({"backend": "torch", "precision": "fp32", "batch_size": 2}, settings))
    assert (winner.backend, winner.provider, winner.batch_size) == ("torch", None, 2)
    ort = default.replace(**engine_fields({"backend": "onnxruntime", "batch_size": 2}, settings))
    assert ort.provider == "cpu"  # an ONNX Runtime point keeps it


def test_default_space_follows_the_size_of_the_users_stills(tmp_path):
    """A stills archive or folder sets the default input shape as `infer` resolves it; generated frames and
    videos keep theirs."""
    import cv2
    import numpy as np

    from yoloray.tune.archive import with_input_size

    def jpeg(w, h):
        return cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))[1].tobytes()

    base = TuneConfig(name="t", out=str(tmp_path), model="yolov8n.yaml")
    four_three = [jpeg(1280, 960)] * 3
    assert with_input_size(base.model_copy(update={"images": str(tmp_path)}), four_three).frame_size == (1280, 960)
    assert with_input_size(base.model_copy(update={"archive": [str(tmp_path)]}), four_three).frame_size == (1280, 960)
    mixed = [jpeg(1280, 960), jpeg(1920, 1080)]
    assert with_input_size(base.model_copy(update={"images": str(tmp_path)}), mixed).frame_size == (640, 640)
    assert with_input_size(base, four_three).frame_size == (1920, 1080)  # generated frames: --frame-size
    video = base.model_copy(update={"archive": [str(tmp_path)], "video": True, "frame_size": (640, 480)})
    assert with_input_size(video, four_three).frame_size == (640, 480)
    shape = Space.build({}, cuda=True, frame_size=(1280, 960)).values["imgsz"]
    assert shape == ("480x640",)


@pytest.mark.parametrize("device, gpus", [("cuda", 2), ("cuda:0", 1), ("cpu", 0), ("cpu", 2)])
@pytest.mark.parametrize("haproxy", [False, True])
def test_serve_config_packs_four_replicas_per_gpu_on_cuda(tmp_path, monkeypatch, device, gpus, haproxy):
    """The sweep's Serve config: on CUDA 4 x 0.25 GPU per GPU of the sweep (benchmarks/README.md, "Serving"),
    autoscaled from one per GPU, behind HAProxy where its binary is installed; on a CPU no GPU, 1 to
    max(1, gpus) replicas, as before, behind the default (Python) proxy."""
    from ray.serve.schema import ServeDeploySchema

    from yoloray.serve import ingress
    from yoloray.tune.report import serve_config

    monkeypatch.setattr(ingress, "haproxy_available", lambda: haproxy)
    settings = TuneConfig(name="s", out=str(tmp_path), model="yolov8n.yaml", gpus=gpus, cpus_per_trial=3)
    data = serve_config(Profile(device=device, batch_size=8), settings)
    ServeDeploySchema.model_validate(data)
    (app,) = data["applications"]
    want = "haproxy" if haproxy and device.startswith("cuda") else None
    assert app["args"].get("ingress") == want
    (d,) = app["deployments"]
    auto = d["autoscaling_config"]
    if device.startswith("cuda"):
        assert d["ray_actor_options"] == {"num_gpus": 0.25, "num_cpus": 3}
        assert (auto["min_replicas"], auto["max_replicas"]) == (gpus, 4 * gpus)
    else:
        assert d["ray_actor_options"] == {"num_gpus": 0, "num_cpus": 3}
        assert (auto["min_replicas"], auto["max_replicas"]) == (1, max(1, gpus))
    assert yaml.safe_load(yaml.safe_dump(data, sort_keys=False)) == data
