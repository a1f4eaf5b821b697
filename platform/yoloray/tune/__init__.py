"""Engine tuning on Ray Tune: `yoloray tune` searches the Profile with the most images/s per GPU.

space.py   the search space, built from the capability table (no Ray)
trial.py   one measured trial: build, warm, fidelity check, windows until stable
sweep.py   the Ray Tune wiring and the command line (`main(argv)`)
report.py  trials.parquet/csv, plots, report.html, engine.yaml and the winner's Serve config

Importing this package imports nothing heavy; `main` loads Ray only when called.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from yoloray.tune.sweep import main as sweep_main

    return sweep_main(argv)


__all__ = ["main"]
