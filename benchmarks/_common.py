"""What benchmarks/e2e.py and benchmarks/video.py share: Ray for the rows, `yoloray infer` run through the command
line in the benchmark's process, and the 1 -> N GPU scaling step.

Rows are dicts with `{unit}_per_s` (end to end) and `steady_{unit}_per_s` (after the first result), `unit` being
"images" (e2e.py) or "frames" (video.py); a row's `config` and `gpus` say what ran on how many GPUs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path


def init_ray(num_gpus: int | None = None) -> int:
    """A local Ray for the rows (`num_gpus=1`: a one-GPU row on a machine of several); a running one is shut
    down first. Returns the GPUs it has."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_gpus=num_gpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return int(ray.cluster_resources().get("GPU", 0))


def cli_infer(source: Path, dest: Path, weights: Path, unit: str, profile: str | None = None) -> dict:
    """`yoloray infer SOURCE --out DEST --model WEIGHTS [--profile PROFILE]` through the command line, in this
    process (on the Ray already up: all its GPUs); the output is removed after. Returns, from the
    `_summary.json` and `_profile.yaml` it writes: `units` (images or frames), `seconds` (the command's whole
    time), and row fields: `startup_s` (`run_job`'s time to the first result), `steady_{unit}_per_s` (units
    after the first result, on `run_job`'s clock: the command lists and samples the inputs before run_job
    starts it), `errors`, `engine` (the resolved profile), `actor` (its layout), `wall_clock`."""
    import yaml

    from yoloray.cli import main as cli

    shutil.rmtree(dest, ignore_errors=True)
    argv = ["infer", str(source), "--out", str(dest), "--model", str(weights)]
    if profile:
        argv += ["--profile", profile]
    t, began = time.perf_counter(), time.time()
    if cli(argv) != 0:
        raise RuntimeError(f"yoloray {' '.join(argv)} failed")
    seconds = time.perf_counter() - t
    summary = json.loads((dest / "_summary.json").read_text())
    resolved = yaml.safe_load((dest / "_profile.yaml").read_text())
    shutil.rmtree(dest, ignore_errors=True)
    run = summary["seconds"] - summary["first_result_s"]
    return {"units": summary["images"], "seconds": seconds, "startup_s": round(summary["first_result_s"], 1),
            f"steady_{unit}_per_s": round(summary["images"] / run, 1) if run > 1.0 else None,
            "errors": sum(summary["errors"].values()), "engine": resolved, "actor": resolved.get("layout"),
            "wall_clock": (round(began, 1), round(began + seconds, 1))}


def scaling(name: str, run: Callable[[int], dict], results: list[dict], unit: str) -> dict | None:
    """Configuration `name` on one GPU, then on every GPU of the machine; efficiency = (rate on N GPUs) /
    (N x rate on one), end to end and steady. The one-GPU row is this run's own (a row of `results` with this
    `config` on 1 GPU, no label), else `run(1)` on the Ray that is up (given one GPU). Ray is then restarted
    with every GPU and `run(N)` makes the N-GPU row. Fewer than 2 GPUs: a row saying it is skipped."""
    one = next((r for r in results if r.get("config") == name and r.get("gpus") == 1 and not r.get("label")
                and f"{unit}_per_s" in r), None) or run(1)
    gpus = init_ray()
    if gpus < 2:
        results.append({"row": f"scaling {name}", "skipped": f"this machine has {gpus} GPU(s), fewer than 2"})
        print(f"  -> scaling {name}: this machine has fewer than 2 GPUs; skipped", flush=True)
        return None
    many = run(gpus)

    def efficiency(key: str) -> float | None:
        return round(many[key] / (gpus * one[key]), 3) if many.get(key) and one.get(key) else None

    r = {"row": f"scaling {name}: 1 -> {gpus} GPUs", "config": name, "gpus": gpus,
         "efficiency": efficiency(f"{unit}_per_s"), "steady_efficiency": efficiency(f"steady_{unit}_per_s"),
         "one_gpu_row": one["row"], "many_gpus_row": many["row"]}
    results.append(r)
    print(f"  -> {describe(r)}", flush=True)
    return r


def describe(r: dict) -> str:
    """A scaling row as one line."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    return f"{r['row']}: {pct(r['efficiency'])} of linear end to end, {pct(r['steady_efficiency'])} steady"
