"""ONNX Runtime backend: the fused model exported to ONNX (export.py), run by the CPU, CUDA or TensorRT provider.

Artifacts come from the shared artifact cache (cache.py): the fp32 export, its fp16 conversion, its int8 QDQ
quantization (calibrated on the frames `calibration` names), the TensorRT engine and timing caches; only the
first builder of an entry pays for it.

On the GPU the engine binds the caller's torch tensors directly (IO binding: no host round trip); with
`cuda_graph` it exports a static batch and lets ONNX Runtime capture and replay a CUDA graph over fixed input and
output buffers. Calls are serialised by the Detector's engine lock; a call returns once its output is complete
(ONNX Runtime synchronises its stream at the end of a run).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from yoloray.engines import ort_providers as providers
from yoloray.engines.base import Engine, EngineError
from yoloray.engines.cache import ArtifactCache, cache_key, environment
from yoloray.engines.capabilities import KNOB_DEFAULTS, unhonoured
from yoloray.engines.export import GRAPH_FORM, INPUT, OUTPUT, export_onnx, read_metadata, to_fp16

log = logging.getLogger(__name__)

EXPORT_PACKAGES = ("torch", "ultralytics", "onnx")
ORT_PACKAGES = (*EXPORT_PACKAGES, "onnxruntime", "onnxruntime-gpu")


def export_fields(config, static_batch: int | None) -> dict:
    """The engine fields that change the exported graph."""
    from yoloray.config import model_identity

    return {"model": model_identity(config.model), "imgsz": list(config.imgsz), "batch": static_batch,
            "max_det": config.max_det, "agnostic_nms": config.agnostic_nms, "graph_form": GRAPH_FORM}


def onnx_artifact(config, provider: str, cache: ArtifactCache, static_batch: int | None) -> tuple[Path, str]:
    """The ONNX file this config runs (fp32, fp16 or int8) and its cache key; built once per cluster."""
    fields = export_fields(config, static_batch)
    key = cache_key("onnx", fields, environment(None, EXPORT_PACKAGES))

    def build_fp32(path: Path) -> None:
        from yoloray.engines.torch_backend import load_model

        export_onnx(load_model(config.model, config.max_det, config.agnostic_nms), path, config.imgsz,
                    static_batch, build_key=key)

    fp32 = cache.file("onnx", key, "model.onnx", build_fp32)
    if config.precision == "fp32" or (config.precision == "fp16" and provider == "tensorrt"):
        return fp32, key  # TensorRT takes fp16 as a builder flag on the fp32 graph
    if config.precision == "fp16":
        key = cache_key("onnx-fp16", {"from": key}, environment(None, ORT_PACKAGES))
        return cache.file("onnx-fp16", key, "model.onnx", lambda p: to_fp16(fp32, p)), key
    if config.precision == "int8":
        return _int8(config, cache, fp32, key, symmetric=provider == "tensorrt")
    raise EngineError(f"precision {config.precision!r} is not supported by backend onnxruntime")


def _int8(config, cache: ArtifactCache, fp32: Path, fp32_key: str, symmetric: bool) -> tuple[Path, str]:
    from yoloray.engines.quantize import frames_from_images, images_digest, quantize_int8, sample_inputs

    if not config.calibration:
        raise EngineError("precision int8 needs calibration frames: set calibration to a folder, glob or archive "
                          "of your own images (yoloray infer and tune use the job's own inputs when it is unset)")
    images = sample_inputs(config.calibration)
    key = cache_key("onnx-int8", {"from": fp32_key, "calibration": images_digest(images), "frames": len(images),
                                  "symmetric": symmetric}, environment(None, ORT_PACKAGES))

    def build(path: Path) -> None:
        quantize_int8(fp32, path, frames_from_images(images, config.imgsz), symmetric)

    return cache.file("onnx-int8", key, "model.onnx", build), key


class OrtEngine(Engine):
    def __init__(self, config, device: torch.device):
        ort = providers.onnxruntime()
        self.device = device
        self.provider = config.provider or providers.best(device.type)
        providers.check(self.provider, device.type)
        fields = {k: getattr(config, k, v) for k, v in KNOB_DEFAULTS.items()}
        if reasons := unhonoured({**fields, "precision": config.precision, "provider": None}, "onnxruntime",
                                 self.provider):
            raise EngineError(reasons[0])  # e.g. int8 asked of the provider `auto` chose
        self.config = config
        self.forward_batch = config.micro_batch or config.batch_size
        # a CUDA graph replays one input shape: export that batch; otherwise the batch axis is dynamic
        self.static_batch = self.forward_batch if config.cuda_graph else None
        self.cache = ArtifactCache(config.cache_dir)
        path, key = onnx_artifact(config, self.provider, self.cache, self.static_batch)
        meta = read_metadata(path)
        self.names, self.stride, self.end2end = meta.names, meta.stride, meta.end2end
        self.dtype = torch.float16 if meta.precision == "fp16" else torch.float32
        self._trt_dirs: tuple[str, str] | None = None
        trt = ("", "")
        if self.provider == "tensorrt":
            env = environment(device, ORT_PACKAGES)
            fields = {"onnx": key, "precision": config.precision, "batch": self.forward_batch,
                      "min_batch": config.trt_min_batch, "workspace_gib": config.workspace_gib,
                      "opt_level": config.trt_opt_level, "cuda_graph": config.cuda_graph}
            self._trt_dirs = (cache_key("tensorrt", fields, env), cache_key("tensorrt-timing", {}, env))
            trt = (str(self.cache.folder("tensorrt", self._trt_dirs[0])),
                   str(self.cache.folder("tensorrt-timing", self._trt_dirs[1])))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ONNX Runtime logs node placement warnings per session
        if self.provider == "cpu":  # the process's CPU share, as torch has it (Ray's OMP_NUM_THREADS, a trial's cpus)
            options.intra_op_num_threads = torch.get_num_threads()
        index = device.index or 0
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=providers.provider_options(
                    self.provider, config, index, self.forward_batch, *trt))  # knobs read from config
        except Exception as e:  # ONNX Runtime raises its own exception types (Fail, InvalidArgument, ...)
            raise EngineError(f"ONNX Runtime could not build a {self.provider} session: {e}") from None
        providers.check_session(self.session, self.provider)
        self.out_shape = tuple(int(d) for d in self.session.get_outputs()[0].shape[1:])
        self._static: tuple | None = None  # (input, output, binding) for CUDA-graph replays

    def __repr__(self) -> str:
        return f"OrtEngine(provider={self.provider}, precision={self.config.precision}, dtype={self.dtype})"

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.static_batch is not None and x.shape[0] % self.static_batch:
            raise EngineError(f"this engine runs batches of a multiple of {self.static_batch} images, got {x.shape[0]}")
        step = self.forward_batch
        chunks = [self._forward(x[i : i + step].contiguous()) for i in range(0, x.shape[0], step)]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.from_numpy(self.session.run([OUTPUT], {INPUT: x.numpy()})[0])
        if self.static_batch is not None:
            if self._static is None:
                inp = torch.empty_like(x)
                out = torch.empty((x.shape[0], *self.out_shape), dtype=torch.float32, device=self.device)
                self._static = (inp, out, self._bind(inp, out))
            inp, out, binding = self._static
            inp.copy_(x)
        else:
            out = torch.empty((x.shape[0], *self.out_shape), dtype=torch.float32, device=self.device)
            binding = self._bind(x, out)
        torch.cuda.current_stream(self.device).synchronize()  # the input is written before ONNX Runtime reads it
        self.session.run_with_iobinding(binding)
        return out.clone() if self.static_batch is not None else out

    def _bind(self, x: torch.Tensor, out: torch.Tensor):
        binding = self.session.io_binding()
        index = self.device.index or 0
        binding.bind_input(INPUT, "cuda", index, np.float16 if x.dtype == torch.float16 else np.float32,
                           tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT, "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        return binding

    @torch.inference_mode()
    def warmup(self, batch_size: int, imgsz: tuple[int, int]) -> None:
        """Runs at the real shape (ORT allocates, TensorRT builds or loads its engine, a CUDA graph is captured
        on the first runs); then stores any new TensorRT engine and timing cache files for the cluster."""
        x = torch.zeros((self.static_batch or batch_size, 3, *imgsz), device=self.device, dtype=self.dtype)
        for _ in range(3 if self.device.type == "cuda" else 1):
            self(x)
        if self._trt_dirs is not None:
            self.cache.push_folder("tensorrt", self._trt_dirs[0])
            self.cache.push_folder("tensorrt-timing", self._trt_dirs[1])
