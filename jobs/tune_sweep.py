"""Engine tuning sweep as a Ray job:

    ray job submit --working-dir . -- python jobs/tune_sweep.py --model M --gpus 8 --budget-trials 64 --out runs/NAME

Thin entry point; everything is in `yoloray.tune.sweep` (same flags as `yoloray tune`). Under `ray job submit`
Ray is found through RAY_ADDRESS. Give `--out` an absolute path on storage the head node keeps (a relative one
lands in the job's temporary working-dir copy), and `--serve-config` likewise. Exit status 2 on a user error (one
line on stderr), 1 when no trial met the limits.
"""

import os
import sys
from pathlib import Path

# Works from a `--working-dir .` checkout where the package is not installed: use <repo>/platform.
_PLATFORM = Path(__file__).resolve().parents[1] / "platform"
if _PLATFORM.is_dir() and str(_PLATFORM) not in sys.path:
    sys.path.insert(0, str(_PLATFORM))
os.environ.setdefault("YOLO_OFFLINE", "true")

from yoloray.tune.sweep import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
