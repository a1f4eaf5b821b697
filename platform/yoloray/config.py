"""Configuration models: pydantic v2, extra="forbid", YAML in/out, stable hashes.

One model per concern: `EngineConfig` (what changes the built engine), `DecodeConfig` (how inputs become
pixels), `PostConfig` (NMS thresholds and limits), `Layout` (actors, concurrent calls, threads, batches per
call, CPU decode share). A `Profile` holds one of each plus the device; it is what Tune measures, what the
batch job and Serve run. `Profile.build_key()` hashes what changes a built artifact, `output_key()` what
changes the detections (a resumed job is refused only when that changes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from yoloray.engines.capabilities import CAPABILITIES, KNOB_DEFAULTS, PROVIDERS, capability, unhonoured

AUTO = "auto"  # a value resolved by yoloray.profile.resolve for the hardware and inputs found
Auto = Literal["auto"]
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


# what to pass instead, said when a profile file given is not there or holds no mapping
PROFILE_HINT = "; pass the profile.yaml a tuning sweep wrote (runs/NAME/profile.yaml) or a job's OUT/_profile.yaml"


def read_mapping(path: str | Path, what: str, hint: str = "") -> dict[str, Any]:
    """The mapping a YAML file holds. Anything else (no such file, a folder, unreadable, not YAML, not a mapping)
    is a one-line ConfigError naming `what` and the path; `hint` (what to pass instead) follows it unless the
    file is there but not valid YAML, where the line and column say what to fix."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist{hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder, not a file{hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read ({getattr(e, 'strerror', None) or e}){hint}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:  # PyYAML's message spans lines (and quotes the source): one line of it
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML ({at}{' '.join(problem.split())})") from None
    if not isinstance(data, dict):
        held = "nothing" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{what} {path} holds {held}, not a mapping{hint}")
    return data


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_yaml(cls, path: str | Path, what: str = "config file", hint: str = ""):
        """The model a YAML file holds; every problem is one ConfigError line naming `what` and the path."""
        return cls.parse(read_mapping(path, what, hint), source=f"{what} {path}")

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
    """One `field: reason` per problem. A field that may also be `auto` reports the reason of its other type
    (pydantic reports each member of the union; the `auto` member's "should be 'auto'" is dropped)."""
    parts = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        if loc and loc[-1] == "literal['auto']":
            continue
        loc = [x for x in loc if not _union_member(x)]
        msg = err["msg"].removeprefix("Value error, ")
        part = f"{'.'.join(loc)}: {msg}" if loc else msg
        if part not in parts:
            parts.append(part)
    return "; ".join(parts)


def _union_member(loc: str) -> bool:
    """pydantic's name of a union member in an error location ('int', 'bool', 'tuple[int, int]', ...)."""
    return "[" in loc or loc in ("int", "bool", "float", "str", "none", "constrained-int", "constrained-float")


class EngineConfig(_Model):
    """What changes the built engine: weights, backend, numerics, input shape, batch and how it is launched."""

    model: str = Field(default_factory=default_model, description="ultralytics weights (.pt) or model YAML")
    backend: Literal[(AUTO, *CAPABILITIES)] = Field(  # type: ignore[valid-type]
        AUTO, description="torch | torch-compile | onnxruntime; auto: onnxruntime at fp32 (CPU provider) on a "
        "CPU device, the fastest exact CPU engine measured, and torch on CUDA")
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Auto = "auto"
    imgsz: tuple[int, int] | Auto = Field(
        "auto", description="model input HxW; auto: the frames' stride-aligned rectangle (ultralytics' rect letterbox)"
    )
    workspace_gib: float | None = Field(None, gt=0)
    cuda_graph: bool | Auto = "auto"
    micro_batch: Annotated[int, Field(ge=1, le=1024)] | None | Auto = Field(
        "auto", description="images per model forward (CUDA-graph replay or compiled call), dividing "
        "batch_size; a batch runs as batch_size/micro_batch forwards. Smaller forwards let the GPU JPEG decoder's "
        "kernels run between them instead of waiting for a whole batch (default: batch_size)"
    )
    channels_last: bool | Auto = "auto"
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None
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
        if v == AUTO:
            return v
        h, w = parse_imgsz(v)
        for name, n in (("height", h), ("width", w)):
            if n < MAX_STRIDE or n % MAX_STRIDE:
                raise ValueError(
                    f"{name} {n} must be a positive multiple of the model stride {MAX_STRIDE} "
                    f"(e.g. {max(MAX_STRIDE, round(n / MAX_STRIDE) * MAX_STRIDE)})"
                )
        return (h, w)

    @field_serializer("imgsz", when_used="json")
    def _imgsz_text(self, v):
        return v if v == AUTO else f"{v[0]}x{v[1]}"

    @model_validator(mode="after")
    def _backend_honours_knobs(self):
        if reasons := self._unhonoured():
            raise ValueError(reasons[0])
        if isinstance(self.micro_batch, int) and isinstance(self.batch_size, int) and self.batch_size % self.micro_batch:
            raise ValueError(
                f"micro_batch {self.micro_batch} must divide batch_size {self.batch_size} "
                f"(e.g. {max(d for d in range(1, self.micro_batch + 1) if self.batch_size % d == 0)})"
            )
        return self

    def _unhonoured(self) -> list[str]:
        fields = self.concrete()
        if self.backend != AUTO or self.provider is not None:
            return unhonoured(fields, self._backend(), self.provider)
        # auto without a provider becomes torch, or onnxruntime's CPU provider on a CPU (profile.auto_backend)
        reasons = unhonoured(fields, "torch")
        return reasons if reasons and unhonoured(fields, "onnxruntime", "cpu") else []

    def _backend(self) -> str:
        """The backend, or for `auto` the one it reads as before resolve (onnxruntime when a provider is given)."""
        return self.backend if self.backend != AUTO else "onnxruntime" if self.provider else "torch"

    def concrete(self) -> dict[str, Any]:
        """The fields with `auto` read as a value every backend takes (the knob off, the first precision the
        backend offers), for the capability check; resolve() later picks only what the backend honours."""
        fields = self.model_dump()
        for knob, value in fields.items():
            if value == AUTO:
                fields[knob] = KNOB_DEFAULTS.get(knob)
        if fields["precision"] is None:
            fields["precision"] = capability(self._backend(), self.provider).precisions[0]
        return fields


class DecodeConfig(_Model):
    """How inputs become pixels."""

    decode: Literal["auto", "cpu", "gpu", "hybrid"] = Field(
        "auto", description="cpu: OpenCV threads; gpu: the GPU decoder; hybrid: the CPU takes hybrid_cpu_share of the images "
        "(in a batch job, Ray tasks before the actors; elsewhere the Detector's threads) and the GPU decoder the rest"
    )
    gpu_decoder: Literal["torchvision", "nvimgcodec"] = Field(
        "torchvision", description="JPEG decoder for decode gpu/hybrid: torchvision (nvJPEG) or nvimgcodec (nvImageCodec, "
        "pip install 'yoloray[nvimgcodec]'); both use the GPU's hardware JPEG engines where it has them"
    )
    reduced_decode: bool = Field(
        False, description="JPEG DCT-domain downscale (1/2, 1/4, 1/8) when the input is at most half the source"
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="larger images become error rows, never decoded")


class PostConfig(_Model):
    """What changes the detections but not the engine's arithmetic: thresholds and limits of NMS."""

    conf: float = Field(0.25, ge=0.0, le=1.0)
    iou: float = Field(0.7, ge=0.0, le=1.0)
    max_det: int = Field(300, ge=1, le=10_000)
    agnostic_nms: bool = False


class Layout(_Model):
    """Where and how concurrently the work runs; never changes a detection."""

    actors_per_gpu: Annotated[int, Field(ge=1, le=64)] | Auto = Field("auto", description="detector actors sharing one GPU")
    actors: int | None = Field(
        None, ge=1, description="detector actors in all (default: actors_per_gpu x the cluster's GPUs, 1 without GPUs)"
    )
    calls_per_actor: Annotated[int, Field(ge=1, le=64)] | Auto = Field(
        "auto", description="concurrent batches inside one actor")
    decode_threads: int | None = Field(None, ge=1, le=256, description="CPU decode threads per actor (default: cores)")
    batches_per_call: Annotated[int, Field(ge=1, le=64)] | Auto = Field(
        "auto", description="engine batches of rows one actor call takes")
    hybrid_cpu_share: Annotated[float, Field(ge=0.0, le=1.0)] | Auto = Field(
        "auto", description="with decode: hybrid, the share of the images the CPU decodes"
    )


SECTIONS: dict[str, type[_Model]] = {"engine": EngineConfig, "decoding": DecodeConfig, "post": PostConfig,
                                     "layout": Layout}
SECTION_OF: dict[str, str] = {f: s for s, m in SECTIONS.items() for f in m.model_fields}
# Fields that only change how the same computation is scheduled, laid out in memory or tuned (results agree
# within float rounding, as the fidelity tests check), or where artifacts are kept: not in the output key.
SCHEDULING = frozenset({"batch_size", "micro_batch", "cuda_graph", "channels_last", "workspace_gib", "conv_algo_search",
                        "cudnn_max_workspace", "trt_opt_level", "trt_min_batch", "cache_dir"})


class Profile(_Model):
    """Everything a run needs, one model per concern, plus the device it runs on.

    A flat mapping (the EngineConfig files of earlier versions: `precision: fp16`, `conf: 0.3`, ...) is
    accepted and sorted into its sections, and every section field reads flat too (`profile.batch_size` is
    `profile.engine.batch_size`). `replace(**fields)` makes a changed copy from flat or section fields.
    """

    engine: EngineConfig = Field(default_factory=EngineConfig)
    decoding: DecodeConfig = Field(default_factory=DecodeConfig)
    post: PostConfig = Field(default_factory=PostConfig)
    layout: Layout = Field(default_factory=Layout)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data):
        return sort_into_sections(data) if isinstance(data, dict) else data

    @field_validator("device")
    @classmethod
    def _device(cls, v: str):
        v = v.strip().lower()
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N")

    @model_validator(mode="after")
    def _runs_on_device(self):
        if self.device == "cpu" and (reasons := self.cuda_only()):
            raise ValueError(reasons[0])
        return self

    def cuda_only(self) -> list[str]:
        """Why these settings cannot run on a CPU (empty when they can)."""
        reasons = []
        if self.engine.cuda_graph is True:
            reasons.append("cuda_graph needs a CUDA device; set device to cuda or auto, or cuda_graph: false")
        if self.decoding.decode in ("gpu", "hybrid"):
            reasons.append(f"decode {self.decoding.decode!r} (GPU JPEG decode) needs a CUDA device; use decode: cpu")
        if self.engine.precision == "fp16":
            reasons.append("precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
        if self.engine.provider in ("cuda", "tensorrt"):
            reasons.append(f"provider {self.engine.provider} needs a CUDA device; on CPU use provider: cpu")
        return reasons

    def auto_fields(self) -> list[str]:
        """Flat names of the fields still `auto` (device included)."""
        return [k for k, v in self.flat().items() if v == AUTO]

    def is_resolved(self) -> bool:
        return not self.auto_fields()

    @property
    def rect(self) -> bool:
        return self.imgsz != AUTO and self.imgsz[0] != self.imgsz[1]

    def replace(self, **fields) -> Profile:
        """A copy with some fields changed (flat names or whole sections), validated again."""
        return Profile.model_validate({**self.model_dump(), **fields})

    def flat(self) -> dict[str, Any]:
        """Every field by its flat name (sections merged), plus device."""
        return {**{k: v for s in SECTIONS for k, v in getattr(self, s).model_dump().items()}, "device": self.device}

    def build_spec(self) -> BuildSpec:
        """What an engine is built from (engines/): the engine section plus max_det and agnostic_nms, which an
        end-to-end head bakes in; flat, as the backends read it. Needs a resolved engine section."""
        if unresolved := [k for k, v in self.engine.model_dump().items() if v == AUTO]:
            raise ConfigError(f"resolve the profile before building an engine (auto: {', '.join(unresolved)}); "
                              "see yoloray.profile.resolve")
        return BuildSpec(**self.engine.model_dump(), max_det=self.post.max_det, agnostic_nms=self.post.agnostic_nms)

    def build_key(self) -> str:
        """Stable hash of what changes a built artifact (an exported or compiled engine): the build spec with
        the weights' content (not where artifacts are cached)."""
        return _digest({**self.engine.model_dump(mode="json", exclude={"cache_dir"}), "max_det": self.post.max_det,
                        "agnostic_nms": self.post.agnostic_nms, "model": model_identity(self.engine.model)})

    def output_key(self) -> str:
        """Stable hash of what changes the detections: weights, backend, precision, input shape, decoding and
        post-processing. Batch size, micro-batches, CUDA graphs, memory layout, the layout and the device only
        schedule the same computation, so a resumed job may change them."""
        engine = {k: v for k, v in self.engine.model_dump(mode="json").items() if k not in SCHEDULING}
        return _digest({**engine, "model": model_identity(self.engine.model),
                        "decoding": self.decoding.model_dump(mode="json"), "post": self.post.model_dump(mode="json")})


class BuildSpec(EngineConfig):
    """The engine section plus the post-processing fields an engine bakes in (`Profile.build_spec`)."""

    max_det: int = Field(300, ge=1, le=10_000)
    agnostic_nms: bool = False


def sort_into_sections(data: dict) -> dict:
    """Flat field names of a mapping move into their sections (a flat value overrides the same field given in
    its section, so `{**profile.model_dump(), "conf": 0.5}` works); anything else is left for validation."""
    out = {k: v for k, v in data.items() if k not in SECTION_OF}
    for name, value in data.items():
        if name not in SECTION_OF:
            continue
        section = out.get(SECTION_OF[name])
        if isinstance(section, BaseModel):
            section = section.model_dump()
        out[SECTION_OF[name]] = {**(section or {}), name: value}
    return out


def _flat_property(section: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, section), name), doc=f"`{section}.{name}`")


for _name, _section in SECTION_OF.items():
    setattr(Profile, _name, _flat_property(_section, _name))


def _digest(fields: dict) -> str:
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
