"""Where NVDEC's time goes: one set of clips, several ways of reading them with PyNvVideoCodec, frames/s each.

    python3 benchmarks/nvdec_probe.py --out $OUT    (on a CUDA machine with pynvvideocodec; ~2 minutes)

Clips: `--files` 1920x1080 H.264 mp4s of `--per-file` frames (benchmarks/video.py's, a keyframe every 30 frames,
encoded as each of `--encodings` says: video.py's ENCODINGS), each read 3 times over by `--threads` threads; every
row decodes every frame. Rows (`--rows` picks some), for each encoding:
  index-32 / index-128  yoloray's NvdecDecoder (get_batch_frames_by_index in groups of 32 / 128, fused NV12 ->
                        fp16 model input), the batch job's decoder
  sequential            SimpleDecoder.get_batch_frames(32) from the segment's start, same conversion
  decode only           SimpleDecoder.get_batch_frames(32), no conversion (the decoder's own ceiling)
  whole files           the same, each thread reading whole files instead of segments (no seek)
  decode only, P procs  the same split over processes (one CUDA context each) instead of threads
Prints a table last; writes nvdec_probe.json under --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

ROWS: list[dict] = []


def _decoder_for_thread(cache: dict, path: str):
    import threading

    import PyNvVideoCodec as nvc

    key = threading.get_ident()
    if key not in cache:
        stream = torch.cuda.current_stream().cuda_stream
        cache[key] = nvc.SimpleDecoder(path, gpu_id=0, cuda_stream=stream, use_device_memory=True,
                                       output_color_type=nvc.OutputColorType.NATIVE)
    else:
        cache[key].reconfigure_decoder(path)
    return cache[key]


def read_sequential(cache: dict, unit: dict, convert: bool) -> int:
    from yoloray.vision.decoders.nv12 import nv12_letterbox

    dec = _decoder_for_thread(cache, unit["path"])
    dec.seek_to_index(unit["start"])
    n, left = 0, unit["stop"] - unit["start"]
    out = torch.empty((32, 3, 384, 640), dtype=torch.float16, device="cuda") if convert else None
    while left > 0:
        frames = dec.get_batch_frames(min(32, left))
        if not frames:
            break
        if convert:
            surfaces = torch.stack([torch.from_dlpack(f) for f in frames])
            nv12_letterbox(surfaces, 1080, 1920, (384, 640), out[: len(frames)])
        n += len(frames)
        left -= len(frames)
    torch.cuda.current_stream().synchronize()
    return n


def _proc_worker(args: tuple) -> tuple[int, float]:
    units, threads = args
    cache: dict = {}
    fn = lambda u: read_sequential(cache, u, False)  # noqa: E731
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, units[:threads]))
        t = time.perf_counter()
        frames = sum(pool.map(fn, units))
    return frames, time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/vbench")
    p.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--per-file", type=int, default=120)
    p.add_argument("--threads", default="7,14")
    p.add_argument("--encodings", default="veryfast", help="comma list of video.py's ENCODINGS")
    p.add_argument("--rows", default="index,sequential,decode,whole,procs", help="comma list of the rows to run")
    a = p.parse_args()
    from video import make_clips

    encodings = tuple(a.encodings.split(","))
    clips = make_clips(Path(a.work), a.files * a.per_file, a.files, 1920, 1080, ("h264",), encodings)
    for encoding in encodings:
        probe(a, encoding, clips[encoding]["h264"], set(a.rows.split(",")))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "nvdec_probe.json").write_text(json.dumps(ROWS, indent=1))
    print("\n| encoding | read | threads | frames | s | frames/s |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for r in ROWS:
        print(f"| {r['encoding']} | {r['row']} | {r.get('threads', '')} | {r['frames']:,} | {r['seconds']} | "
              f"{r['frames_per_s']:,} |")
    return 0


def probe(a, encoding: str, clips: list[Path], rows: set) -> None:
    from video import _thread_stream, passes, units_of

    from yoloray.vision.decoders.nvdec import NvdecDecoder

    segs = units_of(clips)
    units = [{"path": u["source"], "start": u["start"], "stop": u["stop"]} for u in segs]
    whole = [{"path": str(c), "start": 0, "stop": a.per_file} for c in clips]

    def in_stream(fn):
        def run(u):
            with _thread_stream():  # one CUDA stream per thread, as the Detector gives each call
                return fn(u)
        return run

    def timed(name: str, fn, units: list, threads: int) -> None:
        repeats = passes(sum(u["stop"] - u["start"] for u in units))
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, units[:threads]))  # open the decoders
            t = time.perf_counter()
            frames = sum(pool.map(fn, units * repeats))
        s = time.perf_counter() - t
        ROWS.append({"encoding": encoding, "row": name, "threads": threads, "frames": frames, "seconds": round(s, 2),
                     "frames_per_s": round(frames / s, 1)})
        print(f"  -> {encoding}: {name}, {threads} threads: {frames / s:,.0f} frames/s", flush=True)

    for threads in [int(t) for t in a.threads.split(",")]:
        for group in (32, 128) if "index" in rows else ():
            dec = NvdecDecoder(torch.device("cuda"), (384, 640), 128, torch.float16, read="index")
            dec.group = group

            def index(u, dec=dec):
                n = sum(len(b) for b in dec.batches(u))
                torch.cuda.current_stream().synchronize()
                return n
            timed(f"index-{group} (NvdecDecoder, fused)", in_stream(index), segs, threads)
        for key, name, read, convert in (("sequential", "sequential (get_batch_frames, fused)", units, True),
                                         ("decode", "decode only (get_batch_frames)", units, False),
                                         ("whole", "decode only, whole files", whole, False)):
            if key in rows:
                cache: dict = {}  # each row opens its own decoder sessions
                timed(name, in_stream(lambda u, c=cache, cv=convert: read_sequential(c, u, cv)), read, threads)
    for procs, threads in ((2, 4), (4, 2), (7, 1)) if "procs" in rows else ():
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(procs, mp_context=ctx) as pool:
            share = [(units[k::procs] * 3, threads) for k in range(procs)]
            t = time.perf_counter()
            done = list(pool.map(_proc_worker, share))
            wall = time.perf_counter() - t
        frames = sum(f for f, _ in done)
        slowest = max(s for _, s in done)
        ROWS.append({"encoding": encoding, "row": f"decode only, {procs} processes x {threads} threads", "frames": frames,
                     "seconds": round(slowest, 2), "frames_per_s": round(frames / slowest, 1), "wall_s": round(wall, 1)})
        print(f"  -> {encoding}: decode only {procs}x{threads}: {frames / slowest:,.0f} frames/s", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
