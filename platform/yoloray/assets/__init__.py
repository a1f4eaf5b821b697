"""Files that ship inside the package: the demo detector's weights and its model card."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEMO_WEIGHTS = ASSETS / "yoloray-demo-v8n.pt"


def demo_weights() -> Path | None:
    """The bundled demo detector (trained by `yoloray finetune` on generated footage), if it ships."""
    return DEMO_WEIGHTS if DEMO_WEIGHTS.is_file() else None
