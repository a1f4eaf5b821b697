"""backend `torch-compile`: the model compiled by Inductor once per cluster, loaded by every later actor.

The first engine of a configuration compiles the whole model for its one input shape with Dynamo's
ahead-of-time compile (`torch._dynamo.config.enable_aot_compile`; `OptimizedModule._aot_compile`, experimental in
torch 2.11) and stores two blobs in the shared artifact cache (engines/cache.py) under the same key:
`torch-compile-aot`, the compiled forward (graph code, guards, Inductor's kernels), and `torch-compile`,
`torch.compiler.save_cache_artifacts()` (Inductor's compiled files, which the CPU needs to skip its C++ build).
A later engine loads both onto its own model: no Dynamo tracing, no compiling.

Measured on the H200 (benchmarks/compile_start_probe.py, YOLOv8s fp16 batch 32 at 384x640, a new process with an
empty Inductor cache): the stored function loads in 3.1 s and its first call takes 0.01 s, where torch.compile
with the cache artifacts alone spent 4.4 s loading them and 7.8 s tracing again on the first call.

The compiled function runs without Dynamo's guards (they compare the input's dispatch keys, which differ between
the tracing process and an inference_mode caller); `CompiledForward.__call__` checks what they would have: shape,
dtype, device, memory layout, and calls the function directly. A loading engine therefore does not build the
guard manager at all, nor start Inductor's pool of compile workers (every kernel is compiled already). Where the
ahead-of-time compile cannot run (a graph break, a mode it does not serialize), the engine says so once and uses
plain torch.compile with the cache artifacts, as before.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from yoloray.engines.base import EngineError

log = logging.getLogger(__name__)

AOT_KIND = "torch-compile-aot"
ARTIFACTS_KIND = "torch-compile"


def _first_line(e: Exception) -> str:
    """`Type: first line of the message` (Dynamo's and Inductor's messages run to pages)."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _eager_forward(net: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        net(x)


@contextlib.contextmanager
def _loading():
    """What loading a stored function skips: Inductor's pool of compile workers (every kernel is already
    compiled; the pool's start, a new Python process importing torch, would run beside the load) and Dynamo's
    guard manager, which the engine disables (see the module doc) and which costs a rebuild of every guard."""
    import torch._dynamo.package as package

    build_guards = package.load_guard_manager
    package.load_guard_manager = lambda *args, **kwargs: _UNCHECKED
    try:
        with torch._inductor.config.patch(compile_threads=1):
            yield
    finally:
        package.load_guard_manager = build_guards


class _Unchecked:
    """Stands for the guard manager a loaded function does not build; any use of it is a bug in this module."""

    def check(self, *args, **kwargs):
        raise EngineError("torch-compile: the stored function's guards were not built (the engine checks inputs)")

    check_verbose = check


_UNCHECKED = _Unchecked()


class CompiledForward:
    """`net` compiled for inputs shaped like `example` (same dtype, device and memory format)."""

    def __init__(self, net: torch.nn.Module, example: torch.Tensor, mode: str, cache, key: str):
        self.shape, self.dtype, self.device = tuple(example.shape), example.dtype, example.device
        self.memory_format = (torch.channels_last if example.dim() == 4 and not example.is_contiguous()
                              and example.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        import torch._dynamo.aot_compile as aot

        torch._dynamo.config.enable_aot_compile = True
        compiled = torch.compile(net, mode=mode, fullgraph=True, dynamic=False)
        stored = cache.blob(AOT_KIND, key)
        if stored is not None:
            # The detect head caches its anchors on the module at the first forward; they depend on the input's
            # height and width only, so one image fills them (a batch-128 forward took 0.6 s of a warm start).
            _eager_forward(net, example[:1])
            try:
                with _loading():
                    artifacts = cache.blob(ARTIFACTS_KIND, key)
                    if artifacts is not None:
                        torch.compiler.load_cache_artifacts(artifacts)
                    compiled._load_aot_compiled_module(stored)
            except Exception as e:  # noqa: BLE001 - a damaged or foreign entry: compile again, replacing it
                log.warning("the stored torch-compile artifact %s could not be loaded (%s); compiling again",
                            key, _first_line(e))
                stored = None
        if stored is None:
            # Traced before a forward of this very shape, the head's anchors would be computed in the graph, with
            # strides that are unbacked `.item()` values the ahead-of-time compile refuses.
            _eager_forward(net, example)
            try:
                with torch.inference_mode():
                    compiled._aot_compile([aot.ModelInput(args=(example,), kwargs={}, contexts=[])])
            except Exception as e:  # noqa: BLE001 - Dynamo/Inductor refusing this model or mode
                raise EngineError(f"ahead-of-time compile failed: {_first_line(e)}") from e
            cache.put_blob(AOT_KIND, key, compiled._save_aot_compiled_module())
            saved = torch.compiler.save_cache_artifacts()
            if saved is not None:
                cache.put_blob(ARTIFACTS_KIND, key, saved[0])
        (self._fn,) = compiled.forward.compiled_results  # one input shape, one compiled function
        self._fn.disable_guard_check()  # checked in __call__ instead (see the module doc)
        self._net = net

    def __call__(self, x: torch.Tensor):
        if tuple(x.shape) != self.shape or x.dtype != self.dtype or x.device != self.device:
            raise EngineError(f"this torch-compile engine was compiled for {self.shape} {self.dtype} on "
                              f"{self.device}, got {tuple(x.shape)} {x.dtype} on {x.device}")
        # the compiled function itself, not the module around it (whose dispatch would check the guards first)
        return self._fn(self._net, x.contiguous(memory_format=self.memory_format))
