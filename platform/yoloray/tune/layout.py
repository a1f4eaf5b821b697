"""The layout level of `yoloray tune`: real Ray Data batch jobs over a sample of the user's inputs.

The engine level (trial.py) measures engine knobs inside one process. Most of a batch job's speed, though, is
layout: actors per GPU, concurrent calls per actor, where JPEGs are decoded (all on the GPU, or a CPU share in
Ray tasks upstream), batches per call. So, like Triton Model Analyzer's model-then-runtime search, the best few
engine configurations are each run as `run_job` (what `yoloray infer` runs) over the same sample, once per
layout, and so is the default profile (every `auto` resolved), which gives the winner's gain over it.

The sample: the engine level's inputs (a folder of the user's images, the first images of `--archive`, or
generated frames) written as tar shards of 100 and repeated (hard links: distinct keys, the same pixels) up to
`layout_images` members, so a run is long enough for a steady rate. An archive of videos: its video files,
repeated the same way up to `layout_images` kept frames (tune/archive.py). A run's figures: images/s end to end
(start-up included) and steady (images / time after the first result, as benchmarks/e2e.py).

One run is not enough to rank the leaders: start-up is most of a sample job (15-20 s of ~20-25 s at 20,000
members on one H200), and the same profile's end-to-end figure moved by up to 13% between two sweeps of one
session, more than the best layouts differ (benchmarks/README.md, issue 16). So the `CONFIRM_TOP` best runs of
the first pass are run `CONFIRM_RUNS` times more, and a layout's figures are the median of its runs
(`layout_summary`), which the winner is picked by.

Layout points: a space file's layout knobs (space.LAYOUT_KNOBS) as written, every other layout field at the
engine configuration's resolved value; with no space file, `default_layouts` (which also places the decode:
nvJPEG alone or with a CPU share). A point that cannot run (too many actors for the
cluster) is recorded with its reason, and the level goes on.
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from yoloray.config import ConfigError, Profile
from yoloray.tune.space import LAYOUT_KNOBS

COLUMNS = (*LAYOUT_KNOBS, "decode")  # what a layout row records of its profile
PER_SHARD = 100
CONFIRM_TOP = 2  # the best runs of the first pass that run again
CONFIRM_RUNS = 2  # how many times more each: a median of three
FIGURES = ("images_per_s", "steady_images_per_s", "first_result_s")  # a layout's figures, medians of its runs


def default_layouts(cuda: bool, video: str | None = None, nvdec_engines: int | None = None) -> dict[str, tuple]:
    """The default layout grid. Stills on CUDA: 2-4 actors per GPU x 2 calls, nvJPEG alone or with 15% of the
    JPEGs decoded by CPU tasks (benchmarks/README: 3 actors x 2 calls led, with 1 actor far behind and 3 calls
    no better than 2). CPU: one actor with 1 or 2 concurrent calls, stills or video.
    Video (`video`: the decode the engines resolved) on CUDA, decode as resolved: on NVDEC (`gpu`) each call is
    a decoder session, so 1 or 2 actors x 1 or 2 calls per NVDEC engine (the default, 2 actors x 2 calls per
    engine, led 1 actor x 4 calls per engine on 7 engines: profile.py); with PyAV in upstream CPU tasks (`cpu`),
    1 or 2 actors x 2 calls. Not measured on a GPU by the tuner yet."""
    if cuda and video == "gpu":
        engines = nvdec_engines or 4
        return {"actors_per_gpu": (1, 2), "calls_per_actor": (engines, 2 * engines)}
    if cuda and video:
        return {"actors_per_gpu": (1, 2), "calls_per_actor": (2,)}
    if cuda:
        return {"actors_per_gpu": (2, 3, 4), "calls_per_actor": (2,), "decode": ("gpu", "hybrid")}
    return {"calls_per_actor": (1, 2)}


def layout_points(space: dict[str, Any] | None, cuda: bool, video: str | None = None,
                  nvdec_engines: int | None = None) -> list[dict[str, Any]]:
    """Every layout point: the grid over the listed layout knobs (a space file), else the default grid."""
    listed = {k: v for k, v in (space or {}).items() if k in LAYOUT_KNOBS}
    grid = ({k: tuple(v) if isinstance(v, list) else (v,) for k, v in listed.items()} if space
            else default_layouts(cuda, video, nvdec_engines))
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else [{}]


def write_sample(images: list[bytes], folder: Path, total: int) -> list[str]:
    """`images` as tar shards of PER_SHARD members in `folder`, hard-linked under new names until `total`
    members; returns the shard paths (a second call reuses what is there)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = images[:total]
    unique = []
    for s in range(0, len(images), PER_SHARD):
        path = folder / f"unique-{s // PER_SHARD:05d}.tar"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            with tarfile.open(tmp, "w") as tar:
                for i, data in enumerate(images[s : s + PER_SHARD], start=s):
                    info = tarfile.TarInfo(f"{i:06d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            os.replace(tmp, path)
        unique.append((path, min(PER_SHARD, len(images) - s)))
    return repeat_links(unique, folder, total)


def repeat_links(unique: list[tuple[Path, int]], folder: Path, total: int) -> list[str]:
    """The (file, members) in `unique`, then hard links to them under new names in `folder` (distinct keys,
    the same content), round after round until `total` members; the paths in run order."""
    paths, members = [], 0
    for r in itertools.count():
        for path, n in unique:
            if members >= total:
                return paths
            link = path if r == 0 else folder / f"repeat-{r:04d}-{path.name}"
            if not link.exists():
                os.link(path, link)
            paths.append(str(link))
            members += n
    return paths  # not reached


def run_layout(profile: Profile, shards: list[str], work: Path) -> dict[str, Any]:
    """One batch job over the sample with `profile`; its figures (the output is removed afterwards)."""
    from yoloray.batch import JobError, run_job

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        summary = run_job(shards, str(out), profile)
    except (ConfigError, JobError) as e:
        return {"status": "failed", "reason": str(e)[:500]}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    seconds = time.perf_counter() - t0
    after_first = max(summary.seconds - summary.first_result_s, 1e-9)
    return {"status": "ok", "reason": "", "images": summary.images, "seconds": round(seconds, 2),
            "images_per_s": summary.images / seconds, "steady_images_per_s": summary.images / after_first,
            "first_result_s": round(summary.first_result_s, 2), "errors": sum(summary.errors.values())}


def layout_label(point: dict[str, Any]) -> str:
    short = {"actors_per_gpu": "actors", "calls_per_actor": "calls", "batches_per_call": "per_call",
             "decode_threads": "threads", "decode": "decode", "hybrid_cpu_share": "cpu_share"}
    return " ".join(f"{short[k]}={v}" for k, v in point.items()) or "as resolved"


def run_level(engines: list[tuple[str, Profile]], default: Profile, points: list[dict], shards: list[str],
              work: Path, done: dict[tuple[str, str, int], dict] | None = None, log=print, save=None,
              confirm: int = CONFIRM_TOP, repeats: int = CONFIRM_RUNS) -> list[dict]:
    """Every (engine, layout point) run, plus the default profile as it resolves; then the `confirm` best of
    those runs (end to end) run `repeats` times more (see the module doc). One row per run, `run` numbering a
    layout's runs from 1. `done`: rows of an earlier, interrupted level (by engine, layout label and run), kept
    instead of run again; `save(rows)` is called after each run."""
    done = done or {}
    rows: list[dict] = []
    runs = [("default", "default profile", default)]
    for engine_id, engine in engines:
        for point in points:
            try:
                profile = engine.replace(**point)
            except ConfigError as e:
                rows.append({"engine": engine_id, "layout": layout_label(point), "run": 1, **point,
                             "status": "failed", "reason": str(e)[:500]})
                continue
            runs.append((engine_id, layout_label(point), profile))

    def measure(engine_id: str, label: str, profile: Profile, run: int) -> dict:
        row = done.get((engine_id, label, run))
        if row is None:
            figures = run_layout(profile, shards, work)
            row = {"engine": engine_id, "layout": label, "run": run, **{k: profile.flat()[k] for k in COLUMNS},
                   **figures, "profile": profile.to_yaml()}
            log(f"  layout {engine_id} {label}{f' (run {run})' if run > 1 else ''}: {figures['status']}, "
                f"{figures.get('images_per_s', 0):.1f} images/s end to end, "
                f"{figures.get('steady_images_per_s', 0):.1f} steady {figures.get('reason', '')}".rstrip())
        rows.append(row)
        if save is not None:
            save(rows)
        return row

    first = [(measure(engine_id, label, profile, 1), profile) for engine_id, label, profile in runs]
    ok = sorted(((r, p) for r, p in first if r["status"] == "ok"), key=lambda rp: -rp[0]["images_per_s"])
    if len(ok) > 1:  # a single candidate wins whatever its runs give
        for row, profile in ok[:confirm]:
            for run in range(2, repeats + 2):
                measure(row["engine"], row["layout"], profile, run)
    return rows


def layout_summary(rows):
    """One row per (engine, layout), in the order of their first runs: the median of its ok runs' FIGURES, `runs` (how many),
    and the rest (layout knobs, status, reason, profile) of its first run."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        return df
    keys = ["engine", "layout"]
    out = df.drop_duplicates(keys).set_index(keys)  # run_level appends a layout's first run before its others
    figures = [c for c in FIGURES if c in df]
    ok = df[df["status"] == "ok"]
    if figures and not ok.empty:
        medians = ok.groupby(keys, sort=False)[figures].median()
        out.loc[medians.index, figures] = medians
    out["runs"] = df.groupby(keys, sort=False).size()
    return out.drop(columns="run", errors="ignore").reset_index()


def saved_runs(rows: list[dict]) -> dict[tuple[str, str, int], dict]:
    """Rows of an earlier, interrupted level by (engine, layout label, run): run_level's `done`. A row saved
    before runs were numbered is run 1."""
    def run(row: dict) -> int:
        number = row.get("run")
        return 1 if number is None or number != number else int(number)  # NaN: a column other rows filled

    return {(r["engine"], r["layout"], run(r)): r for r in rows}
