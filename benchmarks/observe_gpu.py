"""What issue 19 could not check without a GPU: the CUDA side of `--trace`, the GPU memory budget, and the GPU
memory metric. Generates its own 1080p frames (the inspection-line scenes), then:

1. in-process: builds and warms a Detector (fp16, CUDA graphs, GPU decode), measures its memory budget
   (observe/memory.py) and how many fit on this GPU, traces `--calls` detect calls with the torch profiler
   (CUDA activity on) and prints the per-stage table (CPU-side ms and GPU kernel ms per stage); checks that the
   trace holds every stage range and CUDA kernels;
2. with --with-ray: a real `run_job` on a local Ray with one GPU actor and --trace, then reads the actor's
   memory report and the `ray_yoloray_gpu_memory_bytes` series from Ray's metrics endpoint.

    python benchmarks/observe_gpu.py --out $OUT [--frames 512] [--batch 64] [--model yolov8s.yaml] [--with-ray]
    nsys profile -t cuda,nvtx -o $OUT/nsys python benchmarks/observe_gpu.py --out $OUT   # NVTX ranges, if nsys

Prints a short table last; the trace JSON and stage table are under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("YOLO_OFFLINE", "true")

METRICS_PORT = 18690


def frames(n: int) -> list[bytes]:
    import cv2

    from yoloray.data.scene import render_frame

    first = [cv2.imencode(".jpg", render_frame(0, i)[0], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
             for i in range(min(n, 32))]
    return [first[i % len(first)] for i in range(n)]


def engine(args):
    from yoloray.config import Profile
    from yoloray.profile import EXACT_PATH

    if args.device == "cpu":  # a smoke run of this script on a machine without a GPU
        return Profile(model=args.model, imgsz=(384, 640), batch_size=args.batch, device="cpu", **EXACT_PATH)
    return Profile(model=args.model, imgsz=(384, 640), batch_size=args.batch, device=args.device,
                   **{**EXACT_PATH, "precision": "fp16", "cuda_graph": True, "decode": "gpu"})


def in_process(args, jpegs: list[bytes]) -> list[tuple[str, str]]:
    from yoloray.detector import Detector
    from yoloray.observe import memory
    from yoloray.observe.trace import STAGES, Tracer, stage

    det = Detector(engine(args)).warmup()
    cuda = det.device.type == "cuda"
    det.detect(jpegs[: args.batch])  # the first real batch: decode buffers at 1080p
    budget = memory.measure(det.device)
    tracer = Tracer(str(Path(args.out) / "trace"), cuda=cuda, calls=args.calls)
    t0 = time.perf_counter()
    for c in range(args.calls):
        with tracer.call():
            dets = det.detect(jpegs[c * args.batch:(c + 1) * args.batch] or jpegs[: args.batch])
            with stage("write", cuda=cuda):
                dets.to_rows()
    wall = time.perf_counter() - t0
    events = json.loads(Path(tracer.path).read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    kernels = sum(e.get("cat") == "kernel" for e in events)
    print(tracer.table)
    print(budget.text())
    rows = [
        ("stage ranges in the trace", f"{sorted(set(STAGES) & names)} (missing: {sorted(set(STAGES) - names)})"),
        ("CUDA kernels in the trace", f"{kernels:,}"),
        ("traced calls / images/s", f"{args.calls} / {args.calls * args.batch / wall:,.0f}"),
        ("trace file", tracer.path),
    ]
    if budget.measured:
        rows += [("budget: peak reserved / allocated GiB",
                  f"{budget.peak_reserved / memory.GIB:.2f} / {budget.peak_allocated / memory.GIB:.2f}"),
                 ("Detectors per GPU (per_gpu)", str(memory.per_gpu(budget, budget.gpu_total)))]
    return rows


def with_ray(args, jpegs: list[bytes]) -> list[tuple[str, str]]:
    import ray

    from yoloray.batch import ActorOptions, run_job
    from yoloray.data.units import list_units
    from yoloray.observe.job_observer import JobObserver

    src = Path(args.out) / "frames"
    src.mkdir(parents=True, exist_ok=True)
    for i, b in enumerate(jpegs):
        (src / f"f{i:05d}.jpg").write_bytes(b)
    gpu = args.device != "cpu"
    ray.init(num_gpus=int(gpu), include_dashboard=False, log_to_driver=False, _metrics_export_port=METRICS_PORT,
             _system_config={"metrics_report_interval_ms": 1000})
    config = engine(args)
    units = list_units([str(src)])
    with JobObserver(units, None, "gpu-check", str(Path(args.out) / "ray-trace")) as obs:
        summary = run_job([str(src)], str(Path(args.out) / "out"), config,
                          ActorOptions(actors=1, gpus_per_actor=int(gpu), observe=obs.actor_observe), units=units,
                          progress=obs.progress)
    print(summary.text())
    print(obs.report())
    time.sleep(3)
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read().decode()
    gpu = [ln for ln in text.splitlines() if ln.startswith("ray_yoloray_gpu_memory_bytes{")]
    ray.shutdown()
    return [("job images/s (start-up included)", f"{summary.images_per_s:,.0f}"),
            ("actor memory reports", str(sum(r["kind"] == "memory" for r in obs.received))),
            ("ray_yoloray_gpu_memory_bytes series", str(len(gpu)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--frames", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--model", default="yolov8s.yaml", help="weights or model YAML (random weights)")
    p.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu (a smoke run of the script)")
    p.add_argument("--with-ray", action="store_true", help="also run a batch job on a local Ray (needs ray)")
    args = p.parse_args()
    import torch

    if args.device != "cpu" and not torch.cuda.is_available():
        print("observe_gpu: needs a CUDA GPU", file=sys.stderr)
        return 2
    jpegs = frames(args.frames)
    rows = in_process(args, jpegs)
    if args.with_ray:
        rows += with_ray(args, jpegs)
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
