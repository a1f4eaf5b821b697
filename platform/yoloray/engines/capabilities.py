"""Which engine knobs each backend (and each ONNX Runtime provider) honours, like ultralytics' export table.

Config validation and the Tune search space are both built from this one table, so a knob never varies
where it has no effect and a combination a backend cannot honour is rejected before anything is built.
The `onnxruntime` row is the union of its providers' rows; with a provider named, that provider's row applies.
`verified` says where a row has been run: the TensorRT provider is built against ONNX Runtime's documented
provider options and has not been run on any machine of this project (none has TensorRT).
"""

from __future__ import annotations

from dataclasses import dataclass

# optional knobs and the value each has where it is not honoured (EngineConfig fields)
KNOB_DEFAULTS = {"workspace_gib": None, "cuda_graph": False, "channels_last": False, "compile_mode": None,
                 "provider": None, "conv_algo_search": None, "cudnn_max_workspace": None,
                 "trt_opt_level": None, "trt_min_batch": None}


@dataclass(frozen=True)
class Capability:
    precisions: tuple[str, ...]
    knobs: frozenset[str]  # the optional knobs (KNOB_DEFAULTS) honoured
    devices: tuple[str, ...]
    description: str
    verified: str

    def honours(self, knob: str) -> bool:
        return knob in self.knobs

    @property
    def workspace(self) -> bool:
        return "workspace_gib" in self.knobs

    @property
    def cuda_graph(self) -> bool:
        return "cuda_graph" in self.knobs

    @property
    def channels_last(self) -> bool:
        return "channels_last" in self.knobs

    @property
    def compile(self) -> bool:
        return "compile_mode" in self.knobs


PROVIDERS: dict[str, Capability] = {
    "cpu": Capability(
        precisions=("fp32", "int8"), knobs=frozenset({"provider"}), devices=("cpu",),
        description="ONNX Runtime CPU provider; int8 = static QDQ calibrated on your frames",
        verified="CI (CPU): fidelity against ultralytics predict, fp32 and int8",
    ),
    "cuda": Capability(
        precisions=("fp32", "fp16"), devices=("cuda",),
        knobs=frozenset({"provider", "cuda_graph", "channels_last", "conv_algo_search", "cudnn_max_workspace"}),
        description="ONNX Runtime CUDA provider, IO binding on the GPU, ORT CUDA graphs (static shape), "
                    "channels_last = its NHWC convolutions (prefer_nhwc)",
        verified="tests/gpu/test_onnxruntime_gpu.py, on a GPU machine with onnxruntime-gpu (not in CI)",
    ),
    "tensorrt": Capability(
        precisions=("fp32", "fp16", "int8"), devices=("cuda",),
        knobs=frozenset({"provider", "cuda_graph", "workspace_gib", "trt_opt_level", "trt_min_batch"}),
        description="ONNX Runtime TensorRT provider: engine + timing cache in the artifact cache, min/opt/max batch profile",
        verified="NOT RUN: built against ONNX Runtime's documented TensorRT provider options; no machine here has TensorRT",
    ),
}

CAPABILITIES: dict[str, Capability] = {
    "torch": Capability(
        precisions=("fp32", "fp16", "bf16"), knobs=frozenset({"cuda_graph", "channels_last"}),
        devices=("cpu", "cuda"), description="eager PyTorch on the fused ultralytics model",
        verified="CI (CPU) and tests/gpu",
    ),
    "torch-compile": Capability(
        precisions=("fp32", "fp16", "bf16"),
        knobs=frozenset({"channels_last", "compile_mode"}),  # mode='reduce-overhead' captures CUDA graphs itself
        devices=("cpu", "cuda"), description="torch.compile of the fused model, compiled ahead of time once into the artifact cache",
        verified="tests/gpu",
    ),
    "onnxruntime": Capability(
        precisions=tuple(dict.fromkeys(p for c in PROVIDERS.values() for p in c.precisions)),
        knobs=frozenset().union(*(c.knobs for c in PROVIDERS.values())),
        devices=("cpu", "cuda"), description="ONNX Runtime on an ONNX export; provider: " + " | ".join(PROVIDERS),
        verified="per provider",
    ),
}


def capability(backend: str, provider: str | None = None) -> Capability:
    try:
        cap = CAPABILITIES[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(CAPABILITIES)}") from None
    if provider is None:
        return cap
    if not cap.honours("provider"):
        raise ValueError(f"provider is only honoured by backend 'onnxruntime', not {backend!r}")
    try:
        return PROVIDERS[provider]
    except KeyError:
        raise ValueError(f"unknown provider {provider!r}; available: {', '.join(PROVIDERS)}") from None


def rows() -> list[tuple[str, str | None, Capability]]:
    """(backend, provider, capability) for every runnable row of the table."""
    out: list[tuple[str, str | None, Capability]] = []
    for name, cap in CAPABILITIES.items():
        if cap.honours("provider"):
            out += [(name, p, c) for p, c in PROVIDERS.items()]
        else:
            out.append((name, None, cap))
    return out


def unhonoured(fields: dict, backend: str, provider: str | None = None) -> list[str]:
    """Why these EngineConfig fields cannot be used with this backend/provider (empty when they can)."""
    cap = capability(backend, provider)
    where = f"backend {backend!r}" + (f" with provider {provider!r}" if provider else "")
    reasons = []
    if fields.get("precision") not in cap.precisions:
        reasons.append(f"precision {fields.get('precision')!r} is not supported by {where}; "
                       f"allowed: {', '.join(cap.precisions)}")
    for knob, inactive in KNOB_DEFAULTS.items():
        if fields.get(knob, inactive) != inactive and not cap.honours(knob):
            by = [f"{b}" + (f"/{p}" if p else "") for b, p, c in rows() if c.honours(knob)]
            reasons.append(f"{knob} is not honoured by {where}; leave it unset (honoured by: {', '.join(by) or 'none'})")
    return reasons


def capability_table(here: dict[str, str] | None = None) -> str:
    """The table as text, for `yoloray backends` and docs; `here`: provider -> whether it can run on this machine."""
    knobs = [k for k in KNOB_DEFAULTS if k != "provider"]
    lines = [f"{'backend':<30} {'precisions':<15} {'devices':<9} knobs honoured"]
    for backend, provider, c in rows():
        name = backend + (f" provider={provider}" if provider else "")
        honoured = ", ".join(k for k in knobs if c.honours(k)) or "-"
        lines.append(f"{name:<30} {','.join(c.precisions):<15} {','.join(c.devices):<9} {honoured}")
        lines.append(f"{'':<30} {c.description}")
        lines.append(f"{'':<30} verified: {c.verified}")
        if here is not None and provider in here:
            lines.append(f"{'':<30} on this machine: {here[provider]}")
    return "\n".join(lines)
