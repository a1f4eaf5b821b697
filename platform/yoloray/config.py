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

from yoloray.engines.capabilities import CAPABILITIES, capability

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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_yaml(cls, path: str | Path):
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
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
    channels_last: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None
    decode: Literal["cpu", "gpu"] = "cpu"
    reduced_decode: bool = Field(
        False, description="JPEG DCT-domain downscale (1/2, 1/4, 1/8) when the input is at most half the source"
    )
    conf: float = Field(0.25, ge=0.0, le=1.0)
    iou: float = Field(0.7, ge=0.0, le=1.0)
    max_det: int = Field(300, ge=1, le=10_000)
    agnostic_nms: bool = False
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")

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
        cap = capability(self.backend)
        if self.precision not in cap.precisions:
            raise ValueError(
                f"precision {self.precision!r} is not supported by backend {self.backend!r}; "
                f"allowed: {', '.join(cap.precisions)}"
            )
        if self.workspace_gib is not None and not cap.workspace:
            raise ValueError(
                f"workspace_gib is not honoured by backend {self.backend!r}; leave it unset "
                f"(backends with a workspace: {', '.join(b for b, c in CAPABILITIES.items() if c.workspace) or 'none'})"
            )
        if self.cuda_graph and not cap.cuda_graph:
            raise ValueError(f"cuda_graph is not supported by backend {self.backend!r}")
        if self.channels_last and not cap.channels_last:
            raise ValueError(f"channels_last is not supported by backend {self.backend!r}")
        if self.compile_mode is not None and not cap.compile:
            raise ValueError(
                f"compile_mode is only honoured by backend 'torch-compile', not {self.backend!r}"
            )
        if self.device == "cpu":
            if self.cuda_graph:
                raise ValueError("cuda_graph needs a CUDA device; set device to cuda or auto, or cuda_graph: false")
            if self.decode == "gpu":
                raise ValueError("decode 'gpu' (nvJPEG) needs a CUDA device; use decode: cpu")
            if self.precision == "fp16":
                raise ValueError("precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
        return self

    @property
    def rect(self) -> bool:
        return self.imgsz[0] != self.imgsz[1]

    def key(self) -> str:
        """Stable hash of everything that changes the output or the built artifact (not `device`)."""
        fields = self.model_dump(mode="json", exclude={"device"})
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
