"""The search space of `yoloray tune`'s engine level, built from the capability table (no Ray here).

A space file is a YAML mapping `knob: [values]` (or `knob: value` to fix it); any other Profile field
except `model` and `device` may be fixed to one value (`conf: 0.3`). Values are checked against the
capability table and the Profile; an error names the knob and the allowed values. Layout fields
(`calls_per_actor: [1, 2]`, ...: LAYOUT_KNOBS) are searched by the layout level (tune/layout.py).

A space file is searched as written: only the knobs it lists vary; every other knob is fixed at the resolved
default profile's value (what `yoloray infer` runs with no flags). Knobs are conditional: a knob never varies
where it has no effect. `compile_mode` varies only for torch-compile, `provider` only for onnxruntime (each
provider is an engine row of its own, with its own precisions), `cuda_graph` / `channels_last` /
`workspace_gib` only where the backend or provider honours them, `reduced_decode` only when the CPU decodes.
With no space file, the default space (`default_values`) is the capability table's values narrowed to those
worth measuring, small enough to be a grid within the default budget on CUDA: the torch backend, fp16/bf16,
batch 32-256, the frames' stride-aligned input shape, CUDA graphs on/off, channels_last, nvJPEG (16 points;
where JPEGs are decoded is the layout level's); on a CPU-only run torch (fp32/bf16, channels_last on/off) and
onnxruntime's CPU provider (fp32/int8), the same input shape, batch 1-16, DCT-reduced CPU decode (30 points).
Each restriction's reason is a comment there. CUDA-only values a user lists on a CPU-only run are kept and
fail at trial start with the reason (see `Space.warnings`). A point is a dict of knob values that
`Profile.parse({**point, **fixed, "model": ..., "device": ...})` accepts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from yoloray.config import SECTION_OF, SECTIONS, ConfigError, Profile, parse_imgsz, read_mapping
from yoloray.engines.capabilities import CAPABILITIES, KNOB_DEFAULTS, capability, rows

KNOBS = ("backend", "provider", "precision", "batch_size", "imgsz", "cuda_graph", "channels_last", "compile_mode",
         "decode", "reduced_decode", "workspace_gib")
# searched by the layout level (real batch jobs), as written in a space file; never varied in-process
LAYOUT_KNOBS = ("actors_per_gpu", "calls_per_actor", "batches_per_call", "decode_threads", "hybrid_cpu_share")
NOT_SETTABLE = {"model": "the model is set with --model", "device": "the device follows --gpus (cuda or cpu)"}
GPU_BATCHES = (32, 64, 128, 256)
CPU_BATCHES = (1, 2, 4, 8, 16)
# knobs that take effect only where the capability table says so, and the value each has where it does not
_HONOURED = {k: KNOB_DEFAULTS[k] for k in KNOBS if k in KNOB_DEFAULTS}


def split_row(row: str) -> tuple[str, str | None]:
    """An engine row of the space: a backend, or `onnxruntime/<provider>`."""
    backend, _, provider = row.partition("/")
    return backend, provider or None


def format_imgsz(value: Any) -> str:
    h, w = parse_imgsz(value)
    return str(h) if h == w else f"{h}x{w}"


def rect_imgsz(frame_size: tuple[int, int]) -> str:
    """The stride-aligned letterbox input for frames of `frame_size` (width, height): 1920x1080 -> 384x640."""
    from yoloray.profile import rect_imgsz as rect

    return format_imgsz(rect(frame_size))


def literal_values(knob: str) -> tuple:
    """The values a Literal field of the Profile allows (None and `auto` excluded: a space lists real values)."""

    def flat(ann):
        args = get_args(ann)
        if not args:
            return ()
        if get_origin(ann) is Literal:
            return args
        return tuple(v for a in args for v in flat(a))

    return tuple(v for v in flat(SECTIONS[SECTION_OF[knob]].model_fields[knob].annotation) if v != "auto")


def default_values(cuda: bool, frame_size: tuple[int, int] = (1920, 1080), decode: str | None = None) -> dict[str, tuple]:
    """The default space: the capability table's values that are worth measuring on this kind of device.
    `decode`: fixed (video frames: the decode a batch job uses for the videos, tune/archive.py)."""
    precisions = tuple(p for p in literal_values("precision") if any(p in c.precisions for c in CAPABILITIES.values()))
    return {
        # torch.compile costs 45-60 s per trial and cannot raise a trial's figure: a trial times the whole
        # Detector, which nvJPEG decode bounds (H200, YOLOv8s fp16 384x640: Detector 2,750 images/s, eager
        # model alone 6,200); a space file may list torch-compile. CPU: long builds, little gain.
        # onnxruntime: on the CPU its provider ships with yoloray (fp32 and int8 against torch); on CUDA a space
        # file lists it (onnxruntime-gpu is an optional install, and benchmarks/engines.py measures it first)
        "backend": ("torch",) if cuda else ("torch", "onnxruntime"),
        "provider": ("cuda",) if cuda else ("cpu",),
        # CUDA: fp32 is ~1.7x slower on tensor cores (bare YOLOv8s at 640 on the H200: 2,257 vs 3,939 images/s
        # fp16); it stays the fidelity reference and a space file may list it. CPU: fp16 needs CUDA.
        "precision": tuple(p for p in precisions if p != ("fp32" if cuda else "fp16")),
        # CUDA: small batches leave the GPU idle (YOLOv8n sweep on the H200, fp16 + CUDA graph + nvJPEG:
        # 1,978 images/s at batch 16 vs 2,980 at 128); 256 is the largest, to keep the grid small
        # (a space file may list 512)
        "batch_size": GPU_BATCHES if cuda else CPU_BATCHES,
        # the frames' stride-aligned letterbox shape: for 16:9 frames 384x640 has the same scale as square 640
        # and 40% fewer pixels, so square 640 only pads; it is square 640 itself when the frames are square
        "imgsz": (rect_imgsz(frame_size),),
        "cuda_graph": (False, True) if cuda else (False,),  # CUDA only; kept False where not honoured
        # CUDA: NHWC is the tensor cores' native convolution layout (cuDNN converts NCHW otherwise): always on
        "channels_last": (True,) if cuda else (False, True),
        # max-autotune modes compile for minutes per trial; a space file may list them
        "compile_mode": ("default",),
        # CUDA: CPU-only decode ran at about half of nvJPEG's images/s (YOLOv8n sweep on the H200: 1,582 vs
        # 3,001). Whether a CPU share helps is measured by the layout level (tune/layout.py), where it runs
        # in Ray tasks as in a batch job, not in the trial process's threads
        "decode": (decode,) if decode else ("gpu",) if cuda else ("cpu",),
        # where the CPU decodes: the DCT-domain 1/2-1/8 decode (taken only when the input is at most half the
        # frame) skips pixels the letterbox scales away; fidelity is checked per trial. nvJPEG: full size
        "reduced_decode": (True,),
        "workspace_gib": (None,),  # TensorRT's builder workspace: a space file lists sizes (not run here)
    }


_LITERALS = ("backend", "provider", "precision", "decode", "compile_mode")


def _validate(knob: str, value: Any, backend: str):
    fields = {"model": "check", "device": "auto", "backend": backend, knob: value}
    if knob == "micro_batch" and isinstance(value, int):  # checked against the batch sizes in Space.build
        fields["batch_size"] = value
    return Profile.model_validate(fields)


def _accepted(knob: str, value: Any) -> bool:
    return any(_ok(knob, value, b) for b in CAPABILITIES)


def _ok(knob: str, value: Any, backend: str) -> bool:
    try:
        _validate(knob, value, backend)
        return True
    except ValidationError:
        return False


def _check_value(knob: str, value: Any, source: str) -> Any:
    """The normalized value if some backend accepts it, else ConfigError naming the knob and what is allowed."""
    if isinstance(value, (list, dict)) and knob != "imgsz":
        raise ConfigError(f"{source}: {knob}: {value!r} is not a single value")
    error = None
    for backend in CAPABILITIES:
        try:
            cfg = _validate(knob, value, backend)
        except ValidationError as e:
            error = error or e
            continue
        return format_imgsz(cfg.imgsz) if knob == "imgsz" else getattr(cfg, knob)
    if knob in _LITERALS:
        allowed = [v for v in literal_values(knob) if _accepted(knob, v)]
        raise ConfigError(f"{source}: {knob}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
    if knob in _HONOURED and not any(c.honours(knob) for c in CAPABILITIES.values()):
        raise ConfigError(f"{source}: {knob} is not honoured by any backend today; leave it out")
    msg = "; ".join(err["msg"].removeprefix("Value error, ") for err in error.errors())
    raise ConfigError(f"{source}: {knob}: {value!r}: {msg}")


def validate_mapping(data: Any, source: str = "space") -> dict[str, Any]:
    """A user's space mapping, checked and normalized: knob -> list of values; fixed field -> value."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping of knob: [values] (knobs: {', '.join(KNOBS)})")
    fixable = [f for f in SECTION_OF if f not in KNOBS and f not in LAYOUT_KNOBS and f not in NOT_SETTABLE]
    out: dict[str, Any] = {}
    for key, raw in data.items():
        if key in NOT_SETTABLE:
            raise ConfigError(f"{source}: {key} cannot be set in a space file: {NOT_SETTABLE[key]}")
        if key not in KNOBS and key not in LAYOUT_KNOBS and key not in fixable:
            raise ConfigError(f"{source}: unknown knob {key!r}; knobs: {', '.join(KNOBS)}; layout knobs: "
                              f"{', '.join(LAYOUT_KNOBS)}; fixed fields: {', '.join(fixable)}")
        values = raw if isinstance(raw, list) else [raw]  # imgsz: [384, 640] is two sizes; "384x640" one
        if not values:
            raise ConfigError(f"{source}: {key}: empty list; give at least one value")
        if key not in KNOBS and key not in LAYOUT_KNOBS and len(values) > 1:
            raise ConfigError(f"{source}: {key} is not searched; give one value, not {len(values)}")
        checked = list(dict.fromkeys(_check_value(key, v, source) for v in values))
        out[key] = checked if key in KNOBS or key in LAYOUT_KNOBS else checked[0]
    return out


def load_space_file(path: str | Path) -> dict[str, Any]:
    return validate_mapping(read_mapping(path, "space file"), source=str(path))


@dataclass(frozen=True)
class Space:
    values: dict[str, tuple]  # knob -> candidate values
    fixed: dict[str, Any] = field(default_factory=dict)  # other Profile fields, the same for every trial
    cuda: bool = False
    given: tuple[str, ...] = ()  # knobs the user's space file set

    @classmethod
    def build(cls, mapping: dict[str, Any] | None, cuda: bool, frame_size=(1920, 1080), base: dict | None = None,
              decode: str | None = None) -> Space:
        """The default space when `mapping` lists no engine knob; else the space as written: the listed knobs
        vary, every other knob is fixed at `base` (the flat fields of the resolved default profile; by
        default `profile.defaults` for this kind of device and frames)."""
        mapping = validate_mapping(mapping or {})
        listed = {k: tuple(v) for k, v in mapping.items() if k in KNOBS}
        if listed:
            if base is None:
                from yoloray.profile import Hardware, Sample, defaults

                hw = Hardware(gpus=1, cpus=16) if cuda else Hardware(cpus=1)
                base = {"backend": "torch", "provider": None, "compile_mode": None, "reduced_decode": False,
                        "workspace_gib": None, **defaults(hw, Sample((tuple(frame_size),), ("jpeg",)))}
            values = {k: (format_imgsz(base[k]) if k == "imgsz" else base[k],) for k in KNOBS}
        else:
            values = default_values(cuda, frame_size, decode)
        values.update(listed)
        fixed = {k: v for k, v in mapping.items() if k not in KNOBS and k not in LAYOUT_KNOBS}
        micro = fixed.get("micro_batch")
        if micro is not None and (bad := [b for b in values["batch_size"] if b % micro]):
            raise ConfigError(f"space: micro_batch {micro} must divide every batch_size; it does not divide "
                              f"{', '.join(map(str, bad))} (list batch_size values it divides)")
        space = cls(values, fixed, cuda, tuple(k for k in mapping if k in KNOBS))
        if not space.points():
            raise ConfigError("space: no backend honours this combination of values; "
                              "precisions per backend: "
                              + ", ".join(f"{b}{'/' + p if p else ''}: {'/'.join(c.precisions)}"
                                          for b, p, c in rows()))
        return space

    def options(self, row: str) -> dict[str, tuple]:
        """Knob -> the values that take effect for the engine row (one value where the knob has no effect)."""
        backend, provider = split_row(row)
        cap = capability(backend, provider)
        out = {}
        for knob in KNOBS[1:]:
            vals = self.values[knob]
            if knob == "provider":
                vals = (provider,)
            elif knob == "precision":
                vals = tuple(p for p in vals if p in cap.precisions)
            elif knob in _HONOURED:
                vals = vals if cap.honours(knob) else (_HONOURED[knob],)
            out[knob] = vals
        return out

    def backends(self) -> list[str]:
        """The engine rows searched: each backend, with onnxruntime once per provider listed."""
        rows = []
        for b in self.values["backend"]:
            providers = [p for p in self.values["provider"] if p] or [None]
            rows += [f"{b}/{p}" if p else b for p in providers] if capability(b).honours("provider") else [b]
        return [r for r in rows if self.options(r)["precision"]]

    def points(self) -> list[dict[str, Any]]:
        """Every distinct valid point (grid order)."""
        seen, out = set(), []
        for row in self.backends():
            opts = self.options(row)
            for combo in itertools.product(*opts.values()):
                point = {"backend": split_row(row)[0], **dict(zip(opts, combo))}
                if point["decode"] == "gpu":
                    point["reduced_decode"] = False  # nvJPEG decodes at full size
                key = tuple(point.items())
                if key not in seen:
                    seen.add(key)
                    out.append(point)
        return out

    def warnings(self) -> list[str]:
        out = []
        if not self.cuda:
            points = self.points()
            for knob, bad in (("precision", "fp16"), ("cuda_graph", True), ("decode", "gpu"), ("decode", "hybrid"),
                              ("provider", "cuda"), ("provider", "tensorrt")):
                if any(p[knob] == bad for p in points):
                    out.append(f"{knob} {bad} needs CUDA: those trials will fail at start on this CPU-only run")
        for knob, inactive in _HONOURED.items():
            honoured = any(capability(*split_row(r)).honours(knob) for r in self.backends())
            if knob in self.given and set(self.values[knob]) - {inactive} and not honoured:
                out.append(f"{knob} has no effect on backend(s) {', '.join(self.backends())}: it stays {inactive}")
        return out

    def describe(self) -> str:
        points = self.points()
        seen = {k: list(dict.fromkeys(p[k] for p in points)) for k in KNOBS}
        return f"{len(points)} points; " + ", ".join(f"{k}={v}" for k, v in seen.items() if len(v) > 1)


class OptunaSpace:
    """Define-by-run space for OptunaSearch: conditional knobs are suggested only where they take effect.
    A knob whose choices differ between backends gets one Optuna parameter per backend (`knob.backend`)."""

    def __init__(self, space: Space):
        self.space = space
        self.names: dict[tuple[str, str], str] = {}
        backends = space.backends()
        for knob in KNOBS[1:]:
            choices = {b: space.options(b)[knob] for b in backends}
            varying = {b: c for b, c in choices.items() if len(c) > 1}
            uniform = len({tuple(c) for c in varying.values()}) <= 1
            for b in varying:
                self.names[(knob, b)] = knob if uniform else f"{knob}.{b}"

    def __call__(self, trial) -> dict[str, Any]:
        backends = self.space.backends()
        backend = trial.suggest_categorical("backend", backends) if len(backends) > 1 else backends[0]
        point: dict[str, Any] = {"backend": split_row(backend)[0]}  # an Optuna "backend" is an engine row
        for knob, vals in self.space.options(backend).items():
            if knob == "reduced_decode" and point["decode"] == "gpu":
                vals = (False,)
            name = self.names.get((knob, backend))
            point[knob] = trial.suggest_categorical(name, list(vals)) if name and len(vals) > 1 else vals[0]
        return {"engine": point}
