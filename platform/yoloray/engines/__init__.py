"""Inference backends behind one small interface (`base.Engine`); `build_engine` picks one by name.

Each backend module is imported only when it is used, so adding one never touches the callers.
"""

from __future__ import annotations

from importlib import import_module

from yoloray.engines.base import Engine, EngineError
from yoloray.engines.capabilities import CAPABILITIES, capability

_BACKENDS = {
    "torch": "yoloray.engines.torch_backend:TorchEngine",
    "torch-compile": "yoloray.engines.torch_backend:TorchEngine",
    "onnxruntime": "yoloray.engines.onnxruntime_backend:OrtEngine",
}


def build_engine(config, device) -> Engine:
    """Build (load, convert, compile) the engine a resolved Profile (its `build_spec()`) or a BuildSpec describes,
    on `device`. Backends read the flat build spec: the engine fields plus max_det and agnostic_nms."""
    if hasattr(config, "build_spec"):
        config = config.build_spec()
    capability(config.backend)  # unknown names fail with the list of backends
    module, cls = _BACKENDS[config.backend].split(":")
    return getattr(import_module(module), cls)(config, device)


__all__ = ["CAPABILITIES", "Engine", "EngineError", "build_engine", "capability"]
