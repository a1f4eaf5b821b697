"""Which engine knobs each backend honours (like ultralytics' export-format table).

Config validation and the Tune search space are both built from this one table, so a knob never varies
where it has no effect and a combination a backend cannot honour is rejected before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capability:
    precisions: tuple[str, ...]
    workspace: bool  # honours workspace_gib
    cuda_graph: bool
    channels_last: bool
    compile: bool  # honours compile_mode
    description: str


CAPABILITIES: dict[str, Capability] = {
    "torch": Capability(
        precisions=("fp32", "fp16", "bf16"),
        workspace=False,
        cuda_graph=True,
        channels_last=True,
        compile=False,
        description="eager PyTorch on the fused ultralytics model",
    ),
    "torch-compile": Capability(
        precisions=("fp32", "fp16", "bf16"),
        workspace=False,
        cuda_graph=False,  # torch.compile's mode='reduce-overhead' captures CUDA graphs itself
        channels_last=True,
        compile=True,
        description="torch.compile of the fused model (compile time is paid in warmup)",
    ),
}


def capability(backend: str) -> Capability:
    try:
        return CAPABILITIES[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(CAPABILITIES)}") from None


def capability_table() -> str:
    """The table as text, for `--help` and docs."""
    rows = ["backend        precisions        workspace  cuda_graph  channels_last  compile"]
    for name, c in CAPABILITIES.items():
        rows.append(
            f"{name:<14} {','.join(c.precisions):<17} {str(c.workspace):<10} {str(c.cuda_graph):<11} "
            f"{str(c.channels_last):<14} {c.compile}"
        )
    return "\n".join(rows)
