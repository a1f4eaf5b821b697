"""Progress of a fine-tuning run: one line per epoch from ultralytics' trainer callback.

    finetune: epoch 3/30 (10%)  0.9 epochs/min  ETA 0:30:00  mAP50-95 0.412

The trainer runs in a Ray task (or in-process); the line is printed there, flushed, and reaches the driver's
console and `ray job logs` through Ray's worker log forwarding (prefixed with the task's name and pid).
"""

from __future__ import annotations

import sys
import time

from yoloray.observe.live import duration

MAP_KEY = "metrics/mAP50-95(B)"


def epoch_line(label: str, epoch: int, epochs: int, elapsed_s: float, metrics: dict | None = None) -> str:
    """`epoch` is the number of epochs finished (1-based)."""
    rate = epoch / elapsed_s if elapsed_s > 0 else 0.0
    text = f"{label}: epoch {epoch}/{epochs} ({epoch / max(1, epochs):.0%})  {rate * 60:.1f} epochs/min"
    if rate > 0 and epoch < epochs:
        text += f"  ETA {duration((epochs - epoch) / rate)}"
    if metrics and MAP_KEY in metrics:
        text += f"  mAP50-95 {float(metrics[MAP_KEY]):.3f}"
    return text


def epoch_progress(label: str = "finetune", stream=None):
    """An ultralytics `on_fit_epoch_end` callback printing `epoch_line` after each epoch."""
    t0 = time.perf_counter()

    def on_fit_epoch_end(trainer) -> None:
        try:
            line = epoch_line(label, trainer.epoch + 1, trainer.epochs, time.perf_counter() - t0,
                              getattr(trainer, "metrics", None))
        except Exception as e:  # progress must never fail training
            line = f"{label}: (progress unavailable: {type(e).__name__}: {e})"
        print(line, file=stream or sys.stdout, flush=True)

    return on_fit_epoch_end
