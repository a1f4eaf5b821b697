"""Integration fixtures: one local Ray per test module that asks for it.

`ray_local` starts `ray.init(num_cpus=2)` for the module and shuts it down afterwards. When Ray is already
initialised (another fixture of the same session started it) it is reused and left running for its owner.
Not autouse: modules that start Ray themselves (test_sources, test_finetune) keep doing so.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    progress = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    try:
        yield ray
    finally:
        ctx.enable_progress_bars = progress
        if started:
            ray.shutdown()
