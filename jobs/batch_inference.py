"""Batch inference as a Ray job:

    ray job submit --working-dir . -- python jobs/batch_inference.py SOURCE... --out DIR [--profile FILE] [options]

Thin: parses nothing itself, runs `yoloray infer` on the cluster it is submitted to (address=auto).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # works without installing

from yoloray.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--address" not in argv:
        argv += ["--address", "auto"]
    raise SystemExit(main(["infer", *argv]))
