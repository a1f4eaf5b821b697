"""GPU memory budget of one Detector (a batch actor, a Serve replica, a tuning trial), measured at warmup.

`begin(device)` before the Detector is built resets torch's peak counters; `measure(device)` after warmup (and,
for the batch actor, its first call, so the real decode buffers count) reads the peaks: the engine's weights
and activations, CUDA graphs' memory pools, and decode buffers that torch allocates (nvJPEG output tensors).
What torch's allocator does not see comes on top: the CUDA context (`CUDA_CONTEXT_BYTES`, measured per
process by `torch.cuda.mem_get_info` only when the process is alone on the GPU) and nvJPEG/nvImageCodec's own
work buffers.

`per_gpu(budget, gpu_bytes)` is how many such Detectors one GPU holds. Whoever measures a budget remembers it in
the artifact cache, and the `auto` layout packs actors (and `num_gpus: auto` Serve replicas) per GPU from the
budget stored for the same profile and GPU model (observe/budgets.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 2**30
CUDA_CONTEXT_BYTES = 600 * 2**20  # a CUDA 12/13 context with cuDNN/cuBLAS loaded, per process (approx.)
HEADROOM = 0.10  # of the GPU kept free for fragmentation and bursts


@dataclass
class MemoryBudget:
    device: str
    peak_reserved: int | None = None  # bytes the caching allocator held at its peak (what packing must fit)
    peak_allocated: int | None = None  # bytes in live tensors at the peak
    gpu_total: int | None = None
    gpu_name: str | None = None  # the CUDA device's name ('NVIDIA H200'): budgets are remembered per GPU model

    @property
    def measured(self) -> bool:
        return self.peak_reserved is not None

    def text(self) -> str:
        if not self.measured:
            return f"GPU memory per Detector: not measured (runs on {self.device})"
        line = (f"GPU memory per Detector: peak {self.peak_reserved / GIB:.2f} GiB reserved "
                f"({self.peak_allocated / GIB:.2f} GiB in tensors) + ~{CUDA_CONTEXT_BYTES / GIB:.1f} GiB CUDA context")
        if self.gpu_total:
            line += f"; {per_gpu(self, self.gpu_total)} fit on this {self.gpu_total / GIB:.0f} GiB GPU"
        return line

    def to_dict(self) -> dict:
        return asdict(self)


def _is_cuda(device) -> bool:
    return getattr(device, "type", str(device).split(":")[0]) == "cuda"


def begin(device) -> None:
    """Reset the peak counters (call before building the Detector on `device`). Only where CUDA is already
    initialised: creating the context here would come before the Detector sets CUDA_DEVICE_MAX_CONNECTIONS,
    and in a fresh process (an actor, a replica) the peaks start at zero anyway."""
    if _is_cuda(device):
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats(device)


def measure(device) -> MemoryBudget:
    """Peaks since `begin` on a CUDA device; an unmeasured budget on the CPU."""
    if not _is_cuda(device):
        return MemoryBudget(str(device))
    import torch

    return MemoryBudget(str(device), torch.cuda.max_memory_reserved(device),
                        torch.cuda.max_memory_allocated(device),
                        torch.cuda.get_device_properties(device).total_memory, torch.cuda.get_device_name(device))


def per_gpu(budget: MemoryBudget, gpu_bytes: int, context_bytes: int = CUDA_CONTEXT_BYTES,
            headroom: float = HEADROOM) -> int:
    """How many Detectors of this budget fit in `gpu_bytes` (each with its own CUDA context), at least 1."""
    if not budget.measured:
        raise ValueError("the budget was not measured (CPU); nothing to pack")
    usable = gpu_bytes * (1 - headroom)
    return max(1, int(usable // (budget.peak_reserved + context_bytes)))


def summarize(budgets: list[MemoryBudget]) -> str:
    """One line for a job's actors: the largest budget (the one packing must fit) and how many reported."""
    measured = [b for b in budgets if b.measured]
    if not measured:
        where = budgets[0].device if budgets else "cpu"
        return f"GPU memory per Detector: not measured (runs on {where})"
    worst = max(measured, key=lambda b: b.peak_reserved)
    return worst.text() + (f" (largest of {len(measured)} actors)" if len(measured) > 1 else "")
