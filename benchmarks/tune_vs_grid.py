"""The default `yoloray tune` sweep against an exhaustive grid over the same space (issues 6 and 16).

    python benchmarks/tune_vs_grid.py --gpus 4 --out $OUT      (on the H200 machine; see benchmarks/README.md)

(1) YOLOv8s random weights (seeded), saved once as an ultralytics checkpoint, unless --model is given.
(2) The default sweep: `yoloray tune --model M --gpus N --out OUT/sweep` through the same entry as the CLI and
    jobs/tune_sweep.py (`yoloray.tune.sweep.main`), timed by wall clock (Ray start not counted: one `ray.init`
    for both runs). Torch's compile cache starts empty (unless TORCHINDUCTOR_CACHE_DIR is set), as on a first sweep.
(3) The grid: the same command with `--budget-trials` = the number of points of that space and `--layout-top`
    = `--grid-layout-top` (default: every point), into OUT/grid: every engine point in-process, then every
    layout of the layout level for each, as real batch jobs over the same sample (the exhaustive layout grid).
(4) A markdown table (wall time, trials, layout runs, winner / best profile and images/s end to end, ratio) and
    OUT/tune_vs_grid.json. Both levels are compared: the engine level by the trials' images/s, the layout level
    (what a batch job gets) by the layouts' images/s end to end (the medians of their runs, as the sweep ranks them). Each ratio is given twice: the sweep's own figure
    for its winner over the grid's best, and the grid's figure for the sweep's winner (same profile) over the
    grid's best (one run, so no run-to-run noise). Run the winner's OUT/sweep/profile.yaml as a batch job with
    `benchmarks/e2e.py --configs profile:OUT/sweep/profile.yaml,...`.
The exhaustive grid is long: 16 default engine points x 6 default layouts = 96 batch jobs of --layout-images
members (~20 s each at 20,000 on one H200), so split it (`--skip-sweep`, `--grid-layout-top K`) within a
command's time limit.

Split over two machines or commands: `--skip-grid` (sweep only), then `--skip-sweep --sweep-json FIRST.json`
(grid only, compared with the first command's sweep). Without a GPU it is a CPU dry run: yolov8n.yaml random
weights, 256x256 input, a 4-point space, small frames.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

GPU = torch.cuda.is_available()
DRY_SPACE = {"backend": "torch", "precision": ["fp32", "bf16"], "batch_size": [1, 2], "imgsz": 256,
             "channels_last": False}


def tune_argv(a, out: Path, gpus: int) -> list[str]:
    """What a user would type after `yoloray tune` (plus where the Serve config goes, so the repo stays clean)."""
    argv = ["--model", a.model, "--gpus", str(gpus), "--out", str(out),
            "--serve-config", str(out / "serve_config.yaml")]
    for flag, value in (("--space", a.space), ("--frame-size", a.frame_size), ("--window-seconds", a.window_seconds),
                        ("--max-windows", a.max_windows), ("--layout-images", a.layout_images)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def _point(row) -> dict:
    from yoloray.tune.space import KNOBS

    out = {}
    for k in KNOBS:
        v = row.get(k)
        v = v.item() if hasattr(v, "item") else v
        out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return out


def _layout(out: Path) -> dict:
    """The layout level of a run: its layouts (each the medians of its runs, as the sweep ranks them), the best
    (end to end), and the written winner profile."""
    import pandas as pd

    from yoloray.tune.layout import layout_summary

    path = out / "layout.parquet"
    if not path.is_file():
        return {"layout_runs": 0}
    raw = pd.read_parquet(path)
    df = layout_summary(raw)
    ok = df[df["status"] == "ok"]
    def value(k, v):  # figures rounded as layout_best's, so the two compare exactly
        return int(v) if k == "runs" else round(float(v), 1) if k.endswith("_per_s") and v == v else v

    runs = [{k: value(k, r[k])
             for k in ("engine", "layout", "status", "runs", "images_per_s", "steady_images_per_s", "profile") if k in r}
            for _, r in df.iterrows()]
    best = ok.loc[ok["images_per_s"].idxmax()] if not ok.empty else None
    written = (out / "profile.yaml").read_text() if (out / "profile.yaml").is_file() else None
    return {"layout_runs": len(raw), "runs": runs, "winner_profile": written,
            "layout_best": None if best is None else {"engine": best["engine"], "layout": best["layout"],
                                                      "runs": int(best["runs"]),
                                                      "images_per_s": round(float(best["images_per_s"]), 1),
                                                      "steady_images_per_s": round(float(best["steady_images_per_s"]), 1),
                                                      "profile": best["profile"]}}


def run_phase(name: str, argv: list[str]) -> dict:
    """One `yoloray tune` run, timed; its trials and winner (the report's pick) as a dict."""
    import pandas as pd

    from yoloray.tune.report import pick_winner
    from yoloray.tune.settings import TuneConfig
    from yoloray.tune.sweep import main as tune_main

    print(f"\n== {name}: yoloray tune {' '.join(argv)}", flush=True)
    t = time.perf_counter()
    rc = tune_main(argv)
    wall = time.perf_counter() - t
    out = Path(argv[argv.index("--out") + 1])
    gpus = int(argv[argv.index("--gpus") + 1])
    result = {"argv": argv, "rc": rc, "gpus": gpus, "wall_s": round(wall, 1), "trials": 0, "ok_trials": 0,
              "config": None, "images_per_s": None, "p99_ms": None, "fidelity": None}
    if not (out / "trials.parquet").is_file():
        return result
    settings = TuneConfig.from_yaml(out / "sweep.yaml")
    df = pd.read_parquet(out / "trials.parquet")
    result.update(trials=len(df), ok_trials=int((df["status"] == "ok").sum()),
                  budget_trials=settings.budget_trials, budget_minutes=settings.budget_minutes,
                  points=[{**_point(r), "images_per_s": float(r["images_per_s"])} for _, r in df.iterrows()])
    result.update(_layout(out))
    best = pick_winner(df, settings)
    if best is not None:
        result.update(config=_point(best), images_per_s=round(float(best["images_per_s"]), 1),
                      p99_ms=round(float(best["p99_ms"]), 1), fidelity=round(float(best["fidelity"]), 3))
    return result


def describe(config: dict | None) -> str:
    if not config:
        return "-"
    return " ".join(f"{k}={v}" for k, v in config.items() if v is not None)


def summary(sweep: dict | None, grid: dict | None, n_points: int) -> tuple[str, dict]:
    rows = ["| run | wall s | trials (ok) | engine winner / best | images/s | layout runs | layout winner / best | "
            "images/s end to end |", "| --- | ---: | ---: | --- | ---: | ---: | --- | ---: |"]
    for label, r in (("default sweep", sweep), (f"grid over all {n_points} points", grid)):
        if r is not None:
            lb = r.get("layout_best") or {}
            rows.append(f"| {label}, {r.get('gpus', '?')} GPU(s) | {r['wall_s']:.0f} | {r['trials']} ({r['ok_trials']}) | "
                        f"{describe(r['config'])} | {r['images_per_s'] or 0:,.1f} | {r.get('layout_runs', 0)} | "
                        f"{lb.get('engine', '-')} {lb.get('layout', '')} | {lb.get('images_per_s', 0):,.1f} |")
    ratios: dict = {}
    if sweep and grid and sweep["images_per_s"] and grid["images_per_s"]:
        ratios["winner_over_best"] = round(sweep["images_per_s"] / grid["images_per_s"], 3)
        same = [p["images_per_s"] for p in grid.get("points", []) if
                {k: p[k] for k in sweep["config"]} == sweep["config"]]
        if same:
            ratios["winner_in_grid_over_best"] = round(same[0] / grid["images_per_s"], 3)
        rows.append("")
        rows.append(f"winner / best: {ratios['winner_over_best']:.3f} (the sweep's figure for its winner)"
                    + (f"; {ratios['winner_in_grid_over_best']:.3f} (the grid's figure for the sweep's winner)"
                       if same else "; the sweep's winner is not among the grid's trials"))
    lb_s, lb_g = (sweep or {}).get("layout_best"), (grid or {}).get("layout_best")
    if lb_s and lb_g:
        ratios["layout_winner_over_best"] = round(lb_s["images_per_s"] / lb_g["images_per_s"], 3)
        same = [r["images_per_s"] for r in grid.get("runs", []) if r.get("profile") == sweep.get("winner_profile")]
        if same:
            ratios["layout_winner_in_grid_over_best"] = round(same[0] / lb_g["images_per_s"], 3)
        rows.append(f"layout level (batch jobs) winner / best: {ratios['layout_winner_over_best']:.3f} (the sweep's "
                    "figure for its profile)" + (f"; {ratios['layout_winner_in_grid_over_best']:.3f} (the grid's figure "
                                                 "for the same profile)" if same else "; the grid did not run that profile"))
    return "\n".join(rows), ratios


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, default=torch.cuda.device_count(), help="GPUs for both runs (default: all)")
    p.add_argument("--sweep-gpus", type=int, help="GPUs for the default sweep (default: --gpus)")
    p.add_argument("--model", help="weights .pt (default: YOLOv8s random weights, seeded; yolov8n on a CPU)")
    p.add_argument("--space", help="space YAML for both runs (default: the default space; a tiny one on a CPU)")
    p.add_argument("--frame-size", help="WxH of the generated frames (default: yoloray tune's; 320x180 on a CPU)")
    p.add_argument("--window-seconds", type=float, help="measurement window (default: yoloray tune's)")
    p.add_argument("--max-windows", type=int, help="windows per trial at most (default: yoloray tune's)")
    p.add_argument("--out", default="benchmarks/results/tune_vs_grid", help="run folders sweep/, grid/ and the JSON")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "yoloray-tune-vs-grid"),
                   help="weights and torch's compile cache")
    p.add_argument("--grid-layout-top", type=int, help="engine points the grid runs at the layout level "
                   "(default: all; each is run once per layout)")
    p.add_argument("--layout-images", type=int, help="archive members per layout run (default: yoloray tune's)")
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--sweep-json", help="with --skip-sweep: a tune_vs_grid.json whose sweep is compared")
    a = p.parse_args()
    out, work = Path(a.out).resolve(), Path(a.work).resolve()
    for sub in ("sweep", "grid"):
        if (out / sub / "sweep.yaml").exists():
            p.error(f"{out / sub} already holds a run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if not GPU:
        a.gpus = 0
        if a.space is None:
            import yaml

            a.space = str(out / "dry_space.yaml")
            Path(a.space).write_text(yaml.safe_dump(DRY_SPACE))
        a.frame_size = a.frame_size or "320x180"
    if a.model is None:
        name = "yolov8s" if GPU else "yolov8n"
        from yoloray.engines.torch_backend import save_random_checkpoint

        a.model = str(save_random_checkpoint(f"{name}.yaml", work / f"{name}-seed0.pt"))
    # a cold compile cache (inherited by the Ray workers), so the sweep's wall time is a first sweep's
    cache = Path(tempfile.mkdtemp(prefix="inductor-", dir=work))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))

    import ray

    from yoloray.tune.space import Space
    from yoloray.tune.sweep import _runtime_env, build_parser, settings_from_args

    settings, _ = settings_from_args(build_parser().parse_args(tune_argv(a, out / "grid", a.gpus)))
    space = Space.build(settings.space, cuda=a.gpus > 0, frame_size=settings.frame_size)
    n_points = len(space.points())
    print(f"space: {space.describe()}; model {a.model}; {a.gpus} GPU(s)", flush=True)
    first = json.loads(Path(a.sweep_json).read_text()) if a.skip_sweep and a.sweep_json else None
    if first is not None and first["space"] != space.describe():
        p.error(f"--sweep-json {a.sweep_json} swept another space: {first['space']}")

    t = time.perf_counter()
    ray.init(runtime_env=_runtime_env(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"ray.init {time.perf_counter() - t:.1f} s (not counted)", flush=True)
    sweep = grid = None
    try:
        if not a.skip_sweep:
            sweep = run_phase("default sweep", tune_argv(a, out / "sweep", a.sweep_gpus if a.sweep_gpus is not None
                                                         else a.gpus))
        elif first is not None:
            sweep = first["sweep"]
        if not a.skip_grid:
            grid = run_phase("grid", [*tune_argv(a, out / "grid", a.gpus), "--budget-trials", str(n_points),
                                      "--layout-top", str(a.grid_layout_top or n_points)])
    finally:
        ray.shutdown()
    table, ratios = summary(sweep, grid, n_points)
    record = {"model": a.model, "gpus": a.gpus, "sweep_gpus": a.sweep_gpus, "device": torch.cuda.get_device_name()
              if GPU else "cpu", "space": space.describe(), "n_points": n_points, "sweep": sweep, "grid": grid,
              **ratios}
    (out / "tune_vs_grid.json").write_text(json.dumps(record, indent=2, default=str))
    print("\n" + table)
    print(f"\nJSON: {out / 'tune_vs_grid.json'}")
    return 0 if all(r is None or r["rc"] == 0 for r in (sweep, grid)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
