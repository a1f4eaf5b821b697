"""Engines side by side: per backend / provider / precision, the model alone and the whole Detector, each row
with its fidelity, and an actor's start-up with a cold and a warm artifact cache (issue 17).

    python benchmarks/engines.py --mode gpu --out $OUT   # H200: YOLOv8s (random weights), 384x640, batch 128
    python benchmarks/engines.py --mode cpu --out $OUT   # this 2-core machine: the demo YOLOv8n, 640, batch 4
    python benchmarks/engines.py --mode cpu --interleave 25 --no-startup   # model alone timed call by call in turn

Speed: "model" = the engine alone on a ready (B, 3, H, W) batch on the device; "detector" = `Detector.detect`
on encoded 1080p JPEGs (decode, letterbox, engine, NMS), batches of B; each row is timed for at least
`--seconds` after a warm-up; with `--interleave N` the model-alone column is instead the median of N calls per row
timed in turn (every row built first, then one call of each row after another), so a shared machine's load
falls on every row alike (the sequential figure stays in results.json). Fidelity: the same engine configuration built on the demo detector (real boxes),
compared with the exact path (torch fp32, TF32 off) on its held-out frames at the fast-mode tolerance
(IoU >= 0.9, score within 0.05); the GPU rows' YOLOv8s has random weights, so its own boxes would say nothing.
Start-up: a new process builds and warms a Detector (imports included) with an empty cache folder (cold), then
another with the cache the first one filled (warm); the inductor cache of each process is empty too. "start" is
the whole process, "ready" the part after the imports (CUDA context, engine build, export or compile, warmup):
what an actor pays beyond its imports, and what the artifact cache changes (`--startup-rows` picks the rows).
`--kernels N` (GPU): the torch profiler's GPU kernel time per model-alone call, by kind and its top kernels, so
two engines' difference in speed has a measured place (convolutions, layout transposes, launches).
Frames are generated in the run (the scene generator, seed 0: its val split is the demo detector's held-out
set; the train split is the int8 calibration folder, 32 frames drawn from it). Rows that cannot run here say why.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODES = {
    "gpu": {"model": "yolov8s.yaml", "imgsz": (384, 640), "batch": 128, "device": "cuda", "rows": [
        {"backend": "torch"},
        {"backend": "torch", "precision": "fp16", "channels_last": True, "cuda_graph": True},
        {"backend": "torch-compile", "precision": "fp16", "channels_last": True},
        {"backend": "onnxruntime", "provider": "cuda"},
        {"backend": "onnxruntime", "provider": "cuda", "precision": "fp16"},
        {"backend": "onnxruntime", "provider": "cuda", "precision": "fp16", "cuda_graph": True},
        {"backend": "onnxruntime", "provider": "tensorrt", "precision": "fp16"},
        {"backend": "onnxruntime", "provider": "tensorrt", "precision": "int8"},
        # ORT's NHWC convolutions (prefer_nhwc), torch's channels_last counterpart; and torch without its graph
        {"backend": "onnxruntime", "provider": "cuda", "precision": "fp16", "channels_last": True},
        {"backend": "onnxruntime", "provider": "cuda", "precision": "fp16", "channels_last": True, "cuda_graph": True},
        {"backend": "torch", "precision": "fp16", "channels_last": True},
    ]},
    "cpu": {"model": None, "imgsz": (640, 640), "batch": 4, "device": "cpu", "rows": [
        {"backend": "torch"},
        {"backend": "torch", "channels_last": True},
        {"backend": "onnxruntime", "provider": "cpu"},
        {"backend": "onnxruntime", "provider": "cpu", "precision": "int8"},
    ]},
}
FAST_IOU, FAST_SCORE, MIN_FIDELITY = 0.9, 0.05, 0.97
START = """
import json, sys, time
t0 = time.perf_counter()
import torch
from yoloray.config import Profile
from yoloray.detector import Detector
t1 = time.perf_counter()
if len(sys.argv) > 2:  # where the build's cProfile goes (top functions by cumulative time)
    import cProfile, io, pstats
    prof = cProfile.Profile()
    prof.enable()
Detector(Profile.parse(json.loads(sys.argv[1]))).warmup()
ready = time.perf_counter() - t1
if len(sys.argv) > 2:
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(60)
    open(sys.argv[2], "w").write(text.getvalue())
print(json.dumps({"start_s": time.perf_counter() - t0, "ready_s": ready}))
"""


def name(row: dict) -> str:
    parts = [row["backend"] + (f"/{row['provider']}" if row.get("provider") else ""), row.get("precision", "fp32")]
    parts += [k for k in ("channels_last", "cuda_graph") if row.get(k)] + [row.get("compile_mode") or ""]
    parts = [p for p in parts if p]
    return " ".join(parts)


def frames(work: Path, n: int) -> tuple[list[bytes], list[bytes], str]:
    """n generated 1080p scene JPEGs (the demo detector's training seed, so its held-out val split is real
    ground for fidelity): (all of them for timing, the held-out val split, the train folder for calibration)."""
    from yoloray.data.synthetic import generate

    data = generate(work / "frames", frames=n, seed=0, formats=("folder",), workers=os.cpu_count())
    val = [f.read_bytes() for f in sorted(Path(data.images_val).glob("*.jpg"))]
    train = [f.read_bytes() for f in sorted(Path(data.images_train).glob("*.jpg"))]
    return train + val, val, str(data.images_train)


def timed(fn, images_per_call: int, seconds: float, sync) -> float:
    fn()
    sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and calls >= 3:
            return calls * images_per_call / elapsed


def start_up(fields: dict, cache: str, work: Path, profile_to: str | None = None) -> dict[str, float]:
    """A new process building and warming a Detector, cold (empty artifact cache) then warm (the cache the first
    filled); each with an empty inductor cache of its own. `start`: the whole process (imports included);
    `ready`: after the imports, the engine's build and warmup (CUDA context, load, export or compile, capture).
    `profile_to`: a third, warm run under cProfile (slower: its times are not reported), its top functions there."""
    out = {}
    for run in ("cold", "warm") + (("profiled",) if profile_to else ()):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{run}")}
        argv = [sys.executable, "-X", "faulthandler", "-c", START, json.dumps({**fields, "cache_dir": cache})]
        p = subprocess.run(argv + ([profile_to] if run == "profiled" else []),
                           capture_output=True, text=True, env=env, timeout=900)
        if p.returncode:
            raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "start-up failed")
        got = json.loads(p.stdout.strip().splitlines()[-1])
        if run != "profiled":
            out[f"start_{run}_s"], out[f"ready_{run}_s"] = got["start_s"], got["ready_s"]
    return out


KERNEL_KINDS = (  # by the kernel's full name, first match wins (torch's, cuDNN's, cutlass's and ORT's names);
    # torch's generic element-wise kernels are named `gpu_kernel_impl_nocast<...op...>`: classed by their op
    ("layout", ("transpose", "nchwtonhwc", "nhwctonchw", "nchw2nhwc", "nhwc2nchw", "permute")),
    ("copy", ("direct_copy", "copy_kernel", "memcpy", "memset", "catarray", "concat")),
    ("fused (Triton)", ("triton_",)),  # Inductor's kernels, named after the ops they fuse ("..._convolution_silu")
    ("conv", ("fprop", "implicit_gemm", "xmma", "conv2d", "convolution", "winograd", "dgrad")),
    ("gemm", ("gemm", "cutlass", "cublas", "matmul")),
)


def kernel_breakdown(det, x: torch.Tensor, calls: int) -> dict:
    """GPU kernel time per call of the engine alone, by kind and the top kernels (the torch profiler's CUPTI
    trace sees every kernel of the process, ONNX Runtime's and cuDNN's included, also inside CUDA graphs)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    det.infer(x)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            det.infer(x)
        torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    names: dict[str, float] = {}
    launches = 0
    for e in prof.events():
        if e.device_type != DeviceType.CUDA:
            continue
        us = e.time_range.elapsed_us()
        low = e.name.lower()
        kind = next((k for k, words in KERNEL_KINDS if any(w in low for w in words)), "element-wise/other")
        kinds[kind] = kinds.get(kind, 0.0) + us
        names[e.name] = names.get(e.name, 0.0) + us
        launches += 1
    per_call = {k: round(v / calls / 1e3, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    top = sorted(names.items(), key=lambda kv: -kv[1])[:6]
    return {"gpu_ms_per_call": round(sum(kinds.values()) / calls / 1e3, 2), "kernels_per_call": launches // calls,
            "ms_by_kind": per_call, "top_kernels": [(n[:90], round(v / calls / 1e3, 2)) for n, v in top]}


def fields(row: dict, spec: dict, args, calib: str) -> dict:
    from yoloray.profile import EXACT_PATH

    base = {**EXACT_PATH, "imgsz": list(spec["imgsz"]), "batch_size": args.batch or spec["batch"],
            "device": spec["device"], **row}  # every knob a row does not set: off (not `auto`)
    return {**base, "calibration": calib} if row.get("precision") == "int8" else base


def interleaved(rows: list[dict], spec: dict, args, model: str, calib: str, work: Path) -> dict[str, float]:
    """Model-alone images/s per row from `args.interleave` calls each, one call of every row in turn (median)."""
    import statistics

    from yoloray.config import Profile
    from yoloray.detector import Detector

    dets = {}
    for row in rows:
        cache = str(work / "cache" / name(row).replace(" ", "-"))  # measure() built it: loads
        try:
            dets[name(row)] = Detector(Profile.parse({**fields(row, spec, args, calib), "model": model,
                                                      "cache_dir": cache})).warmup()
        except Exception:  # the row's error is already in its result
            continue
    sync = (lambda: torch.cuda.synchronize()) if spec["device"] == "cuda" else (lambda: None)
    inputs = {k: torch.rand((d.batch_size, 3, *spec["imgsz"]), device=d.device).to(d.engine.dtype)
              for k, d in dets.items()}
    times: dict[str, list[float]] = {k: [] for k in dets}
    for _ in range(args.interleave):
        for k, d in dets.items():
            t0 = time.perf_counter()
            d.infer(inputs[k])
            sync()
            times[k].append(time.perf_counter() - t0)
    for d in dets.values():
        d.close()
    return {k: dets[k].batch_size / statistics.median(v) for k, v in times.items()}


def measure(row: dict, spec: dict, args, model: str, images: list[bytes], held: list[bytes], calib: str,
            exact, work: Path) -> dict:
    from yoloray.config import Profile
    from yoloray.detector import Detector
    from yoloray.fidelity import compare

    device = spec["device"]
    base = fields(row, spec, args, calib)
    result = {"row": name(row)}
    cache = str(work / "cache" / name(row).replace(" ", "-"))
    try:
        det = Detector(Profile.parse({**base, "model": model, "cache_dir": cache})).warmup()
    except Exception as e:  # a provider or library missing here: the row says why
        return {**result, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    sync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    b = det.batch_size
    x = torch.rand((b, 3, *spec["imgsz"]), device=det.device).to(det.engine.dtype)
    result["model_images_per_s"] = timed(lambda: det.infer(x), b, args.seconds, sync)
    if args.kernels and device == "cuda":
        result["kernels"] = kernel_breakdown(det, x, args.kernels)
    batches = [images[i : i + b] for i in range(0, len(images) - b + 1, b)]
    state = {"i": 0}

    def detect():
        det.detect(batches[state["i"] % len(batches)])
        state["i"] += 1

    result["detector_images_per_s"] = timed(detect, b, args.seconds, sync)
    det.close()
    torch._dynamo.reset()  # torch-compile: the demo model's other shapes would count against dynamo's recompile limit
    demo = Detector(Profile.parse({**base, "cache_dir": cache})).warmup()  # default model: the demo detector
    fid = compare(exact, demo.detect(held), iou=FAST_IOU, score_tol=FAST_SCORE)
    result.update(fidelity=fid.rate, boxes=int(fid.reference))
    demo.close()
    torch._dynamo.reset()
    if args.startup and (args.startup_rows is None or row in args.startup_rows):
        try:
            profile_to = (str(Path(args.startup_profile) / f"startup-{name(row).replace(' ', '-')}.txt")
                          if args.startup_profile else None)
            result.update(start_up({**base, "model": model}, str(work / "startup" / name(row)), work, profile_to))
        except Exception as e:
            result["start_error"] = str(e)[:200]
    return result


def table(results: list[dict], ref: float | None) -> str:
    head = (f"{'engine':<40} {'model img/s':>12} {'x torch fp32':>12} {'detector img/s':>15} {'fidelity':>9} "
            f"{'start cold s':>13} {'warm s':>7} {'ready cold s':>13} {'warm s':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['row']:<40} not run: {r['error']}")
            continue
        ratio = r["model_images_per_s"] / ref if ref else float("nan")
        cold, warm, rcold, rwarm = (r.get(k, float("nan")) for k in
                                    ("start_cold_s", "start_warm_s", "ready_cold_s", "ready_warm_s"))
        lines.append(f"{r['row']:<40} {r['model_images_per_s']:>12,.1f} {ratio:>12.2f} "
                     f"{r['detector_images_per_s']:>15,.1f} {r['fidelity']:>9.3f} {cold:>13.1f} {warm:>7.1f} "
                     f"{rcold:>13.1f} {rwarm:>7.1f}")
    for r in results:
        if "kernels" in r:
            k = r["kernels"]
            lines.append(f"\n{r['row']}: GPU kernels {k['gpu_ms_per_call']} ms per call of {k['kernels_per_call']} "
                         f"launches (wall {1e3 * 1 / r['model_images_per_s']:.3f} ms per image); by kind (ms): "
                         + ", ".join(f"{n} {v}" for n, v in k["ms_by_kind"].items()))
            lines += [f"    {ms:>8.2f} ms  {n}" for n, ms in k["top_kernels"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=list(MODES), required=True)
    p.add_argument("--out", help="folder for results.json")
    p.add_argument("--batch", type=int, help="override the mode's batch size")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per measurement (default 5)")
    p.add_argument("--frames", type=int, help="1080p frames to generate (default max(2 batches, 160)); a fifth are "
                   "the held-out fidelity frames, the rest the Detector's timing set and the int8 calibration folder")
    p.add_argument("--rows", help="comma-separated row numbers to run (default all)")
    p.add_argument("--interleave", type=int, metavar="N", help="model alone: N calls per row timed in turn, after "
                   "the rows ran (the median call; for a shared or noisy machine)")
    p.add_argument("--no-startup", dest="startup", action="store_false", help="skip the cold/warm start-up runs")
    p.add_argument("--startup-rows", help="comma-separated row numbers whose start-up is measured (default all)")
    p.add_argument("--startup-profile", metavar="DIR", help="also a third, warm start-up under cProfile per start-up "
                   "row, its top functions by cumulative time into DIR/startup-ROW.txt")
    p.add_argument("--kernels", type=int, metavar="N", help="GPU rows: profile N model-alone calls and print the "
                   "GPU kernel time per call by kind (convolution, layout transposes, ...) and the top kernels")
    args = p.parse_args(argv)
    spec = MODES[args.mode]
    from yoloray.config import Profile, default_model
    from yoloray.detector import Detector
    from yoloray.engines.torch_backend import save_random_checkpoint
    from yoloray.profile import EXACT_PATH

    work = Path(tempfile.mkdtemp(prefix="yoloray-engines-"))
    if args.startup_profile:
        Path(args.startup_profile).mkdir(parents=True, exist_ok=True)
    model = str(save_random_checkpoint(spec["model"], work / "model.pt")) if spec["model"] else None
    b = args.batch or spec["batch"]
    t0 = time.perf_counter()
    images, held, calib = frames(work, args.frames or max(2 * b, 160))
    print(f"frames generated in {time.perf_counter() - t0:.1f} s", flush=True)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    exact = Detector(Profile(imgsz=spec["imgsz"], batch_size=b, device=spec["device"], **EXACT_PATH)).detect(held)
    rows = spec["rows"] if not args.rows else [spec["rows"][int(i)] for i in args.rows.split(",")]
    args.startup_rows = (None if args.startup_rows is None
                         else [spec["rows"][int(i)] for i in args.startup_rows.split(",") if i])
    results = []
    for row in rows:
        r = measure(row, spec, args, model or default_model(), images, held, calib, exact, work)
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.interleave:
        speeds = interleaved(rows, spec, args, model or default_model(), calib, work)
        for r in results:
            if r["row"] in speeds:
                r["model_sequential_images_per_s"], r["model_images_per_s"] = r["model_images_per_s"], speeds[r["row"]]
    ref = next((r["model_images_per_s"] for r in results if r["row"] == "torch fp32" and "error" not in r), None)
    print(f"\nengines, mode {args.mode}: model {spec['model'] or 'demo YOLOv8n'}, imgsz {spec['imgsz']}, batch {b}, "
          f"device {spec['device']}, torch {torch.__version__}"
          + (f"; model img/s: median of {args.interleave} interleaved calls" if args.interleave else ""))
    print(table(results, ref))
    ok = [r for r in results if "error" not in r and r["fidelity"] >= MIN_FIDELITY]
    if ok and ref:
        best = max(ok, key=lambda r: r["model_images_per_s"])
        print(f"fastest engine with fidelity >= {MIN_FIDELITY}: {best['row']}, "
              f"{best['model_images_per_s'] / ref:.2f}x torch fp32 (model alone), "
              f"{best['detector_images_per_s']:,.1f} images/s through the Detector")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "engines.json").write_text(json.dumps({"mode": args.mode, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
