"""ONNX Runtime backend on the CPU: fidelity against ultralytics predict (exact fp32, fast-mode int8), the export's
metadata, the artifact cache (a second build loads, in this process and in another), missing providers, and the
provider options each knob produces (CUDA and TensorRT options are checked as values: no GPU here).

Tolerances: fp32 as the torch exact mode (every reference box matched at IoU >= 0.99, score within 1e-3, no extra
box); int8 as every fast mode (>= 97% of the exact boxes at IoU >= 0.9, score within 0.05) on the demo
detector's held-out frames, calibrated on its training frames (the user's own inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from ultralytics import YOLO

from yoloray.config import ConfigError, EngineConfig, Profile
from yoloray.detector import Detector
from yoloray.engines import EngineError, build_engine
from yoloray.engines import onnxruntime_backend as backend
from yoloray.engines import ort_providers as providers
from yoloray.engines.cache import ArtifactCache
from yoloray.engines.export import export_onnx, read_metadata
from yoloray.engines.torch_backend import load_model
from yoloray.fidelity import compare, from_ultralytics
from yoloray.profile import resolve_here

CONF = {"v8": 0.3, "v11": 0.02, "v26": 0.3}
NAMES = ["bus", "zidane", "wide_crop", "tall_small", "fullhd", "exif6", "gray_png", "webp"]


def ort_config(model, cache, **fields) -> Profile:
    return resolve_here(Profile(device="cpu", model=str(model), backend="onnxruntime", cache_dir=str(cache), **fields))


@pytest.mark.parametrize("family", ["v8", "v11", "v26"])
def test_cpu_fp32_matches_predict(photos, checkpoints, tmp_path, family):
    shape = (256, 320)
    files = [photos[n] for n in NAMES]
    weights = str(checkpoints[family])
    det = Detector(ort_config(weights, tmp_path, imgsz=shape, conf=CONF[family], batch_size=3)).warmup()
    assert det.engine.provider == "cpu"  # the default on a CPU device
    ours = det.detect([f.read_bytes() for f in files])
    nms = False if det.engine.end2end else None
    ref = from_ultralytics(YOLO(weights).predict([str(f) for f in files], imgsz=shape, rect=False, conf=CONF[family],
                                                 nms=nms, device="cpu", verbose=False))
    assert ours.errors == [None] * len(files)
    assert ref.offsets[-1] > 50
    fid = compare(ref, ours, iou=0.99, score_tol=1e-3)
    assert fid.rate == 1.0 and fid.extra == 0, fid


def test_int8_within_fast_mode_tolerance(demo_model, held_out, tmp_path):
    files = sorted(Path(held_out.images_val).glob("*.jpg"))
    imgs = [f.read_bytes() for f in files]
    base = Profile(device="cpu", model=demo_model, imgsz=(384, 640), conf=0.25, batch_size=8, backend="torch")
    exact = Detector(base).detect(imgs)  # the exact path (torch fp32), not the CPU default
    det = Detector(base.replace(backend="onnxruntime", precision="int8", cache_dir=str(tmp_path),
                                calibration=str(held_out.images_train)))
    model = onnx.load(str(next((tmp_path / "onnx-int8").glob("*/model.onnx"))))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 50  # a real QDQ graph
    assert read_metadata(next((tmp_path / "onnx-int8").glob("*/model.onnx"))).precision == "int8"
    fast = det.detect(imgs)
    assert exact.offsets[-1] > 100
    fid = compare(exact, fast, iou=0.9, score_tol=0.05)
    assert fid.rate >= 0.97, fid


@pytest.mark.parametrize("symmetric", [False, True])
def test_int8_graph_forms(checkpoints, tmp_path, symmetric):
    """CPU form: uint8 activations (U8S8); TensorRT form: int8 activations with zero point 0 (explicit
    quantization). Weights int8 per channel in both; the head's decode and output convolutions not quantized."""
    from onnx import numpy_helper

    from yoloray.engines.export import head_nodes
    from yoloray.engines.quantize import quantize_int8

    export_onnx(load_model(str(checkpoints["v8"])), tmp_path / "m.onnx", (128, 128), None)
    frames = [np.random.default_rng(i).random((1, 3, 128, 128), dtype=np.float32) for i in range(2)]
    quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", frames, symmetric=symmetric)
    model = onnx.load(str(tmp_path / "q.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [init[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in init]
    assert zero_points
    if symmetric:
        assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    else:
        assert {z.dtype for z in zero_points} == {np.dtype(np.uint8)}
    decode, output_convs = head_nodes(model)
    quantized_inputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert all(init[convs[c].input[1]].dtype == np.float32 for c in output_convs)  # fp32 weights
    assert sum(c.input[1] in quantized_inputs for c in convs.values()) > 40  # the rest: int8 weights


def test_int8_needs_calibration_frames(checkpoints, tmp_path):
    with pytest.raises(EngineError, match="precision int8 needs calibration frames"):
        build_engine(ort_config(checkpoints["v8"], tmp_path, precision="int8", imgsz=256), torch.device("cpu"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EngineError, match="calibration inputs"):
        build_engine(ort_config(checkpoints["v8"], tmp_path, precision="int8", imgsz=256, calibration=str(empty)),
                     torch.device("cpu"))


@pytest.mark.parametrize("batch", [None, 4])
def test_export_metadata_round_trip(checkpoints, tmp_path, batch):
    net = load_model(str(checkpoints["v8"]))
    path = tmp_path / "m.onnx"
    meta = export_onnx(net, path, (256, 320), batch, build_key="abc")
    back = read_metadata(path)
    assert back == meta
    assert (back.names, back.stride, back.imgsz, back.task, back.batch, back.end2end, back.precision) == (
        {i: f"class{i}" for i in range(80)}, 32, (256, 320), "detect", batch, False, "fp32")
    model = onnx.load(str(path))
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [batch or "batch", 3, 256, 320]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(batch or 2, 3, 256, 320)
    with torch.inference_mode():
        expect = net(x)
    got = session.run(None, {"images": x.numpy()})[0]
    assert got.shape == tuple(expect.shape)
    np.testing.assert_allclose(got, expect.numpy(), atol=1e-2, rtol=1e-4)  # box pixels: float summation order


def test_export_takes_dfl_softmax_over_the_last_axis(checkpoints):
    """LastAxisDFL: the same values as ultralytics' DFL, and one Softmax in the graph, over the last axis (ONNX
    Runtime's CPU softmax over DFL's middle axis cost a tenth of the int8 graph's time)."""
    import copy

    from yoloray.engines.export import LastAxisDFL

    net = load_model(str(checkpoints["v8"]))
    dfl = net.model[-1].dfl
    x = torch.randn(2, 64, 300)
    with torch.inference_mode():
        torch.testing.assert_close(LastAxisDFL(copy.deepcopy(dfl))(x), dfl(x), rtol=1e-5, atol=1e-5)


def test_export_graph_form(checkpoints, tmp_path):
    export_onnx(load_model(str(checkpoints["v8"])), tmp_path / "m.onnx", (128, 128), None)
    softmax = [n for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if n.op_type == "Softmax"]
    assert [(n.name, n.attribute[0].i) for n in softmax] == [("/model.22/dfl/Softmax", -1)]


def test_fp16_conversion_keeps_the_box_decode_in_fp32(checkpoints, tmp_path):
    """The CUDA provider's fp16 graph (run in tests/gpu): fp16 input and convolutions, the head's decode and the
    output in fp32, metadata saying fp16."""
    from yoloray.engines.export import head_nodes, to_fp16

    export_onnx(load_model(str(checkpoints["v8"])), tmp_path / "m.onnx", (256, 256), None)
    meta = to_fp16(tmp_path / "m.onnx", tmp_path / "h.onnx")
    assert meta.precision == "fp16" == read_metadata(tmp_path / "h.onnx").precision
    import onnx
    import onnxruntime as ort

    names = [n.name for n in onnx.load(str(tmp_path / "h.onnx")).graph.node]
    assert len(names) == len(set(names))  # ONNX Runtime refuses repeated node names at load
    ort.InferenceSession(str(tmp_path / "h.onnx"), providers=["CPUExecutionProvider"])  # a valid graph
    half = onnx.load(str(tmp_path / "h.onnx"))
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert half.graph.input[0].type.tensor_type.elem_type == f16
    assert half.graph.output[0].type.tensor_type.elem_type == f32
    weights = {i.name: i.data_type for i in half.graph.initializer}
    decode, output_convs = head_nodes(half)
    assert decode and len(output_convs) == 6  # 3 scales x (box, class) branches
    convs = {n.name: n for n in half.graph.node if n.op_type == "Conv"}
    assert weights[convs[output_convs[0]].input[1]] == f16  # the branches run in fp16
    dfl = [n for n in half.graph.node if n.name in decode and n.name.endswith("dfl/MatMul")]
    assert dfl and weights[dfl[0].input[1]] == f32  # the decode does not


def test_second_build_loads_from_the_cache(checkpoints, tmp_path, monkeypatch):
    cfg = ort_config(checkpoints["v8"], tmp_path, imgsz=256)
    first = build_engine(cfg, torch.device("cpu"))
    assert [e[2] for e in first.cache.events] == ["built"]
    x = torch.rand(2, 3, 256, 256)
    expect = first(x)

    def no_export(*args, **kwargs):
        raise AssertionError("rebuilt an artifact the cache holds")

    monkeypatch.setattr(backend, "export_onnx", no_export)
    second = build_engine(cfg, torch.device("cpu"))
    assert [e[2] for e in second.cache.events] == ["hit"]
    assert torch.equal(second(x), expect)


def test_cache_hit_in_another_process(checkpoints, tmp_path, engine_in_new_process):
    cfg = ort_config(checkpoints["v8"], tmp_path, imgsz=256)
    build_engine(cfg, torch.device("cpu"))
    assert engine_in_new_process(cfg, "[k[2] for k in e.cache.events]") == "['hit']"


def test_uri_cache_is_shared_through_pyarrow(tmp_path):
    """A URI cache (here file://; s3:// and gs:// go through the same pyarrow calls): one node builds and
    stores, another node with its own staging folder loads."""
    shared = f"file://{tmp_path / 'shared'}"
    a = ArtifactCache(shared, staging=str(tmp_path / "node-a"))
    b = ArtifactCache(shared, staging=str(tmp_path / "node-b"))
    built = a.file("onnx", "k1", "model.onnx", lambda p: p.write_bytes(b"graph"))
    assert built.read_bytes() == b"graph" and (tmp_path / "shared" / "onnx" / "k1" / "model.onnx").is_file()
    loaded = b.file("onnx", "k1", "model.onnx", lambda p: pytest.fail("rebuilt"))
    assert loaded.read_bytes() == b"graph" and loaded.parent.parent.parent == tmp_path / "node-b"
    assert [e[2] for e in a.events + b.events] == ["built", "hit"]
    # folders (TensorRT engine and timing caches): what one node's tool wrote, the other finds
    (a.folder("tensorrt", "k2") / "engine.plan").write_bytes(b"plan")
    assert a.push_folder("tensorrt", "k2") == 1 and a.push_folder("tensorrt", "k2") == 0
    assert (b.folder("tensorrt", "k2") / "engine.plan").read_bytes() == b"plan"
    a.put_blob("torch-compile", "k3", b"artifacts")
    assert b.blob("torch-compile", "k3") == b"artifacts" and b.blob("torch-compile", "nope") is None


def test_missing_providers_say_what_to_install():
    """This machine's onnxruntime is the CPU build: asking for a GPU provider is an error naming the package,
    never a session quietly running on another provider."""
    assert "CUDAExecutionProvider" not in ort.get_available_providers()
    with pytest.raises(EngineError, match="provider cuda is not in this onnxruntime .* install .*onnxruntime-gpu"):
        providers.check("cuda", "cuda")
    with pytest.raises(EngineError, match="provider tensorrt .*onnxruntime-gpu.*TensorRT"):
        providers.check("tensorrt", "cuda")
    with pytest.raises(EngineError, match="needs onnxruntime-gpu"):
        providers.best("cuda")
    with pytest.raises(EngineError, match="runs on a CUDA GPU"):
        providers.check("cuda", "cpu")
    session = ort.InferenceSession(_tiny_model(), providers=["CPUExecutionProvider"])
    with pytest.raises(EngineError, match="could not start provider cuda .*runs on CPUExecutionProvider"):
        providers.check_session(session, "cuda")
    with pytest.raises(ConfigError, match="provider cuda needs a CUDA device"):
        Profile.parse({"model": "yolov8n.yaml", "backend": "onnxruntime", "provider": "cuda", "device": "cpu"})


def _tiny_model() -> bytes:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9).SerializeToString()


def _options(provider, **fields):
    exact = {"precision": "fp32", "cuda_graph": False, "micro_batch": None, "channels_last": False}  # not auto
    cfg = EngineConfig(model="yolov8n.yaml", backend="onnxruntime", provider=provider, imgsz="384x640",
                       batch_size=64, **{**exact, **fields})
    return providers.provider_options(provider, cfg, 1, 32, "/c/engines", "/c/timing")


def test_tensorrt_options_each_knob_produces():
    (name, trt), (fallback, cuda) = _options("tensorrt")
    assert (name, fallback) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert trt == {"device_id": "1", "trt_fp16_enable": "0", "trt_int8_enable": "0",
                   "trt_engine_cache_enable": "1", "trt_engine_cache_path": "/c/engines",
                   "trt_timing_cache_enable": "1", "trt_timing_cache_path": "/c/timing",
                   "trt_profile_min_shapes": "images:1x3x384x640", "trt_profile_opt_shapes": "images:32x3x384x640",
                   "trt_profile_max_shapes": "images:32x3x384x640"}
    assert cuda == {"device_id": "1", "use_tf32": "0"}
    knobs = {
        "workspace_gib": (2.5, {"trt_max_workspace_size": str(int(2.5 * 2**30))}),
        "precision": ("fp16", {"trt_fp16_enable": "1", "trt_int8_enable": "0"}),
        "trt_opt_level": (5, {"trt_builder_optimization_level": "5"}),
        "trt_min_batch": (8, {"trt_profile_min_shapes": "images:8x3x384x640"}),
        "cuda_graph": (True, {"trt_cuda_graph_enable": "1", "trt_profile_min_shapes": "images:32x3x384x640"}),
    }
    for knob, (value, expect) in knobs.items():
        got = _options("tensorrt", **{knob: value})[0][1]
        assert {k: got[k] for k in expect} == expect, knob
        assert set(got) - set(trt) == set(expect) - set(trt), knob
    int8 = _options("tensorrt", precision="int8", calibration="frames/")[0][1]
    assert (int8["trt_int8_enable"], int8["trt_fp16_enable"]) == ("1", "1")


def test_cuda_options_each_knob_produces():
    assert _options("cuda") == [("CUDAExecutionProvider", {"device_id": "1", "use_tf32": "0"})]
    got = _options("cuda", precision="fp16", conv_algo_search="heuristic", cudnn_max_workspace=False,
                   cuda_graph=True, channels_last=True)[0][1]
    assert got == {"device_id": "1", "use_tf32": "1", "cudnn_conv_algo_search": "HEURISTIC",
                   "cudnn_conv_use_max_workspace": "0", "enable_cuda_graph": "1", "prefer_nhwc": "1"}
    assert _options("cpu") == ["CPUExecutionProvider"]


@pytest.mark.parametrize("fields, needle", [
    ({"provider": "cuda", "precision": "int8"}, "precision 'int8' is not supported by backend 'onnxruntime' with provider 'cuda'"),
    ({"provider": "cpu", "workspace_gib": 2}, "workspace_gib is not honoured by backend 'onnxruntime' with provider 'cpu'"),
    ({"provider": "cpu", "channels_last": True}, "channels_last is not honoured by backend 'onnxruntime' with provider 'cpu'"),
    ({"provider": "cuda", "trt_opt_level": 3}, "trt_opt_level is not honoured by backend 'onnxruntime' with provider 'cuda'; leave it unset (honoured by: onnxruntime/tensorrt)"),
    ({"provider": "tensorrt", "conv_algo_search": "heuristic"}, "conv_algo_search is not honoured"),
    ({"backend": "torch", "provider": "cpu"}, "provider is only honoured by backend 'onnxruntime'"),
    ({"provider": "openvino"}, "provider: Input should be 'cpu', 'cuda' or 'tensorrt'"),
    ({"trt_opt_level": 6}, "trt_opt_level"),
])
def test_knobs_a_provider_does_not_honour_are_refused(fields, needle):
    with pytest.raises(ConfigError) as e:
        EngineConfig.parse({"model": "yolov8n.yaml", "backend": "onnxruntime", **fields})
    assert needle in str(e.value)


def test_backends_command_says_what_is_verified_and_what_runs_here(capsys):
    from yoloray.cli import main

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("onnxruntime provider=")}
    assert set(rows) == {"provider=cpu", "provider=cuda", "provider=tensorrt"}
    assert "NOT RUN: built against ONNX Runtime's documented TensorRT provider options" in out
    here = [line.strip() for line in out.splitlines() if "on this machine:" in line]
    assert here[0] == "on this machine: available"  # the CPU provider
    assert all("not available" in line and "onnxruntime-gpu" in line for line in here[1:])
