"""Configuration models: pydantic v2, extra="forbid", YAML in/out, stable hashes.

`EngineConfig` is what Tune searches and what Serve and the batch job run; `EngineConfig.key()` is a
stable hash of every field that changes the engine's output or its built artifact (everything but
`device`, which only says where it runs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from yoloray.engines.capabilities import CAPABILITIES, PROVIDERS, unhonoured

MAX_STRIDE = 32  # the largest stride of the supported families (YOLOv8, YOLO11, YOLO26)
DEFAULT_MAX_PIXELS = 50_000_000  # ~ 8K x 6K; larger images become error rows, never decoded


class ConfigError(ValueError):
    """A configuration a user wrote that cannot be used; the message names the field and what is allowed."""


def default_model() -> str:
    """The bundled demo detector when it ships, else a random-weight YOLOv8n (speed and plumbing only)."""
    from yoloray.assets import demo_weights

    path = demo_weights()
    return str(path) if path is not None else "yolov8n.yaml"


def parse_imgsz(value: Any) -> tuple[int, int]:
    """640 -> (640, 640); "384x640" -> (384, 640) (height x width); [384, 640] -> (384, 640)."""
    if isinstance(value, bool):
        raise ValueError("imgsz must be an int, 'HxW' or [h, w]")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"imgsz {value!r} is not an int or 'HxW' (e.g. 640 or 384x640)") from None
        return parse_imgsz(nums[0] if len(nums) == 1 else nums)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"imgsz {value!r} is not an int, 'HxW' or [h, w]")


def load_yaml(path: str | Path, what: str = "file"):
    """YAML from a file, with errors a user can act on (missing file, bad syntax) as ConfigError."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path} is not valid YAML: {e}") from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_yaml(cls, path: str | Path):
        data = load_yaml(path, "config file") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
        return cls.parse(data, source=str(path))

    @classmethod
    def parse(cls, data: dict, source: str = "config"):
        """Validate a mapping; errors become one ConfigError naming each bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"{source}: " + format_validation_error(e)) from None

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


class EngineConfig(_Model):
    """Everything that decides how images become detections."""

    model: str = Field(default_factory=default_model, description="ultralytics weights (.pt) or model YAML")
    backend: Literal[tuple(CAPABILITIES)] = "torch"  # type: ignore[valid-type]
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    batch_size: int = Field(16, ge=1, le=1024)
    imgsz: tuple[int, int] = (640, 640)
    workspace_gib: float | None = Field(None, gt=0)
    cuda_graph: bool = False
    micro_batch: int | None = Field(
        None, ge=1, le=1024, description="images per model forward (CUDA-graph replay or compiled call), dividing "
        "batch_size; a batch runs as batch_size/micro_batch forwards. Smaller forwards let the GPU JPEG decoder's "
        "kernels run between them instead of waiting for a whole batch (default: batch_size)"
    )
    channels_last: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None
    decode: Literal["cpu", "gpu", "hybrid"] = Field(
        "cpu", description="cpu: OpenCV threads; gpu: the GPU decoder; hybrid: the CPU takes hybrid_cpu_share of the images "
        "(in a batch job, Ray tasks before the actors; elsewhere the Detector's threads) and the GPU decoder the rest"
    )
    gpu_decoder: Literal["torchvision", "nvimgcodec"] = Field(
        "torchvision", description="JPEG decoder for decode gpu/hybrid: torchvision (nvJPEG) or nvimgcodec (nvImageCodec, "
        "pip install 'yoloray[nvimgcodec]'); both use the GPU's hardware JPEG engines where it has them"
    )
    hybrid_cpu_share: float = Field(0.3, ge=0.0, le=1.0)
    reduced_decode: bool = Field(
        False, description="JPEG DCT-domain downscale (1/2, 1/4, 1/8) when the input is at most half the source"
    )
    conf: float = Field(0.25, ge=0.0, le=1.0)
    iou: float = Field(0.7, ge=0.0, le=1.0)
    max_det: int = Field(300, ge=1, le=10_000)
    agnostic_nms: bool = False
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    # backend onnxruntime (engines/ort_providers.py says which provider option each knob sets)
    provider: Literal[tuple(PROVIDERS)] | None = Field(  # type: ignore[valid-type]
        None, description="onnxruntime provider: cpu | cuda | tensorrt (default: the best one present; the "
        "TensorRT provider is built against ONNX Runtime's documented options and has not been run here)")
    conv_algo_search: Literal["exhaustive", "heuristic", "default"] | None = Field(
        None, description="CUDA provider: cuDNN convolution algorithm search (ONNX Runtime's default: exhaustive)")
    cudnn_max_workspace: bool | None = Field(None, description="CUDA provider: let cuDNN use its largest workspace")
    trt_opt_level: int | None = Field(None, ge=0, le=5, description="TensorRT builder optimisation level (default 3)")
    trt_min_batch: int | None = Field(
        None, ge=1, le=1024, description="TensorRT profile's smallest batch (opt and max: the forward batch)")
    calibration: str | None = Field(
        None, description="precision int8: folder, glob or archive of your own images; 32 frames drawn from it "
        "calibrate the activation ranges")
    cache_dir: str | None = Field(
        None, description="built-artifact cache (local path or pyarrow URI such as s3://bucket/dir) shared by "
        "actors, replicas and jobs; default $YOLORAY_CACHE or ~/.cache/yoloray")

    @field_validator("imgsz", mode="before")
    @classmethod
    def _imgsz(cls, v):
        h, w = parse_imgsz(v)
        for name, n in (("height", h), ("width", w)):
            if n < MAX_STRIDE or n % MAX_STRIDE:
                raise ValueError(
                    f"{name} {n} must be a positive multiple of the model stride {MAX_STRIDE} "
                    f"(e.g. {max(MAX_STRIDE, round(n / MAX_STRIDE) * MAX_STRIDE)})"
                )
        return (h, w)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str):
        v = v.strip().lower()
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N")

    @model_validator(mode="after")
    def _backend_honours_knobs(self):
        if reasons := unhonoured(self.model_dump(), self.backend, self.provider):
            raise ValueError(reasons[0])
        if self.micro_batch is not None and self.batch_size % self.micro_batch:
            raise ValueError(
                f"micro_batch {self.micro_batch} must divide batch_size {self.batch_size} "
                f"(e.g. {max(d for d in range(1, self.micro_batch + 1) if self.batch_size % d == 0)})"
            )
        if self.device == "cpu" and (reasons := self.cuda_only()):
            raise ValueError(reasons[0])
        return self

    def cuda_only(self) -> list[str]:
        """Why these settings cannot run on a CPU (empty when they can)."""
        reasons = []
        if self.cuda_graph:
            reasons.append("cuda_graph needs a CUDA device; set device to cuda or auto, or cuda_graph: false")
        if self.decode != "cpu":
            reasons.append(f"decode {self.decode!r} (GPU JPEG decode) needs a CUDA device; use decode: cpu")
        if self.precision == "fp16":
            reasons.append("precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
        if self.provider in ("cuda", "tensorrt"):
            reasons.append(f"provider {self.provider} needs a CUDA device; on CPU use provider: cpu")
        return reasons

    @property
    def rect(self) -> bool:
        return self.imgsz[0] != self.imgsz[1]

    def key(self) -> str:
        """Stable hash of everything that changes the output or the built artifact (not `device`, `cache_dir`)."""
        fields = self.model_dump(mode="json", exclude={"device", "cache_dir"})
        fields["model"] = model_identity(self.model)
        blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_identity(model: str) -> str:
    """A weights file is identified by its content, a model YAML name by its name."""
    p = Path(model)
    if p.is_file():
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return f"sha256:{h.hexdigest()}"
    return model


class ServeConfig(_Model):
    """The `args` of the yoloray application in a Ray Serve config (`yoloray.serve.app:build_app`).

    `engine` is the EngineConfig every replica builds, warms and serves; the rest shapes the HTTP service.
    Replica counts, `max_ongoing_requests`, autoscaling and GPUs are Ray's own deployment options and live
    in the config file's `deployments:` entry, not here.
    """

    engine: EngineConfig = Field(default_factory=EngineConfig)
    max_batch_size: int = Field(
        None, ge=1, le=1024, description="images per engine call of a replica (default: engine.batch_size)"
    )  # type: ignore[assignment]  # filled from engine.batch_size when left out
    batch_wait_timeout_s: float = Field(
        0.01, ge=0.0, le=10.0, description="while the engine is idle, longest wait for a batch to fill once its first image arrived"
    )
    max_image_bytes: int = Field(20 * 2**20, ge=1, le=2**30, description="larger images are refused (413)")
    max_request_bytes: int = Field(
        100 * 2**20, ge=1, le=2**32, description="larger request bodies are refused (413) before being read"
    )
    max_images_per_request: int = Field(64, ge=1, le=4096, description="images in one multipart request")
    max_queued_images: int = Field(
        1024, ge=1, description="images admitted to one replica and not yet answered; more are refused (503)"
    )
    ingress: Literal["proxy", "haproxy"] = Field(
        "proxy",
        description="what Ray Serve puts in front of the replicas: its Python HTTP proxy, or HAProxy with "
        "direct ingress (yoloray.serve.ingress); applied by `yoloray serve` to the Ray it starts",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description="a request body not complete this long after its headers is refused (408), at the "
        "ingress guard and again in the replica",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_batch(cls, data):
        if isinstance(data, dict) and data.get("max_batch_size") is None:
            engine = data.get("engine")
            if isinstance(engine, EngineConfig):
                size = engine.batch_size
            elif isinstance(engine, dict) and isinstance(engine.get("batch_size"), int):
                size = engine["batch_size"]
            else:
                size = EngineConfig.model_fields["batch_size"].default
            data = {**data, "max_batch_size": size}
        return data

    @model_validator(mode="after")
    def _batch_fits_engine(self):
        if self.max_batch_size > self.engine.batch_size:
            raise ValueError(
                f"max_batch_size {self.max_batch_size} is larger than engine.batch_size {self.engine.batch_size}: "
                "every serve batch would be split into several engine calls; set max_batch_size <= "
                "engine.batch_size (usually equal)"
            )
        if self.max_images_per_request > self.max_queued_images:
            raise ValueError(
                f"max_images_per_request {self.max_images_per_request} is larger than max_queued_images "
                f"{self.max_queued_images}: such a request could never be admitted"
            )
        if self.max_image_bytes > self.max_request_bytes:
            raise ValueError(
                f"max_image_bytes {self.max_image_bytes} is larger than max_request_bytes {self.max_request_bytes}"
            )
        return self


class TuneConfig(_Model):
    """Settings of one `yoloray tune` sweep, saved as RUN/sweep.yaml so `--resume` continues the same sweep."""

    name: str
    out: str  # absolute run directory (Tune's storage is out/tune)
    model: str
    space: dict[str, Any] = Field(default_factory=dict)  # validated space file mapping; {} = the default space
    gpus: int = Field(0, ge=0)  # 0: a CPU-only sweep; else one GPU per trial, this many trials at once
    cpus_per_trial: int = Field(1, ge=1)
    budget_trials: int | None = Field(None, ge=1)
    budget_minutes: float | None = Field(None, gt=0)
    max_p99_ms: float | None = Field(None, gt=0)
    max_gpu_mem_gib: float | None = Field(None, gt=0)
    min_fidelity: float | None = Field(None, ge=0.0, le=1.0)
    window_s: float = Field(2.0, gt=0)  # one measurement window
    max_windows: int = Field(10, ge=1)
    max_trial_s: float = Field(120.0, gt=0)  # measurement cap per trial (build and warmup not counted)
    stability: float = Field(0.10, gt=0.0, lt=1.0)  # 3 consecutive windows within this fraction = stable
    images: str | None = None  # folder of images to measure on; None = generated frames
    frame_size: tuple[int, int] = (1920, 1080)  # width, height of the generated frames
    n_images: int = Field(32, ge=1)
    fidelity_images: int = Field(8, ge=1)
    seed: int = 0
    serve_config: str | None = None  # where the winner's Serve config goes (default serve_configs/<name>.yaml)
