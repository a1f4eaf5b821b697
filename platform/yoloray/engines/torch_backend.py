"""PyTorch backend: the fused ultralytics model, fp32 / fp16 / bf16, channels_last, CUDA graphs or
torch.compile. Serves both the `torch` and the `torch-compile` backend names."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from yoloray.engines.base import Engine, EngineError, check_weights_file
from yoloray.engines.torch_compile import ARTIFACTS_KIND, CompiledForward

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_model(model: str, max_det: int = 300, agnostic: bool = False) -> torch.nn.Module:
    """Ultralytics detection model from weights (.pt) or a model YAML (random weights, seeded), fused, eval.

    A model with an end-to-end (one-to-one, NMS-free) head runs that head and its output is used as it is
    (ultralytics' `predict(nms=False)`); its top-k keeps max(max_det, 300) candidates, as ultralytics does."""
    from ultralytics.nn.tasks import DetectionModel, load_checkpoint

    path = Path(model)
    if path.suffix == ".pt":
        check_weights_file(model)
        try:
            net = load_checkpoint(str(path), device="cpu")[0]
        except Exception as e:  # a file that is not an ultralytics checkpoint
            raise EngineError(f"{model} is not an ultralytics checkpoint: {e}") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            net = random_model(str(path))
        except FileNotFoundError:
            raise EngineError(
                f"model YAML {model} not found; use a file path or an ultralytics model name such as "
                "yolov8n.yaml, yolo11n.yaml, yolo26n.yaml"
            ) from None
    else:
        raise EngineError(f"model {model!r} must be ultralytics weights (.pt) or a model YAML (.yaml)")
    task = getattr(net, "task", "detect")
    if task != "detect" or type(net) is not DetectionModel:
        raise EngineError(f"{model} is a {task} model ({type(net).__name__}); yoloray runs detection models")
    if getattr(net.model[-1], "one2one_cv2", None) is not None:
        net.end2end = True
        net.set_head_attr(max_det=max(max_det, 300), agnostic_nms=agnostic)
    net = net.fuse(verbose=False).eval().float()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def random_model(yaml: str):
    """An ultralytics detection model of `yaml` with seeded random weights: the same weights every time, for
    reproducible speed and plumbing runs."""
    from ultralytics.nn.tasks import DetectionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DetectionModel(yaml, verbose=False)


def save_random_checkpoint(yaml: str, path: str | Path) -> Path:
    """`random_model(yaml)` saved as an ultralytics checkpoint at `path`, for tools that read only weights
    files (ultralytics' own predict, the benchmarks' peers); it loads to the same weights as `yaml` itself."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": random_model(yaml).eval(), "train_args": {}}, path)
    return path


def decode_head_in_fp32(head: torch.nn.Module) -> None:
    """Convolutions stay in fp16/bf16; the head's box decode (DFL softmax, anchors, strides) runs in fp32.

    In bf16 (8-bit mantissa) a coordinate near 640 px would be quantized to 4 px steps, enough to move
    small boxes below IoU 0.9 of the fp32 reference; this costs a few small element-wise kernels."""
    head.dfl.float()
    inner = head._inference

    def _inference_fp32(x: dict):
        x = dict(x)
        x["boxes"], x["scores"] = x["boxes"].float(), x["scores"].float()
        # anchors are built from the feature maps' shape and dtype only: zero-copy fp32 stand-ins
        x["feats"] = [torch.zeros((), dtype=torch.float32, device=f.device).expand(f.shape) for f in x["feats"]]
        return inner(x)

    head._inference = _inference_fp32


class TorchEngine(Engine):
    def __init__(self, config, device: torch.device):
        self.device = device
        self.dtype = DTYPES[config.precision]
        self.channels_last = config.channels_last
        net = load_model(config.model, config.max_det, config.agnostic_nms)
        self.names = {int(k): str(v) for k, v in net.names.items()}
        self.stride = max(int(net.stride.max()), 32)
        self.end2end = bool(getattr(net, "end2end", False))
        net = net.to(device=device, dtype=self.dtype)
        if self.dtype != torch.float32:
            decode_head_in_fp32(net.model[-1])
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self._forward = net
        self.cuda_graph = config.cuda_graph and device.type == "cuda"
        self.compile = config.backend == "torch-compile"
        self.forward_batch = config.micro_batch or config.batch_size  # images per forward (graph replay)
        self._compile_cache: tuple | None = None  # (cache, key) when this process compiles without stored artifacts
        if self.compile:
            self._forward = self._compiled(net, config)
        self.static_batch = self.forward_batch if (self.cuda_graph or self.compile) else None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_in: torch.Tensor | None = None
        self._static_out: torch.Tensor | None = None
        self._replayed: torch.cuda.Event | None = None

    def _compiled(self, net: torch.nn.Module, config):
        """The model compiled ahead of time for its one input shape, from the shared artifact cache when an
        earlier engine stored it (engines/torch_compile.py); where that cannot run, torch.compile with
        Inductor's cache artifacts (traced again in every process)."""
        from yoloray.config import model_identity
        from yoloray.engines.cache import ArtifactCache, cache_key, environment

        mode = config.compile_mode or "default"
        fields = {"model": model_identity(config.model), "precision": config.precision, "imgsz": list(config.imgsz),
                  "batch": self.forward_batch, "channels_last": config.channels_last, "mode": mode,
                  "max_det": config.max_det, "agnostic_nms": config.agnostic_nms, "device": self.device.type}
        cache = ArtifactCache(config.cache_dir)
        key = cache_key("torch-compile", fields, environment(self.device, ("torch", "ultralytics", "triton")))
        self.artifact_events = cache.events
        example = torch.zeros((self.forward_batch, 3, *config.imgsz), device=self.device, dtype=self.dtype)
        if self.channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        try:
            return CompiledForward(net, example, mode, cache, key)
        except EngineError as e:
            log.warning("torch-compile (mode %s): %s; using torch.compile, which traces the model again in every "
                        "process", mode, e)
        blob = cache.blob(ARTIFACTS_KIND, key)
        if blob is not None:
            torch.compiler.load_cache_artifacts(blob)
        else:
            self._compile_cache = (cache, key)
        return torch.compile(net, mode=mode, dynamic=False)

    def _store_compile_artifacts(self) -> None:
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None and self._compile_cache is not None:
            cache, key = self._compile_cache
            cache.put_blob(ARTIFACTS_KIND, key, saved[0])
        self._compile_cache = None

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self._forward(x)
        return out[0] if isinstance(out, (tuple, list)) else out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.static_batch is not None and x.shape[0] % self.static_batch:
            raise EngineError(f"this engine runs batches of a multiple of {self.static_batch} images, got {x.shape[0]}")
        chunks = []
        for i in range(0, x.shape[0], self.forward_batch):
            if chunks and self.device.type == "cuda":
                # Queue one forward at a time: work already queued on the GPU goes ahead of other streams' (the
                # GPU JPEG decoder's kernels wait behind a queued batch), so the decoder gets the GPU in between.
                torch.cuda.current_stream(self.device).synchronize()
            chunks.append(self._forward_one(x[i : i + self.forward_batch]))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        """One forward of at most forward_batch images: a CUDA-graph replay once captured."""
        if self._graph is None:
            return self._run(x)
        if x.shape != self._static_in.shape:
            raise EngineError(f"CUDA graph was captured for {tuple(self._static_in.shape)}, got {tuple(x.shape)}")
        stream = torch.cuda.current_stream(self.device)
        if self._replayed is not None:  # the last replay (maybe on another thread's stream) is done with the buffers
            stream.wait_event(self._replayed)
        self._static_in.copy_(x)
        self._graph.replay()
        out = self._static_out.clone()
        self._replayed = torch.cuda.Event()
        self._replayed.record(stream)
        return out

    @torch.inference_mode()
    def warmup(self, batch_size: int, imgsz: tuple[int, int]) -> None:
        """Run through exactly the call path used later (same dtype, layout, shape), so a compiled engine
        never recompiles on its first real batch; then capture the CUDA graph from a side stream."""
        x = torch.zeros((self.static_batch or batch_size, 3, *imgsz), device=self.device, dtype=self.dtype)
        for _ in range(3 if self.device.type == "cuda" else 1):
            self(x)
        if self._compile_cache is not None:
            self._store_compile_artifacts()
        if self.cuda_graph and self._graph is None:
            self._static_in = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self._run(self._static_in)  # warm the side stream's allocator pool before capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=stream):
                    self._static_out = self._run(self._static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._graph = graph
            self._graph.replay()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
