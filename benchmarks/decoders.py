"""GPU JPEG decoders compared on 1920x1080 frames: alone, several at once, and beside the model's inference.

    python benchmarks/decoders.py --frames 384 --seconds 1.5 --out results/   (on the H200; benchmarks/README.md)

Decoders (vision/decoders/): torchvision's nvJPEG (one decoder per process behind a mutex), nvImageCodec
(hardware JPEG engines first, then CUDA), and nvImageCodec held to one backend kind (HW_GPU_ONLY, GPU_ONLY) to
see which one it runs. For each: how much of the GIL a decode call leaves to other threads; images/s and host
CPU time per image (all threads of this process, spin-waits included) alone; 3 threads with a decoder each,
and 3 threads sharing one; decode and inference at once, one thread each with its own CUDA stream, the model's
batch of 128 as one CUDA-graph replay or as 2, 4, 8 smaller ones (`micro_batch`: does decode overlap the
model, or wait for it?). Last, the whole Detector (decode -> letterbox -> fp16 CUDA-graph model -> NMS) with
1-3 concurrent callers per decoder, micro_batch 128 and 32.
Prints a table last; writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("YOLO_OFFLINE", "true")

import torch  # noqa: E402

from yoloray.detector import CUDA_CONNECTIONS  # noqa: E402
from yoloray.vision.decoders.nvimgcodec import NvImageCodecDecoder, nvimgcodec_missing  # noqa: E402
from yoloray.vision.decoders.stills import open_gpu_decoder  # noqa: E402

RESULTS: list[dict] = []
SHAPE = (384, 640)
MICRO_BATCHES = (64, 32, 16)  # the model's batch of 128 also run as 2, 4 and 8 CUDA-graph replays


class Shared:
    """One decoder behind a lock, shared by the calling threads."""

    def __init__(self, decoder):
        self.decoder, self.lock = decoder, threading.Lock()

    def decode(self, datas):
        with self.lock:
            return self.decoder.decode(datas)


def decoders(device) -> dict:
    made = {"torchvision": lambda: open_gpu_decoder("torchvision", device)}
    if nvimgcodec_missing() is None:
        made["nvimgcodec"] = lambda: open_gpu_decoder("nvimgcodec", device)
        # held to one backend kind (HW_GPU_ONLY: the engines; GPU_ONLY: CUDA), to see which one the default uses
        made["nvimgcodec-HW_GPU_ONLY"] = lambda: NvImageCodecDecoder(device, backends=("HW_GPU_ONLY",))
        made["nvimgcodec-GPU_ONLY"] = lambda: NvImageCodecDecoder(device, backends=("GPU_ONLY",))
    else:
        print(f"nvimgcodec: {nvimgcodec_missing()}", flush=True)
    return made


def gil_free_share(work) -> float:
    """Share of a pure-Python counting thread's speed that survives while `work()` runs in this thread:
    ~1.0 when `work` releases the GIL, near 0 when it holds it."""
    def count(stop: threading.Event, out: list) -> None:
        n = 0
        while not stop.is_set():
            n += 1
        out.append(n)

    rates = []
    for job in (lambda: time.sleep(0.5), work):
        stop, out = threading.Event(), []
        t = threading.Thread(target=count, args=(stop, out))
        t.start()
        t0 = time.perf_counter()
        job()
        wall = time.perf_counter() - t0
        stop.set()
        t.join()
        rates.append(out[0] / wall)
    return rates[1] / rates[0]


def decode_loop(decoder, datas, batch: int, seconds: float, stream) -> tuple[int, float, float]:
    """Decode batches on `stream` for about `seconds`: (images, wall s, CPU s of the process)."""
    n, cpu0 = 0, time.process_time()
    with torch.cuda.stream(stream):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            k = (n // batch * batch) % (len(datas) - batch + 1)
            out = decoder.decode(datas[k : k + batch])
            assert all(o is not None for o in out)
            n += batch
        stream.synchronize()
        wall = time.perf_counter() - t0
    return n, wall, time.process_time() - cpu0


def infer_loop(engine, batch: int, seconds: float, stream) -> tuple[int, float]:
    """The model on ready tensors, waiting for each batch as the Detector does (it copies results to the host)."""
    x = torch.rand((batch, 3, *SHAPE), device="cuda", dtype=engine.dtype)
    n = 0
    with torch.cuda.stream(stream):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            engine(x)
            stream.synchronize()
            n += batch
        return n, time.perf_counter() - t0


def record(name: str, **fields) -> None:
    RESULTS.append({"row": name, **fields})
    print(f"  -> {name}: {fields}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=512, help="unique generated 1920x1080 JPEGs")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each timed loop")
    p.add_argument("--work", default="/tmp/yoloray-decoders")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--cuda-connections", default=CUDA_CONNECTIONS,
                   help="CUDA_DEVICE_MAX_CONNECTIONS for this process (default: the Detector's; 8 is the driver's)")
    a = p.parse_args()
    os.environ["CUDA_DEVICE_MAX_CONNECTIONS"] = a.cuda_connections  # before the CUDA context exists
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from yoloray.config import Profile
    from yoloray.data.synthetic import generate
    from yoloray.detector import Detector
    from yoloray.engines import build_engine

    device = torch.device("cuda")
    data = generate(a.work, frames=a.frames, seed=5, formats=("folder",), val_fraction=0.0)
    datas = [f.read_bytes() for f in sorted(Path(data.images_train).glob("*.jpg"))]
    print(f"{torch.cuda.get_device_name(0)}; {os.cpu_count()} CPUs; {len(datas)} JPEGs, "
          f"CUDA_DEVICE_MAX_CONNECTIONS={a.cuda_connections}, "
          f"mean {sum(map(len, datas)) / len(datas) / 1e3:.0f} kB", flush=True)
    cfg = Profile(model="yolov8s.yaml", precision="fp16", channels_last=True, cuda_graph=True, imgsz=SHAPE,
                  batch_size=128, micro_batch=None, device="cuda")
    engine = build_engine(cfg, device)
    engine.warmup(128, SHAPE)
    n, wall = infer_loop(engine, 128, a.seconds, torch.cuda.Stream())
    model_alone = n / wall
    record("model alone (YOLOv8s fp16 CUDA graph 384x640 b128)", images_per_s=round(model_alone))
    engines = {128: engine}
    for micro in MICRO_BATCHES:
        engines[micro] = build_engine(cfg.replace(micro_batch=micro), device)
        engines[micro].warmup(128, SHAPE)
        n, wall = infer_loop(engines[micro], 128, a.seconds, torch.cuda.Stream())
        record(f"model alone, batch 128 as {128 // micro} replays of {micro}", images_per_s=round(n / wall))
    for name, make in decoders(device).items():
        try:
            dec = make()
            dec.decode(datas[:8])
        except Exception as e:
            record(f"{name}: cannot decode here", error=str(e)[:200])
            continue
        record(f"{name}: GIL", free_share=round(gil_free_share(lambda d=dec: d.decode(datas[:128])), 2))
        for batch in (64, 128):
            n, wall, cpu = decode_loop(dec, datas, batch, a.seconds, torch.cuda.Stream())
            record(f"{name} alone b{batch}", images_per_s=round(n / wall), cpu_ms_per_image=round(1e3 * cpu / n, 3))
        # three threads, a decoder and a stream each
        decs = [dec] + [make() for _ in range(2)]
        with ThreadPoolExecutor(3) as pool:
            cpu0 = time.process_time()
            runs = list(pool.map(lambda d: decode_loop(d, datas, 128, a.seconds, torch.cuda.Stream()), decs))
            cpu = time.process_time() - cpu0
        total = sum(r[0] for r in runs)
        record(f"{name} 3 threads b128", images_per_s=round(total / max(r[1] for r in runs)),
               cpu_ms_per_image=round(1e3 * cpu / total, 3))
        shared = Shared(dec)
        with ThreadPoolExecutor(3) as pool:
            runs = list(pool.map(lambda d: decode_loop(d, datas, 128, a.seconds, torch.cuda.Stream()), [shared] * 3))
        total = sum(r[0] for r in runs)
        record(f"{name} 3 threads sharing one decoder b128", images_per_s=round(total / max(r[1] for r in runs)))
        # decode and inference at once; the model's batch of 128 as one CUDA-graph replay, or several smaller
        for micro, eng in engines.items():
            with ThreadPoolExecutor(1) as pool:
                infer = pool.submit(infer_loop, eng, 128, a.seconds, torch.cuda.Stream())
                n, wall, _ = decode_loop(dec, datas, 128, a.seconds, torch.cuda.Stream())
                ni, wi = infer.result()
            record(f"{name} b128 + inference at once, {128 // micro} replay(s) of {micro}",
                   decode_images_per_s=round(n / wall), inference_images_per_s=round(ni / wi),
                   model_alone=round(model_alone))
        del decs, dec
    # the whole Detector, 1-3 concurrent callers
    chunks = [datas[i : i + 128] for i in range(0, len(datas) - 127, 128)] * 4
    images = sum(len(c) for c in chunks)
    for name, micro in [(d, m) for d in ["torchvision"] + (["nvimgcodec"] if nvimgcodec_missing() is None else [])
                        for m in (None, 32)]:
        det = Detector(cfg.replace(decode="gpu", gpu_decoder=name, micro_batch=micro),
                       decode_threads=8).warmup()
        for callers in (1, 2, 3):
            with ThreadPoolExecutor(callers) as pool:
                list(pool.map(det.detect, chunks[:callers]))
                cpu0, t0 = time.process_time(), time.perf_counter()
                dets = list(pool.map(det.detect, chunks))
                wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            assert all(e is None for d in dets for e in d.errors)
            record(f"Detector, {name}, micro_batch {micro or 128}, {callers} caller(s)",
                   images_per_s=round(images / wall), cpu_ms_per_image=round(1e3 * cpu / images, 3))
        det.close()
    (out / "decoders.json").write_text(json.dumps(RESULTS, indent=1))
    print("\n| row | images/s | host CPU ms/image | notes |\n| --- | ---: | ---: | --- |")
    for r in RESULTS:
        ips = r.get("images_per_s", r.get("decode_images_per_s"))
        notes = ""
        if "inference_images_per_s" in r:
            notes = f"inference at the same time {r['inference_images_per_s']:,} (alone {r['model_alone']:,})"
        elif "free_share" in r:
            notes = f"a Python thread keeps {r['free_share']:.0%} of its speed while this decodes (GIL released)"
        elif "error" in r:
            notes = r["error"]
        print(f"| {r['row']} | {'' if ips is None else f'{ips:,}'} | {r.get('cpu_ms_per_image', '')} | {notes} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
