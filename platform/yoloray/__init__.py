"""yoloray: YOLO detection over huge image and video archives on Ray.

Batch (Ray Data), Tune (Ray Tune) and Serve (Ray Serve) all build the same `Detector` from the same
resolved `Profile` (yoloray.config, yoloray.profile), so what was measured is what runs.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Offline by default: ultralytics must never try to download weights, fonts or check for updates.
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")
