"""What a sweep leaves in RUN: every trial's figures, plots, one HTML page, the winner profile and its Serve config.

    trials.parquet, trials.csv      engine level: one row per trial (knobs, status, reason, figures of its last
                                    window, window_min/window_max: the spread of its windows' images/s)
    layout.parquet, layout.csv      layout level: one row per batch-job run (engine trial, layout, run, figures)
    trials.png, p99_vs_throughput.png, memory_vs_batch.png, layout.png   (tune/plots.py)
    report.html                     self-contained: the summary, the plots (base64) and both tables
    profile.yaml                    the winner: a full, resolved profile (`yoloray infer --profile`, serve, jobs)
    serve.yaml                      copy of the Serve config, also written to serve_configs/<NAME>.yaml

The engine level's winner: the most images/s among trials with status ok that satisfy --max-p99-ms,
--max-gpu-mem-gib and --min-fidelity. With a layout level, the sweep's winner is its fastest layout end to end
(the median of its runs: the leaders run three times, tune/layout.py; the engines taken there all satisfy the
limits), and its gain is over the default profile's runs on the same sample; without one, the engine winner
with the default profile's layout. The Serve config is a standard Ray Serve config file for `serve run` /
`serve deploy`.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from yoloray.config import Profile
from yoloray.tune.layout import layout_summary
from yoloray.tune.settings import TuneConfig
from yoloray.tune.space import KNOBS
from yoloray.tune.trial import engine_fields

FIGURES = ("status", "reason", "images_per_s", "measured_images_per_s", "window_min", "window_max", "p50_ms",
           "p99_ms", "per_image_ms", "gpu_mem_gib", "fidelity", "model_images_per_s", "window", "stable", "engine_key")
TABLE = ("trial_id", *KNOBS, "status", "measured_images_per_s", "window_min", "window_max", "p50_ms", "p99_ms",
         "gpu_mem_gib", "fidelity")


def trials_frame(results) -> pd.DataFrame:
    """One row per trial of a Tune ResultGrid (its last reported result)."""
    rows = []
    for r in results:
        m, engine = dict(r.metrics or {}), dict((r.config or {}).get("engine", {}))
        if not m.get("status") and r.error is None:
            continue  # never started (the time budget ran out first)
        row: dict[str, Any] = {"trial_id": m.get("trial_id") or Path(r.path).name.removeprefix("trial_")}
        row.update({k: engine.get(k) for k in KNOBS})
        row.update({k: m.get(k) for k in FIGURES})
        windows = getattr(r, "metrics_dataframe", None)  # every window the trial reported
        if windows is not None and "measured_images_per_s" in windows and "window" in windows:
            measured = windows.loc[windows["window"] > 0, "measured_images_per_s"]
            row.update(window_min=measured.min() if len(measured) else None,
                       window_max=measured.max() if len(measured) else None)
        if not m.get("status"):
            row.update(status="error" if r.error else "no result", images_per_s=0.0,
                       reason=str(r.error).strip().splitlines()[-1][:500] if r.error else "the trial reported nothing")
        rows.append(row)
    df = pd.DataFrame(rows, columns=["trial_id", *KNOBS, *FIGURES])
    for col in ("images_per_s", "measured_images_per_s", "window_min", "window_max", "p50_ms", "p99_ms",
                "per_image_ms", "gpu_mem_gib", "fidelity", "model_images_per_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["images_per_s"] = df["images_per_s"].fillna(0.0)
    return df.sort_values("images_per_s", ascending=False, kind="stable").reset_index(drop=True)


def eligible(df: pd.DataFrame, settings: TuneConfig) -> pd.Series:
    ok = df["status"].eq("ok") & (df["images_per_s"] > 0)
    if settings.max_p99_ms is not None:
        ok &= df["p99_ms"] <= settings.max_p99_ms
    if settings.max_gpu_mem_gib is not None:
        ok &= df["gpu_mem_gib"] <= settings.max_gpu_mem_gib
    if settings.min_fidelity is not None:
        ok &= df["fidelity"] >= settings.min_fidelity
    return ok


def pick_winner(df: pd.DataFrame, settings: TuneConfig) -> pd.Series | None:
    ok = df[eligible(df, settings)]
    return None if ok.empty else ok.loc[ok["images_per_s"].idxmax()]


def engine_point(row: pd.Series) -> dict[str, Any]:
    """The knob values of a trial row (numpy scalars and NaN made Python)."""
    point = {}
    for k in KNOBS:
        v = row.get(k)
        v = v.item() if hasattr(v, "item") else v
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            point[k] = v
    return point


def top_engines(df: pd.DataFrame, settings: TuneConfig) -> list[tuple[str, dict]]:
    """(trial id, knob values) of the best `layout_top` eligible trials."""
    ok = df[eligible(df, settings)].sort_values("images_per_s", ascending=False).head(settings.layout_top)
    return [(str(r["trial_id"]), engine_point(r)) for _, r in ok.iterrows()]


def serve_config(engine: Profile, settings: TuneConfig) -> dict:
    """A Ray Serve config (ServeDeploySchema) running the winner behind yoloray.serve.app:build_app.

    On CUDA, four replicas of 0.25 GPU per GPU of the sweep (autoscaled from one per GPU): benchmarks/README.md,
    "Serving" (2026-12-01, one H200, HAProxy ingress) measured 1,803 images/s at p99 93 ms with 4 x 0.25
    against ~850 with 1 x 1, while Serve's Python proxy stayed flat near 220 whatever the replicas: so on CUDA
    the config asks for `ingress: haproxy` when Ray's HAProxy binary (the serve-fast extra) is installed where the
    sweep ran, else it keeps the Python proxy. On a CPU: num_gpus 0, 1 to max(1, gpus) replicas, Python proxy."""
    from yoloray.serve.ingress import haproxy_available

    bs = engine.batch_size
    gpu = engine.device.startswith("cuda")
    args = {"profile": engine.model_dump(mode="json"), "max_batch_size": bs, "batch_wait_timeout_s": 0.01}
    if gpu and haproxy_available():
        args["ingress"] = "haproxy"
    gpus = max(1, settings.gpus)
    per_gpu = 4 if gpu else 1  # replicas of 1 / per_gpu GPU each
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [{
            "name": "yoloray",
            "route_prefix": "/",
            "import_path": "yoloray.serve.app:build_app",
            "runtime_env": {"env_vars": {"YOLO_OFFLINE": "true"}},
            "args": args,
            "deployments": [{
                "name": "Detector",
                "max_ongoing_requests": 2 * bs,
                "autoscaling_config": {"min_replicas": gpus if gpu else 1, "max_replicas": per_gpu * gpus,
                                       "target_ongoing_requests": bs},
                "ray_actor_options": {"num_gpus": 1 / per_gpu if gpu else 0, "num_cpus": settings.cpus_per_trial},
            }],
        }],
    }


def _html(df: pd.DataFrame, layout: pd.DataFrame, pngs: list[Path], settings: TuneConfig, summary: str) -> str:
    imgs = "".join(f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                   for p in pngs)
    tables = "".join(f"<h2>{title}</h2>" + t.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
                     for title, t in (("Engine level", df), ("Layout level", layout.drop(columns=["profile"], errors="ignore")))
                     if not t.empty)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>yoloray tune {html.escape(settings.name)}"
            "</title><style>body{font-family:sans-serif;margin:2em}img{max-width:48%;margin:.3em}"
            "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 6px;border-bottom:1px solid #ddd}"
            f"</style></head><body><h1>yoloray tune: {html.escape(settings.name)}</h1>"
            f"<p>model {html.escape(settings.model)}</p><pre>{html.escape(summary)}</pre>{imgs}{tables}</body></html>")


def format_table(df: pd.DataFrame, winner_id: str | None = None) -> str:
    t = df[list(TABLE)].copy()
    t.insert(0, "", ["*" if tid == winner_id else "" for tid in t["trial_id"]])
    t = t.rename(columns={"measured_images_per_s": "img/s", "batch_size": "batch", "channels_last": "ch_last",
                          "reduced_decode": "reduced", "gpu_mem_gib": "mem_gib", "window_min": "win_min",
                          "window_max": "win_max"})
    return t.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}")


def format_layout(layout: pd.DataFrame, winner: int | None) -> str:
    if layout.empty:
        return "layout level: not run"
    cols = [c for c in ("engine", "layout", "status", "runs", "images_per_s", "steady_images_per_s", "first_result_s",
                        "reason") if c in layout]
    t = layout[cols].copy()
    t.insert(0, "", ["*" if i == winner else "" for i in t.index])
    return t.rename(columns={"images_per_s": "img/s", "steady_images_per_s": "steady"}).to_string(
        index=False, na_rep="-", float_format=lambda v: f"{v:.4g}")


def _winner(df, layout: pd.DataFrame, settings: TuneConfig, default: Profile):
    """(winner profile, its layout row index or None, the engine winner row or None, gain text)."""
    engine_row = pick_winner(df, settings)
    ok = layout[layout["status"].eq("ok")] if not layout.empty else layout
    if not ok.empty:
        best = ok["images_per_s"].idxmax()
        profile = Profile.model_validate(yaml.safe_load(layout.loc[best, "profile"]))
        base = ok[ok["engine"] == "default"]
        gain = (f"{layout.loc[best, 'images_per_s'] / base['images_per_s'].iloc[0]:.2f}x the default profile "
                f"({base['images_per_s'].iloc[0]:.1f} images/s end to end on the same sample)") if not base.empty else \
            "the default profile's run failed"
        return profile, best, engine_row, gain
    if engine_row is None:
        return None, None, None, ""
    profile = default.replace(**engine_fields(engine_point(engine_row), settings))
    return profile, None, engine_row, "no layout level: the engine winner with the default profile's layout"


def write_report(results, settings: TuneConfig, default: Profile, layout_level=None) -> Profile | None:
    """Write everything listed in the module docstring; print the tables; return the winner profile (or None).
    `layout_level(top_engines)` runs the layout level and returns its rows (sweep.layout_level)."""
    from yoloray.tune.plots import layout_plot, memory_plot, pareto_plot, trials_plot, varied

    out = Path(settings.out)
    df = trials_frame(results)
    df.to_parquet(out / "trials.parquet", index=False)
    df.to_csv(out / "trials.csv", index=False)
    runs = pd.DataFrame(layout_level(top_engines(df, settings)) if layout_level else [])
    if not runs.empty:
        runs.to_parquet(out / "layout.parquet", index=False)
        runs.drop(columns=["profile"]).to_csv(out / "layout.csv", index=False)
    layout = layout_summary(runs)  # one row per layout, the medians of its runs
    profile, best, engine_row, gain = _winner(df, layout, settings, default)
    engine_id = None if engine_row is None else engine_row["trial_id"]
    if profile is not None and best is not None and layout.loc[best, "engine"] != "default":
        engine_id = layout.loc[best, "engine"]
    ok = df[df["status"].eq("ok") & (df["measured_images_per_s"] > 0)]
    knobs = varied(df, KNOBS)
    pngs = [trials_plot(ok, knobs, engine_id, out / "trials.png"), pareto_plot(ok, knobs, engine_id, out / "p99_vs_throughput.png"),
            memory_plot(ok, out / "memory_vs_batch.png"), layout_plot(layout, best, out / "layout.png")]
    bounds = (("p99 ms <=", settings.max_p99_ms), ("GPU GiB <=", settings.max_gpu_mem_gib),
              ("fidelity >=", settings.min_fidelity))
    limits = ", ".join(f"{k} {v}" for k, v in bounds if v is not None) or "none"
    if profile is None:
        summary = f"{len(df)} trials; no trial is ok within the limits ({limits})"
    else:
        profile.to_yaml(out / "profile.yaml")
        text = yaml.safe_dump(serve_config(profile, settings), sort_keys=False)
        serve_path = Path(settings.serve_config or Path.cwd() / "serve_configs" / f"{settings.name}.yaml")
        serve_path.parent.mkdir(parents=True, exist_ok=True)
        serve_path.write_text(text)
        (out / "serve.yaml").write_text(text)
        how = "" if best is None else (f"; layout {layout.loc[best, 'layout']}: {layout.loc[best, 'images_per_s']:.1f} "
                                       f"images/s end to end, {layout.loc[best, 'steady_images_per_s']:.1f} steady"
                                       + (f" (medians of {layout.loc[best, 'runs']} runs)" if layout.loc[best, 'runs'] > 1
                                          else ""))
        engine = "" if engine_row is None else (
            f"\nengine level: {engine_row['trial_id']} {engine_row['images_per_s']:.1f} images/s, p99 "
            f"{engine_row['p99_ms']:.1f} ms, {engine_row['gpu_mem_gib']:.2f} GiB, fidelity {engine_row['fidelity']:.3f}")
        summary = (f"{len(df)} engine trials, {len(runs)} layout runs; limits: {limits}{engine}\n"
                   f"winner: engine {engine_id}{how}\ngain: {gain}\n"
                   f"profile: {out / 'profile.yaml'}  (yoloray infer SOURCES --out OUT --profile {out / 'profile.yaml'})\n"
                   f"serve config: {serve_path} (serve run {serve_path})")
    (out / "report.html").write_text(_html(df, layout, pngs, settings, summary))
    print(format_table(df, engine_id))
    print(format_layout(layout, best))
    print(summary)
    print(f"report: {out / 'report.html'}")
    return profile
