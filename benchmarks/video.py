"""Video end to end on one GPU: the decoders alone, the usual peers, and `yoloray infer`, on the same clips.

    python benchmarks/video.py --out $OUT            (on the H200; see benchmarks/README.md)
    python benchmarks/video.py --quick --out /tmp/v  (a smoke run: tiny clips, anywhere, CPU included)

Data, generated in the run: `--unique` 1920x1080 inspection-line frames rendered and encoded in parallel
processes (one per file) as `--files` H.264 mp4s (libx264 veryfast, a keyframe every second, B-frames; `--encoding` for others) and the
same as HEVC (libx265, closed GOPs: open-GOP streams are decoded by PyAV, vision/decoders/nvdec.py); the files are repeated as hard links until a folder holds `--frames` frames (distinct
keys, the same decode and model work per frame). All model rows use the same YOLOv8s random weights.
Rows (frames/s):
  (1) NVDEC alone: PyNvVideoCodec, one decoder per thread, 14 and 28 threads, segments read through and by
      index, NV12 -> fp16 model input on the GPU included (and, for H.264, into full-size RGB: the reference
      conversion)
  (2) PyAV (FFmpeg) CPU decode alone to BGR, one process per core, one thread each
  (3) ultralytics predict on the files (batch 32, half): the median of 3 passes of `--peer-frames` frames
  (4) Ray Data's `read_videos` docs pattern (needs decord; a row says so when it is missing)
  (5) `yoloray infer` end to end, files -> Parquet, actor start included, with its steady rate: hand-set
      configurations through `run_job`, and `auto`: `yoloray infer FOLDER --out O --model M` with no other flag
      through the command line (the resolved default profile, recorded in the row)
plus the ratios of the best (5) to the others and a per-stage breakdown of the Detector on NVDEC frames
(synchronized stages, ms per frame). A row that cannot run prints why instead of stopping the run. Prints a
table last; writes video.json under --out. `--scaling CONFIG` (a (5) name or `auto`): every row sees one GPU (Ray
started with num_gpus=1), then Ray is restarted with every GPU of the machine and CONFIG runs again on the first
of --codecs: the scaling efficiency, (frames/s on N GPUs) / (N x frames/s on one), end to end and steady (skipped
with fewer than 2 GPUs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402
from _common import cli_infer, describe, init_ray, scaling  # noqa: E402

RESULTS: list[dict] = []
GPU = torch.cuda.is_available()
_SPAWN = multiprocessing.get_context("forkserver")  # no fork of a process that holds a CUDA context


def row(name: str, frames: int, seconds: float, **extra) -> dict:
    end = time.time()  # the row's window, for benchmarks/host_watch.py (rows are timed as they end)
    r = {"row": name, "frames": frames, "seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 1),
         "t_start": end - seconds, "t_end": end, **extra}
    RESULTS.append(r)
    print(f"  -> {name}: {r['frames_per_s']:,} frames/s ({frames} in {seconds:.1f} s)", flush=True)
    return r


def skipped(name: str, why: str) -> None:
    RESULTS.append({"row": name, "skipped": why})
    print(f"  -> {name}: skipped ({why})", flush=True)


# ------------------------------------------------------------------------------------------------------ data
# How the H.264 clips are encoded (libx264 options over write_clip's veryfast, crf 23, keyframe every 30 frames).
# NVDEC's rate depends on the stream, not only on its size: `--encoding` picks one for every row of a run.
ENCODINGS = {
    "veryfast": {},  # B-frames (3, adaptive), CABAC: the rows of every session before the ninth
    "no-bframes": {"bf": "0"},  # what IP cameras write: no B-frames (they add latency), else the same
    "medium": {"preset": "medium"},  # libx264's default preset: 3 reference frames, B-frames, more motion search
}


def _folder(stem: str, encoding: str) -> str:
    """A work folder's name for `encoding` (the default keeps the names of the sessions before encodings)."""
    return stem if encoding == "veryfast" else f"{stem}-{encoding}"


def passes(frames_per_pass: int) -> int:
    """Passes over the clips for a decode-only row: at least 3, and at least 12,000 frames."""
    return max(3, -(-12_000 // max(1, frames_per_pass)))


def _encode_file(args: tuple) -> int:
    from yoloray.data.scene import render_video_frame
    from yoloray.data.synthetic import write_clip

    bases, k, first, n, w, h, total, codecs = args
    frames = [render_video_frame(11, first + i, w, h, total)[0] for i in range(n)]
    for encoding, base in bases.items():
        for codec in codecs:
            write_clip(Path(base) / codec / f"clip{k:03d}.mp4", frames, w, h, 30, codec, gop=30, crf=23,
                       open_gop=False, x264=ENCODINGS[encoding])
    return n


def make_clips(work: Path, unique: int, files: int, w: int, h: int, codecs: tuple[str, ...] = ("h264", "hevc"),
               encodings: tuple[str, ...] = ("veryfast",)) -> dict[str, dict[str, list[Path]]]:
    """encoding -> codec -> `files` clips of `unique` rendered frames (rendered once, encoded as each of ENCODINGS
    says) under `work`, kept for a rerun with the same codecs."""
    bases = {e: work / _folder("clips", e) for e in encodings}
    todo = {e: str(b) for e, b in bases.items()
            if not (b / "done").exists() or (b / "done").read_text() != ",".join(codecs)}
    if todo:
        for base in todo.values():
            shutil.rmtree(base, ignore_errors=True)
            for codec in codecs:
                (Path(base) / codec).mkdir(parents=True)
        per = unique // files
        jobs = [(todo, k, k * per, per, w, h, unique, codecs) for k in range(files)]
        t = time.perf_counter()
        with ProcessPoolExecutor(min(files, os.cpu_count() or 1), mp_context=_SPAWN) as pool:
            list(pool.map(_encode_file, jobs))
        for e in todo:
            (bases[e] / "done").write_text(",".join(codecs))
            mbit = sum(f.stat().st_size for f in (bases[e] / "h264").glob("*.mp4")) * 8 * 30 / (files * per) / 1e6
            print(f"data: {files} x {per} frames of {w}x{h} as {', '.join(codecs)} ({e}: H.264 {mbit:.1f} Mbit/s) "
                  f"in {time.perf_counter() - t:.0f} s", flush=True)
    return {e: {c: sorted((b / c).glob("*.mp4")) for c in codecs} for e, b in bases.items()}


def repeat_clips(clips: list[Path], folder: Path, frames: int, per_clip: int) -> tuple[Path, int]:
    """`folder` with the clips repeated as hard links (distinct names) until it holds >= `frames` frames."""
    folder.mkdir(parents=True, exist_ok=True)
    n = copies = 0
    while n < frames:
        for c in clips:
            if n >= frames:
                break
            dst = folder / f"copy{copies:04d}-{c.name}"
            if not dst.exists():
                try:
                    os.link(c, dst)
                except OSError:
                    shutil.copyfile(c, dst)
            n += per_clip
        copies += 1
    return folder, n


def units_of(paths: list[Path]) -> list[dict]:
    """The clips' keyframe segments (indexed here: the NVDEC/PyAV-alone rows and the stage breakdown take them)."""
    from yoloray.data.inputs import SourceOptions
    from yoloray.data.units import list_units
    from yoloray.data.video_index import segments_of

    options = SourceOptions()
    return list(segments_of(list_units([str(p) for p in paths], options), options))


# ------------------------------------------------------------------------------------------------------ rows
def nvdec_alone(codec: str, units: list[dict], threads: int, fused: bool = True, read: str = "sequential") -> None:
    """Decode only, every segment of the clips over and over (at least 12,000 frames): `fused`, into fp16 model
    input (what the actor runs: vision/decoders/nv12.py); else into full-size RGB (the reference conversion,
    before the letterbox); `read`: NvdecDecoder's read (segments read through, or by frame index)."""
    from yoloray.vision.decoders.nvdec import NvdecDecoder, nvdec_missing

    name = (f"(1) NVDEC alone {codec}, {threads} threads, {'fused NV12 -> fp16 input' if fused else 'full-size RGB'}"
            f", {read}")
    if (why := nvdec_missing()) is not None:
        return skipped(name, why)
    dec = NvdecDecoder(torch.device("cuda"), (384, 640), 128, torch.float16 if fused else None, read=read)
    repeats = passes(sum(len(u["keep"]) for u in units))

    def run(unit: dict) -> int:
        with _thread_stream():  # one CUDA stream per thread, as the Detector gives each call
            n = sum(len(b) for b in dec.batches(unit) if b.device_groups)
            torch.cuda.current_stream().synchronize()
            return n

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, units[:threads]))  # one decoder session per thread, opened before timing
        t = time.perf_counter()
        frames = sum(pool.map(run, units * repeats))
    row(name, frames, time.perf_counter() - t, codec=codec, threads=threads, fused=fused, read=read)


_STREAMS = {}


def _thread_stream():
    import threading

    s = _STREAMS.setdefault(threading.get_ident(), torch.cuda.Stream())
    return torch.cuda.stream(s)


def _pyav_segment(unit: dict) -> int:
    from yoloray.vision.decoders.pyav import decode_segment

    return sum(1 for _, im, err in decode_segment(unit) if err is None)


def pyav_alone(codec: str, units: list[dict]) -> None:
    procs = os.cpu_count() or 1
    with ProcessPoolExecutor(procs, mp_context=_SPAWN) as pool:
        list(pool.map(_pyav_segment, units[:procs]))
        t = time.perf_counter()
        frames = sum(pool.map(_pyav_segment, units))
    row(f"(2) PyAV CPU decode alone {codec}, {procs} processes x 1 thread", frames, time.perf_counter() - t,
        codec=codec, processes=procs)


def ultralytics_predict(weights: Path, clips: list[Path], frames: int, imgsz: tuple, repeats: int = 3) -> None:
    """Row (3), `repeats` times over the clips in turn until `frames` (whole clips); the row is the median rate.
    The peer decodes on the host's CPUs, whose speed varied by up to 1.8x between calls on one lent machine
    (2026-12-02), so a single pass made the ratio to (5) as noisy."""
    import statistics
    from itertools import cycle

    from ultralytics import YOLO

    model = YOLO(str(weights))
    kw = {"batch": 32, "half": GPU, "imgsz": list(imgsz), "stream": True, "verbose": False, "device": 0 if GPU else "cpu"}
    sum(1 for _ in model.predict(str(clips[0]), **kw))  # warm
    rates, n = [], 0
    for _ in range(repeats):
        t, n = time.perf_counter(), 0
        for c in cycle(clips):
            n += sum(1 for _ in model.predict(str(c), **kw))
            if n >= frames:
                break
        rates.append(n / (time.perf_counter() - t))
    rate = statistics.median(rates)
    row(f"(3) ultralytics predict(clip, batch=32, half), median of {repeats}", n, n / rate,
        rates=[round(r, 1) for r in rates])


class DocsPatternPredictor:
    def __init__(self, weights: str):
        from ultralytics import YOLO

        self.model = YOLO(weights)

    def __call__(self, batch):
        results = self.model.predict(list(batch["frame"]), half=GPU, verbose=False)
        return {"n_boxes": [len(r.boxes) for r in results]}


def ray_docs_pattern(weights: Path, clips: list[Path], frames: int) -> None:
    name = "(4) Ray Data docs pattern (read_videos -> map_batches YOLO)"
    try:
        import decord  # noqa: F401
    except ImportError as e:
        return skipped(name, f"ray.data.read_videos needs decord, not installed here ({e})")
    import ray

    t = time.perf_counter()
    ds = ray.data.read_videos([str(c) for c in clips]).limit(frames)
    ds = ds.map_batches(DocsPatternPredictor, fn_constructor_kwargs={"weights": str(weights)},
                        compute=ray.data.ActorPoolStrategy(size=1), num_gpus=1 if GPU else 0, batch_size=32)
    row(name, ds.count(), time.perf_counter() - t)


def yoloray_infer(name: str, weights: Path, folder: Path, out: Path, engine: dict, actor: dict, gpus: int = 1) -> dict:
    """A hand-set (5) row through `run_job`. `actor` is per GPU: a set number of actors is multiplied by `gpus`
    (without one, the pool fills the GPUs Ray has)."""
    from yoloray.batch import ActorOptions, run_job
    from yoloray.data.units import list_units
    from yoloray.observe.job_observer import JobObserver

    cfg = profile_of(weights, engine)
    if "actors" in actor:
        actor = {**actor, "actors": actor["actors"] * gpus}
    dest = out / name
    shutil.rmtree(dest, ignore_errors=True)
    t = time.perf_counter()
    units = list_units([str(folder)])  # as `yoloray infer` does: listing counts, the observer reports start-up
    with JobObserver(units, None, "bench") as obs:
        summary = run_job([str(folder)], str(dest), cfg, ActorOptions(**actor, observe=obs.actor_observe),
                          units=units, progress=obs.progress)
    seconds = time.perf_counter() - t
    report = obs.report()
    print(report, flush=True)
    run = seconds - summary.first_result_s
    steady = summary.images / run if run > 1.0 else None
    shutil.rmtree(dest, ignore_errors=True)
    return row(f"(5) yoloray infer {name}" + (f" on {gpus} GPUs" if gpus > 1 else ""), summary.images, seconds,
               config=name, engine=engine, actor=actor, startup_s=round(summary.first_result_s, 1),
               steady_frames_per_s=round(steady, 1) if steady else None, errors=sum(summary.errors.values()),
               nvdec_fallback_lines=nvdec_fallbacks(), actor_report=report, gpus=gpus)


def yoloray_cli(name: str, weights: Path, folder: Path, out: Path, gpus: int = 1) -> dict:
    """The `auto` (5) row: `yoloray infer FOLDER --out O --model M`, no other flag, through the command line in
    this process (on the Ray that is up, `gpus` GPUs); the resolved profile is in the row."""
    res = cli_infer(folder, out / "auto", weights, "frames")
    return row(f"(5) yoloray infer {name} (no flags: auto profile)" + (f" on {gpus} GPUs" if gpus > 1 else ""),
               res.pop("units"), res.pop("seconds"), config=name, nvdec_fallback_lines=nvdec_fallbacks(), gpus=gpus,
               **res)


def profile_of(weights: Path, engine: dict):
    """A (5) row's engine as a Profile: a hand-set row's fields over the exact path (unset knobs off, as before
    profiles); the `auto` row's resolved profile (in sections) as it ran."""
    from yoloray.config import Profile
    from yoloray.profile import EXACT_PATH

    return Profile(model=str(weights), **(engine if "engine" in engine else {**EXACT_PATH, **engine}))


def nvdec_fallbacks() -> int:
    """Lines so far in this Ray session's worker logs saying NVDEC gave a segment to PyAV (the actors' log: a
    (5) row must not quietly run on the CPU)."""
    return sum(f.read_text(errors="replace").count("NVDEC could not decode")
               for f in Path("/tmp/ray/session_latest/logs").glob("worker-*"))


def stage_breakdown(weights: Path, units: list[dict], engine: dict, frames: int) -> None:
    """The Detector on decoded segments in this process, stages synchronized (they add up), ms per frame."""
    import pyarrow as pa

    from yoloray.batch.video import SegmentRunner
    from yoloray.detector import Detector

    det = Detector(profile_of(weights, engine), profile=True).warmup()
    runner = SegmentRunner(det, det.key)
    picked, n = [], 0
    for u in units:
        picked.append(u)
        n += len(u["keep"])
        if n >= frames:
            break
    table = pa.table({"source": [u["source"] for u in picked], "segment": [json.dumps(u) for u in picked]})
    runner.run(table.slice(0, 1))  # warm the decoder
    t = time.perf_counter()
    out, timings, _ = runner.run(table)
    wall = time.perf_counter() - t
    per = {k: round(1000 * v / out.num_rows, 3) for k, v in timings.items()}
    RESULTS.append({"row": f"stage breakdown ({type(runner.decoder).__name__}, ms per frame, synchronized)",
                    "engine": engine, "ms_per_frame": per, "frames_per_s_synchronized": round(out.num_rows / wall, 1)})
    print(f"  -> stages ms/frame: {per}", flush=True)


# ------------------------------------------------------------------------------------------------------ main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=100_000, help="frames of the (5) job (hard-linked repeats)")
    p.add_argument("--unique", type=int, default=3000, help="unique frames rendered and encoded")
    p.add_argument("--files", type=int, default=16, help="clips per codec")
    p.add_argument("--peer-frames", type=int, default=3000, help="frames for the slow peer rows (3) and (4)")
    p.add_argument("--model", default="yolov8s.yaml")
    p.add_argument("--work", default="/tmp/yoloray-video")
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    p.add_argument("--skip", default="", help="comma list of rows to skip: nvdec,pyav,predict,docs,infer,stages")
    p.add_argument("--configs", default="",
                   help="comma list of the (5) configurations to run (default: all): the hand-set names, and auto "
                        "(`yoloray infer` with no flag but the model, through the command line)")
    p.add_argument("--scaling", help="a (5) configuration (a hand-set name or auto) to run on one GPU (every other "
                                     "row sees one GPU) and then on all GPUs of the machine, on the first of "
                                     "--codecs: the scaling efficiency, end to end and steady")
    p.add_argument("--codecs", default="h264,hevc", help="codecs of rows (1), (2) and (5) (H.264 is always encoded: row (3) runs on it)")
    p.add_argument("--encoding", default="veryfast", choices=sorted(ENCODINGS),
                   help="how the H.264 clips are encoded (every row runs on them): veryfast (libx264 veryfast, "
                        "B-frames; every session before the ninth), no-bframes (the same without B-frames, as IP "
                        "cameras write), medium (libx264's default preset)")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny clips and jobs (any machine)")
    a = p.parse_args()
    w, h = 1920, 1080
    if a.quick:
        a.frames, a.unique, a.files, a.peer_frames, w, h = 96, 24, 2, 24, 320, 192
    skip = set(a.skip.split(","))
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name(0) if GPU else 'cpu'}; CPUs: {os.cpu_count()}", flush=True)
    clips = make_clips(work, a.unique, a.files, w, h, tuple(dict.fromkeys(["h264", *a.codecs.split(",")])),
                       (a.encoding,))[a.encoding]
    per_clip = a.unique // a.files
    from yoloray.engines.torch_backend import save_random_checkpoint

    weights = save_random_checkpoint(a.model, work / "yolov8s-random.pt")
    units = {c: units_of(clips[c]) for c in clips}
    imgsz = (384, 640) if not a.quick else (192, 320)
    fast = {"precision": "fp16", "channels_last": True, "cuda_graph": True, "imgsz": imgsz, "batch_size": 128,
            "micro_batch": 32, "device": "cuda"} if GPU else {"imgsz": imgsz, "batch_size": 8, "device": "cpu"}
    configs = {  # name -> (engine fields, actor options)
        "pyav-cpu": ({**fast, "decode": "cpu"}, {"calls_per_actor": 2}),
        "nvdec-1actor-8calls": ({**fast, "decode": "gpu"}, {"calls_per_actor": 8}),
        "nvdec-1actor-14calls": ({**fast, "decode": "gpu"}, {"calls_per_actor": 14}),
        "nvdec-1actor-28calls": ({**fast, "decode": "gpu"}, {"calls_per_actor": 28}),
        "nvdec-1actor-42calls": ({**fast, "decode": "gpu"}, {"calls_per_actor": 42}),
        "nvdec-2actors-4calls": ({**fast, "decode": "gpu"}, {"actors": 2, "gpus_per_actor": 0.5, "calls_per_actor": 4}),
        # the decoder threads of one process share its interpreter: the same 28 decoders over 2 and 4 processes
        "nvdec-2actors-14calls": ({**fast, "decode": "gpu"}, {"actors": 2, "gpus_per_actor": 0.5, "calls_per_actor": 14}),
        "nvdec-4actors-7calls": ({**fast, "decode": "gpu"}, {"actors": 4, "gpus_per_actor": 0.25, "calls_per_actor": 7}),
        # the model compiled by Inductor (about twice the CUDA-graph engine's images/s alone: benchmarks/README.md)
        "nvdec-compile-1actor-28calls": ({**fast, "backend": "torch-compile", "cuda_graph": False, "decode": "gpu"},
                                         {"calls_per_actor": 28}),
        "hybrid.2-1actor-8calls": ({**fast, "decode": "hybrid", "hybrid_cpu_share": 0.2}, {"calls_per_actor": 8}),
        # NVDEC's one actor saturates near 3,600 frames/s with 28-42 calls: a CPU share beside it on the idle cores
        "hybrid.15-1actor-28calls": ({**fast, "decode": "hybrid", "hybrid_cpu_share": 0.15}, {"calls_per_actor": 28}),
        # NVDEC's engines were busy ~100% of the steady state in every NVDEC row (host_watch.py, 2026-12-02), the
        # host's CPUs ~20%: a CPU share sized to the cores, beside the two-actor layout
        **{f"hybrid.{k}-2actors-14calls": ({**fast, "decode": "hybrid", "hybrid_cpu_share": k / 10},
                                           {"actors": 2, "gpus_per_actor": 0.5, "calls_per_actor": 14}) for k in (2, 3)},
    }
    asked = [n for n in a.configs.split(",") if n] + ([a.scaling] if a.scaling else [])
    if unknown := [n for n in asked if n not in configs and n != "auto"]:
        p.error(f"unknown --configs/--scaling {', '.join(unknown)}; known: auto, {', '.join(configs)}")
    if not GPU:
        configs = {"pyav-cpu": configs["pyav-cpu"]}
        if a.scaling not in (None, "auto", *configs):
            p.error(f"--scaling {a.scaling}: not a configuration without a GPU (auto, {', '.join(configs)})")
    names = [*configs, "auto"]  # the (5) rows: the hand-set ones, then the command with no flags
    if a.configs:
        names = [n for n in names if n in a.configs.split(",")]
    steps = []
    for codec in clips:  # H.264 always (row (3) runs on it), and the codecs of the (5) jobs
        for threads in (14, 28):
            for read in ("sequential", "index"):
                steps.append(("nvdec", lambda c=codec, k=threads, r=read: nvdec_alone(c, units[c], k, read=r)))
        if codec == "h264":
            steps.append(("nvdec", lambda c=codec: nvdec_alone(c, units[c], 7, fused=False)))
        steps.append(("pyav", lambda c=codec: pyav_alone(c, units[c])))
    steps.append(("predict", lambda: ultralytics_predict(weights, clips["h264"], a.peer_frames, imgsz)))

    def start_ray():
        import ray

        if not ray.is_initialized():
            init_ray(1 if a.scaling and GPU else None)  # scaling run: every row but the last sees one GPU

    steps.append(("docs", lambda: (start_ray(), ray_docs_pattern(weights, clips["h264"], a.peer_frames))))
    jobs = {codec: repeat_clips(clips[codec], work / f"{_folder('job', a.encoding)}-{codec}", a.frames, per_clip)
            for codec in a.codecs.split(",")}

    def run_config(name: str, codec: str, gpus: int = 1) -> dict:
        """The (5) row of configuration `name` on the `codec` job, on the Ray that is up (`gpus` GPUs)."""
        start_ray()
        folder, n = jobs[codec]
        label = f"{name} {codec} {n:,} frames"
        if name == "auto":
            return yoloray_cli(label, weights, folder, work / "out", gpus)
        engine, actor = configs[name]
        if not GPU:
            actor = {**actor, "gpus_per_actor": 0}
        return yoloray_infer(label, weights, folder, work / "out", engine, actor, gpus)

    for codec in jobs:
        for name in names:
            if codec == "hevc" and name != names[0] and not name.startswith("nvdec-1"):
                continue  # HEVC: the CPU row and the NVDEC one-actor rows
            steps.append(("infer", lambda nm=name, c=codec: run_config(nm, c)))
    if a.scaling:
        codec, n = next(iter(jobs)), next(iter(jobs.values()))[1]
        steps.append(("scaling", lambda: scaling(f"{a.scaling} {codec} {n:,} frames",
                                                 lambda gpus: run_config(a.scaling, codec, gpus), RESULTS, "frames")))
    for name, step in steps:
        if name in skip:
            continue
        try:
            step()
        except Exception:
            traceback.print_exc()
            RESULTS.append({"row": name, "error": traceback.format_exc(limit=3)})
        (out / "video.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    infer_rows = [r for r in RESULTS if r["row"].startswith("(5)") and "frames_per_s" in r and r["gpus"] == 1]
    if infer_rows and "stages" not in skip:
        best = max(infer_rows, key=lambda r: r["frames_per_s"])
        try:
            stage_breakdown(weights, units["h264"], best["engine"], 2048 if not a.quick else 16)
        except Exception:
            traceback.print_exc()
            RESULTS.append({"row": "stages", "error": traceback.format_exc(limit=3)})
    (out / "video.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    print_table(infer_rows)
    return 0


def print_table(infer_rows: list[dict]) -> None:
    print("\n| row | frames | s | frames/s | steady frames/s | startup s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in RESULTS:
        if "frames_per_s" in r:
            print(f"| {r['row']} | {r['frames']:,} | {r['seconds']} | {r['frames_per_s']:,} | "
                  f"{r.get('steady_frames_per_s') or ''} | {r.get('startup_s', '')} |")
        elif "skipped" in r or "error" in r:
            print(f"| {r['row']} | - | - | {'skipped: ' + r['skipped'] if 'skipped' in r else 'ERROR (see video.json)'} | | |")
    for r in RESULTS:
        if "ms_per_frame" in r:
            print(f"\n{r['row']}: {r['ms_per_frame']}")
        if "efficiency" in r:
            print(f"\n{describe(r)}")
    if not infer_rows:
        return
    best = max(infer_rows, key=lambda r: r["frames_per_s"])
    print(f"\nbest (5): {best['row']} = {best['frames_per_s']:,} frames/s")
    for r in RESULTS:
        if "frames_per_s" in r and r["row"][:3] in ("(1)", "(2)", "(3)", "(4)"):
            print(f"  (5) / {r['row']}: {best['frames_per_s'] / r['frames_per_s']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
