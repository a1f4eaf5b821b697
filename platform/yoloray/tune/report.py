"""What a sweep leaves in RUN: every trial's figures, plots, one HTML page, the winner and its Serve config.

    trials.parquet, trials.csv      one row per trial: knobs, status, reason, figures of its last window
    throughput_vs_batch.png         images/s vs batch size, one line per precision (best of each)
    p99_vs_throughput.png           p99 batch latency vs images/s (the winner starred)
    memory_vs_batch.png             peak GPU memory vs batch size, one line per precision
    report.html                     self-contained: the plots (base64) and the table
    engine.yaml                     the winner's EngineConfig (what Serve and the batch job load)
    serve.yaml                      copy of the Serve config, also written to serve_configs/<NAME>.yaml

The winner: the most images/s among trials with status ok that satisfy --max-p99-ms, --max-gpu-mem-gib and
--min-fidelity. The Serve config is a standard Ray Serve config file for `serve run` / `serve deploy`.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from yoloray.config import EngineConfig, TuneConfig
from yoloray.tune.space import KNOBS
from yoloray.tune.trial import engine_fields

FIGURES = ("status", "reason", "images_per_s", "measured_images_per_s", "p50_ms", "p99_ms", "per_image_ms",
           "gpu_mem_gib", "fidelity", "model_images_per_s", "window", "stable", "engine_key")
TABLE = ("trial_id", "backend", "precision", "batch_size", "imgsz", "cuda_graph", "channels_last", "compile_mode",
         "decode", "reduced_decode", "status", "measured_images_per_s", "p50_ms", "p99_ms", "gpu_mem_gib", "fidelity")
PLOTS = ("throughput_vs_batch.png", "p99_vs_throughput.png", "memory_vs_batch.png")


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
        if not m.get("status"):
            row.update(status="error" if r.error else "no result", images_per_s=0.0,
                       reason=str(r.error).strip().splitlines()[-1][:500] if r.error else "the trial reported nothing")
        rows.append(row)
    df = pd.DataFrame(rows, columns=["trial_id", *KNOBS, *FIGURES])
    for col in ("images_per_s", "measured_images_per_s", "p50_ms", "p99_ms", "per_image_ms", "gpu_mem_gib",
                "fidelity", "model_images_per_s"):
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


def winner_engine(row: pd.Series, settings: TuneConfig) -> EngineConfig:
    point = {}
    for k in KNOBS:
        v = row.get(k)
        v = v.item() if hasattr(v, "item") else v  # numpy scalars -> Python
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            point[k] = v
    return EngineConfig.parse(engine_fields(point, settings), source="winner")


def serve_config(engine: EngineConfig, settings: TuneConfig) -> dict:
    """A Ray Serve config (ServeDeploySchema) running the winner behind yoloray.serve.app:build_app."""
    bs = engine.batch_size
    gpu = engine.device.startswith("cuda")
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [{
            "name": "yoloray",
            "route_prefix": "/",
            "import_path": "yoloray.serve.app:build_app",
            "runtime_env": {"env_vars": {"YOLO_OFFLINE": "true"}},
            "args": {"engine": engine.model_dump(mode="json"), "max_batch_size": bs, "batch_wait_timeout_s": 0.01},
            "deployments": [{
                "name": "Detector",
                "max_ongoing_requests": 2 * bs,
                "autoscaling_config": {"min_replicas": 1, "max_replicas": max(1, settings.gpus),
                                       "target_ongoing_requests": bs},
                "ray_actor_options": {"num_gpus": 1 if gpu else 0, "num_cpus": settings.cpus_per_trial},
            }],
        }],
    }


def _plots(df: pd.DataFrame, out: Path, winner: pd.Series | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ok = df[df["status"].eq("ok") & (df["measured_images_per_s"] > 0)]
    specs = [("batch_size", "measured_images_per_s", "images/s", "Throughput vs batch size"),
             ("measured_images_per_s", "p99_ms", "p99 batch latency (ms)", "p99 latency vs throughput"),
             ("batch_size", "gpu_mem_gib", "peak GPU memory (GiB)", "GPU memory vs batch size")]
    paths = []
    for name, (x, y, ylabel, title) in zip(PLOTS, specs):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
        for precision, part in ok.groupby("precision"):
            if x == "batch_size":  # the best configuration at each batch size
                best = part.groupby("batch_size")[y].max().sort_index()
                ax.plot(best.index, best.values, marker="o", label=str(precision))
            else:
                ax.scatter(part[x], part[y], label=str(precision), alpha=0.8)
        if winner is not None and x != "batch_size":
            ax.scatter([winner[x]], [winner[y]], marker="*", s=250, c="gold", edgecolors="k", label="winner", zorder=3)
        if x == "batch_size" and not ok.empty:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(ok["batch_size"].unique()))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if ok.empty:
            ax.text(0.5, 0.5, "no successful trials", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel="batch size" if x == "batch_size" else "images/s", ylabel=ylabel, title=title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="precision")
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        paths.append(out / name)
    return paths


def _html(df: pd.DataFrame, pngs: list[Path], settings: TuneConfig, summary: str) -> str:
    imgs = "".join(f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                   for p in pngs)
    table = df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.3g}", border=0)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>yoloray tune {html.escape(settings.name)}"
            "</title><style>body{font-family:sans-serif;margin:2em}img{max-width:32%;margin:.3em}"
            "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 6px;border-bottom:1px solid #ddd}"
            f"</style></head><body><h1>yoloray tune: {html.escape(settings.name)}</h1>"
            f"<p>model {html.escape(settings.model)}</p><pre>{html.escape(summary)}</pre>{imgs}{table}</body></html>")


def format_table(df: pd.DataFrame, winner_id: str | None = None) -> str:
    t = df[list(TABLE)].copy()
    t.insert(0, "", ["*" if tid == winner_id else "" for tid in t["trial_id"]])
    t = t.rename(columns={"measured_images_per_s": "img/s", "batch_size": "batch", "channels_last": "ch_last",
                          "reduced_decode": "reduced", "gpu_mem_gib": "mem_gib"})
    return t.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}")


def write_report(results, settings: TuneConfig) -> EngineConfig | None:
    """Write everything listed in the module docstring; print the table; return the winner (or None)."""
    out = Path(settings.out)
    df = trials_frame(results)
    df.to_parquet(out / "trials.parquet", index=False)
    df.to_csv(out / "trials.csv", index=False)
    winner = pick_winner(df, settings)
    pngs = _plots(df, out, winner)
    bounds = (("p99 ms <=", settings.max_p99_ms), ("GPU GiB <=", settings.max_gpu_mem_gib),
              ("fidelity >=", settings.min_fidelity))
    limits = ", ".join(f"{k} {v}" for k, v in bounds if v is not None) or "none"
    engine = None
    if winner is None:
        summary = f"{len(df)} trials; no trial is ok within the limits ({limits})"
    else:
        engine = winner_engine(winner, settings)
        engine.to_yaml(out / "engine.yaml")
        text = yaml.safe_dump(serve_config(engine, settings), sort_keys=False)
        serve_path = Path(settings.serve_config or Path.cwd() / "serve_configs" / f"{settings.name}.yaml")
        serve_path.parent.mkdir(parents=True, exist_ok=True)
        serve_path.write_text(text)
        (out / "serve.yaml").write_text(text)
        summary = (f"{len(df)} trials; limits: {limits}\nwinner {winner['trial_id']}: "
                   f"{winner['images_per_s']:.1f} images/s, p99 {winner['p99_ms']:.1f} ms, "
                   f"{winner['gpu_mem_gib']:.2f} GiB, fidelity {winner['fidelity']:.3f}\n"
                   f"engine: {out / 'engine.yaml'}\nserve config: {serve_path} (serve run {serve_path})")
    (out / "report.html").write_text(_html(df, pngs, settings, summary))
    print(format_table(df, None if winner is None else winner["trial_id"]))
    print(summary)
    print(f"report: {out / 'report.html'}")
    return engine
