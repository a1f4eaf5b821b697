"""Train a YOLO detector as a Ray task: `ray job submit --working-dir . -- python jobs/finetune.py --data D.yaml --out DIR`.

Thin entry point; everything is in `yoloray.finetune` (flags: --data --out --model --epochs --imgsz --batch --gpus
--workers --seed --address --no-ray). Exit status 2 on a user error (one line on stderr).
"""

import os
import sys
from pathlib import Path

# Works from a `--working-dir .` checkout where the package is not installed: use <repo>/platform.
_PLATFORM = Path(__file__).resolve().parents[1] / "platform"
if _PLATFORM.is_dir() and str(_PLATFORM) not in sys.path:
    sys.path.insert(0, str(_PLATFORM))
os.environ.setdefault("YOLO_OFFLINE", "true")

from yoloray.finetune import main  # noqa: E402

raise SystemExit(main())
