"""ONNX Runtime execution providers: which one runs, with which options, and what to install when one is missing.

A provider asked for and not usable here is an error naming what to install, never a quiet fallback to another
provider (ONNX Runtime itself falls back to the next provider in its list with only a log line, so the session's
providers are checked after it is created).

Options each knob produces (ONNX Runtime's documented provider options):
- CUDA: `cudnn_conv_algo_search` (conv_algo_search: exhaustive | heuristic | default), `cudnn_conv_use_max_workspace`
  (cudnn_max_workspace), `enable_cuda_graph` (cuda_graph), `prefer_nhwc` (channels_last: the provider's NHWC
  convolution kernels, the tensor cores' layout, as torch's channels_last; the graph keeps NCHW input and
  output), `use_tf32=0` at fp32 (exact fp32, like the torch reference).
- TensorRT: `trt_max_workspace_size` (workspace_gib, bytes), `trt_fp16_enable` (precision fp16, and int8 for the
  layers left unquantized), `trt_int8_enable` (precision int8, explicit QDQ quantization),
  `trt_builder_optimization_level` (trt_opt_level 0-5), `trt_profile_min/opt/max_shapes` (batch profile:
  trt_min_batch or 1 / the forward batch / the forward batch), `trt_engine_cache_*` and `trt_timing_cache_*` (in
  the artifact cache), `trt_cuda_graph_enable` (cuda_graph).
"""

from __future__ import annotations

from yoloray.engines.base import EngineError

NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
INSTALL_ORT = "pip install onnxruntime (a yoloray dependency; CPU) or onnxruntime-gpu (CUDA and TensorRT providers)"
INSTALL_GPU = ("pip uninstall -y onnxruntime && pip install onnxruntime-gpu (its CUDA major version must match "
               "torch's: onnxruntime-gpu 1.31 is built for CUDA 13)")
INSTALL_TRT = ("the TensorRT libraries your onnxruntime-gpu build links (libnvinfer; the version in ONNX Runtime's "
               "TensorRT provider requirements table) on the library path: pip install tensorrt-cu13-libs or "
               "tensorrt-cu12-libs of that version (matching its CUDA), or NVIDIA's tarball with LD_LIBRARY_PATH set")


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise EngineError(f"backend onnxruntime needs ONNX Runtime: {INSTALL_ORT}") from None
    return ort


def tensorrt_loadable() -> bool:
    from yoloray.engines.cache import tensorrt_version

    return tensorrt_version() is not None


def missing(provider: str, device_type: str) -> str | None:
    """Why `provider` cannot run here (None when it can, as far as can be known before a session exists)."""
    ort = onnxruntime()
    if provider != "cpu" and device_type != "cuda":
        return f"provider {provider} runs on a CUDA GPU; set device: cuda (or auto on a GPU machine), or provider: cpu"
    if provider == "cpu" and device_type != "cpu":
        return "provider cpu runs on the CPU; set device: cpu, or provider cuda/tensorrt on a GPU"
    if NAMES[provider] not in ort.get_available_providers():
        what = INSTALL_GPU if provider == "cuda" else f"{INSTALL_GPU}, and {INSTALL_TRT}"
        return (f"provider {provider} is not in this onnxruntime {ort.__version__} (it has "
                f"{', '.join(ort.get_available_providers())}); install {what}")
    if provider == "tensorrt" and not tensorrt_loadable():
        return f"provider tensorrt: onnxruntime has it, but TensorRT is not installed; install {INSTALL_TRT}"
    return None


def best(device_type: str) -> str:
    """The default provider: tensorrt, else cuda on a GPU (whichever can run); cpu on the CPU."""
    if device_type != "cuda":
        return "cpu"
    for provider in ("tensorrt", "cuda"):
        if missing(provider, "cuda") is None:
            return provider
    raise EngineError(f"backend onnxruntime on a GPU needs onnxruntime-gpu: {missing('cuda', 'cuda')}")


def check(provider: str, device_type: str) -> None:
    reason = missing(provider, device_type)
    if reason:
        raise EngineError(reason)


def check_session(session, provider: str) -> None:
    """ONNX Runtime drops a provider it cannot load with only a log line: refuse that silently slower session."""
    got = session.get_providers()
    if not got or got[0] != NAMES[provider]:
        raise EngineError(f"ONNX Runtime could not start provider {provider} (session runs on {', '.join(got)}); "
                          f"see its log above; install {INSTALL_TRT if provider == 'tensorrt' else INSTALL_GPU}")


def shape(batch: int, imgsz: tuple[int, int]) -> str:
    from yoloray.engines.export import INPUT

    return f"{INPUT}:{batch}x3x{imgsz[0]}x{imgsz[1]}"


def provider_options(provider: str, config, device_index: int, forward_batch: int, trt_engines: str = "",
                     trt_timing: str = "") -> list:
    """The `providers` argument of an InferenceSession for this config (see the module doc for each knob)."""
    if provider == "cpu":
        return [NAMES["cpu"]]
    cuda = {"device_id": str(device_index), "use_tf32": "0" if config.precision == "fp32" else "1"}
    if config.conv_algo_search is not None:
        cuda["cudnn_conv_algo_search"] = config.conv_algo_search.upper()
    if config.cudnn_max_workspace is not None:
        cuda["cudnn_conv_use_max_workspace"] = "1" if config.cudnn_max_workspace else "0"
    if provider == "cuda":
        if config.cuda_graph:
            cuda["enable_cuda_graph"] = "1"
        if config.channels_last:
            cuda["prefer_nhwc"] = "1"
        return [(NAMES["cuda"], cuda)]
    low = forward_batch if config.cuda_graph else (config.trt_min_batch or 1)
    trt = {
        "device_id": str(device_index),
        "trt_fp16_enable": "1" if config.precision in ("fp16", "int8") else "0",
        "trt_int8_enable": "1" if config.precision == "int8" else "0",
        "trt_engine_cache_enable": "1", "trt_engine_cache_path": trt_engines,
        "trt_timing_cache_enable": "1", "trt_timing_cache_path": trt_timing,
        "trt_profile_min_shapes": shape(low, config.imgsz),
        "trt_profile_opt_shapes": shape(forward_batch, config.imgsz),
        "trt_profile_max_shapes": shape(forward_batch, config.imgsz),
    }
    if config.workspace_gib is not None:
        trt["trt_max_workspace_size"] = str(int(config.workspace_gib * 2**30))
    if config.trt_opt_level is not None:
        trt["trt_builder_optimization_level"] = str(config.trt_opt_level)
    if config.cuda_graph:
        trt["trt_cuda_graph_enable"] = "1"
    return [(NAMES["tensorrt"], trt), (NAMES["cuda"], cuda)]  # CUDA runs any node TensorRT does not take
