"""The report's plots (matplotlib, Agg): each names every knob the sweep varied, so no choice is hidden.

    trials.png                  images/s of every ok engine trial, labelled with its varied knobs, the spread
                                of its measurement windows as an error bar, the winner's engine marked
    p99_vs_throughput.png       p99 batch latency vs images/s; the Pareto front (no other trial is both faster
                                and lower in p99) joined and labelled
    memory_vs_batch.png         peak GPU memory vs batch size, one line per precision
    layout.png                  the layout level: images/s end to end and steady per (engine, layout) run, the
                                default profile and the winner marked
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PLOTS = ("trials.png", "p99_vs_throughput.png", "memory_vs_batch.png", "layout.png")


def varied(df: pd.DataFrame, knobs) -> list[str]:
    """The knobs that take more than one value among the trials."""
    return [k for k in knobs if k in df and df[k].astype(str).nunique() > 1]


def label(row, knobs: list[str]) -> str:
    return f"{row['trial_id']}: " + " ".join(f"{k}={row[k]}" for k in knobs) if knobs else str(row["trial_id"])


def pareto(df: pd.DataFrame) -> pd.DataFrame:
    """Rows no other row beats on both images/s (higher) and p99 (lower), by images/s."""
    rows = df.sort_values(["measured_images_per_s", "p99_ms"], ascending=[False, True])
    front, best_p99 = [], float("inf")
    for i, r in rows.iterrows():
        if r["p99_ms"] < best_p99:
            front.append(i)
            best_p99 = r["p99_ms"]
    return df.loc[front].sort_values("measured_images_per_s")


def _figure(height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(8, height), dpi=100)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def trials_plot(ok: pd.DataFrame, knobs: list[str], winner_id: str | None, path: Path) -> Path:
    ok = ok.sort_values("measured_images_per_s")
    plt, fig, ax = _figure(max(3.0, 0.32 * len(ok) + 1.2))
    if ok.empty:
        ax.text(0.5, 0.5, "no successful trials", ha="center", va="center", transform=ax.transAxes)
    else:
        y = range(len(ok))
        lo = (ok["measured_images_per_s"] - ok["window_min"]).clip(lower=0).fillna(0)
        hi = (ok["window_max"] - ok["measured_images_per_s"]).clip(lower=0).fillna(0)
        colors = ["gold" if t == winner_id else "tab:blue" for t in ok["trial_id"]]
        ax.barh(list(y), ok["measured_images_per_s"], xerr=[lo, hi], color=colors, capsize=3)
        ax.set_yticks(list(y), [label(r, knobs) + (" (winner's engine)" if r["trial_id"] == winner_id else "")
                                for _, r in ok.iterrows()], fontsize=8)
    ax.set(xlabel="images/s (last window; bar: min-max over the trial's windows)", title="Engine level: every trial")
    return _save(plt, fig, path)


def pareto_plot(ok: pd.DataFrame, knobs: list[str], winner_id: str | None, path: Path) -> Path:
    plt, fig, ax = _figure()
    if ok.empty:
        ax.text(0.5, 0.5, "no successful trials", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.scatter(ok["measured_images_per_s"], ok["p99_ms"], alpha=0.5, label="trials")
        front = pareto(ok)
        ax.plot(front["measured_images_per_s"], front["p99_ms"], "o-", c="tab:red", label="Pareto front")
        for _, r in front.iterrows():
            ax.annotate(label(r, knobs), (r["measured_images_per_s"], r["p99_ms"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        win = ok[ok["trial_id"] == winner_id]
        if not win.empty:
            ax.scatter(win["measured_images_per_s"], win["p99_ms"], marker="*", s=250, c="gold", edgecolors="k",
                       label="winner's engine", zorder=3)
        ax.legend()
    ax.set(xlabel="images/s", ylabel="p99 batch latency (ms)", title="p99 latency vs throughput")
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def memory_plot(ok: pd.DataFrame, path: Path) -> Path:
    plt, fig, ax = _figure()
    for precision, part in ok.groupby("precision"):
        best = part.groupby("batch_size")["gpu_mem_gib"].max().sort_index()
        ax.plot(best.index, best.values, marker="o", label=str(precision))
    if ok.empty:
        ax.text(0.5, 0.5, "no successful trials", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.set_xscale("log", base=2)
        ax.legend(title="precision")
    ax.set(xlabel="batch size", ylabel="peak GPU memory (GiB)", title="GPU memory vs batch size")
    ax.grid(True, alpha=0.3)
    return _save(plt, fig, path)


def layout_plot(layout: pd.DataFrame, winner: int | None, path: Path) -> Path:
    ok = layout[layout["status"] == "ok"].reset_index() if "status" in layout else layout  # none ran: no columns
    plt, fig, ax = _figure(max(3.0, 0.4 * len(ok) + 1.2))
    if ok.empty:
        ax.text(0.5, 0.5, "no layout runs" if layout.empty else "no successful layout runs", ha="center",
                va="center", transform=ax.transAxes)
    else:
        y = list(range(len(ok)))
        ax.barh([v - 0.2 for v in y], ok["images_per_s"], height=0.4, label="end to end",
                color=["gold" if i == winner else "tab:blue" for i in ok["index"]])
        ax.barh([v + 0.2 for v in y], ok["steady_images_per_s"], height=0.4, label="steady", color="tab:gray")
        names = [f"{r['engine']}: {r['layout']}" + (" (winner)" if r["index"] == winner else "") for _, r in ok.iterrows()]
        ax.set_yticks(y, names, fontsize=8)
        ax.legend()
    ax.set(xlabel="images/s (batch job over the sample)", title="Layout level: engine x layout, as real batch jobs")
    return _save(plt, fig, path)
