"""`TuneConfig`: the settings of one `yoloray tune` sweep (RUN/sweep.yaml).

Split out of yoloray/config.py (which keeps the profile models every path shares); imports nothing of Ray.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from yoloray.config import _Model


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
    archive: list[str] = Field(default_factory=list)  # infer sources whose first images are measured instead
    layout_top: int = Field(2, ge=0)  # engine configurations measured at the layout level (0: engine level only)
    layout_images: int | None = Field(None, ge=1)  # archive members per layout run (default 20,000 CUDA, 256 CPU)
    frame_size: tuple[int, int] = (1920, 1080)  # width, height of the generated frames, or of the user's own frames
    video: bool = False  # the archive is video: trials time frames decoded from it, layout runs its files
    n_images: int = Field(32, ge=1)
    fidelity_images: int = Field(8, ge=1)
    seed: int = 0
    serve_config: str | None = None  # where the winner's Serve config goes (default serve_configs/<name>.yaml)
