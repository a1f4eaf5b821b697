"""Where a torch-compile actor's start-up goes with a warm cache, and whether an AOTInductor package loads in a
new process (issue 17: <= 5 s warm per actor; the engine's warm start measured 11.1 s after imports on the H200).

Each step is its own Python process (as actors are), YOLOv8s fused, fp16, channels_last, batch --batch (32) at 384x640:
  cold     torch.compile (default mode): first call compiles; saves torch.compiler.save_cache_artifacts()
  warm     a new process with an empty inductor cache folder: load_cache_artifacts, then the phases timed
           (CUDA context, model build, first call = Dynamo trace + cached kernels, second call)
  aoti     torch.export + aoti_compile_and_package in one process, which then loads the package itself
  aoti-new a new process loading that package (where the engine's load segfaulted)
  aotc     Dynamo's ahead-of-time compile (torch._dynamo.config.enable_aot_compile, OptimizedModule._aot_compile):
           the whole graph traced and compiled once, serialized with its guards; also save_cache_artifacts
  aotc-new   a new process, empty inductor cache: the serialized function loaded onto the live module, then called
             (the load under cProfile: its top functions by cumulative time go to --work/aotc-new.profile.txt)
  aotc-mega  the same after load_cache_artifacts of aotc's bundle (inductor's compiled kernels)
  aotc-again aotc-new's inductor cache folder again (what a second actor on the same disk sees)
Prints one line per step (or how it died).

    python benchmarks/compile_start_probe.py --work /tmp/csp     # a CUDA GPU (or --cpu); ultralytics importable
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STEP = r'''
import json, os, sys, time
t0 = time.perf_counter()
import torch
from ultralytics.nn.tasks import DetectionModel
t_import = time.perf_counter() - t0
step, work = sys.argv[1], sys.argv[2]
out = {"step": step, "import_s": round(t_import, 2)}
t = time.perf_counter(); torch.zeros(1, device="cuda"); torch.cuda.synchronize(); out["cuda_s"] = round(time.perf_counter() - t, 2)
t = time.perf_counter()
torch.manual_seed(0)
net = DetectionModel("yolov8s.yaml", verbose=False).fuse(verbose=False).eval().cuda().half().to(memory_format=torch.channels_last)
for p in net.parameters():
    p.requires_grad_(False)
x = torch.rand(int(sys.argv[3]), 3, 384, 640, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
out["model_s"] = round(time.perf_counter() - t, 2)
class First(torch.nn.Module):
    def __init__(s, m):
        super().__init__(); s.m = m
    def forward(s, x):
        y = s.m(x)
        return y[0] if isinstance(y, (tuple, list)) else y
pkg = os.path.join(work, "model.pt2")
def timed(name, fn):
    t = time.perf_counter(); r = fn(); torch.cuda.synchronize(); out[name] = round(time.perf_counter() - t, 2); return r
if step.startswith("aotc"):
    import torch._dynamo.aot_compile as ac
    torch._dynamo.config.enable_aot_compile = True
    cm = torch.compile(First(net), fullgraph=True, dynamic=False)
    with torch.inference_mode():
        ref = First(net)(x)
    if step == "aotc":
        with torch.inference_mode():
            timed("compile_s", lambda: cm._aot_compile([ac.ModelInput(args=(x,), kwargs={}, contexts=[])]))
        data = cm._save_aot_compiled_module(os.path.join(work, "aotc.bin"))
        out["artifact_mb"] = round(len(data) / 2**20, 1)
        saved = torch.compiler.save_cache_artifacts()
        if saved is not None:
            open(os.path.join(work, "aotc-mega.bin"), "wb").write(saved[0])
            out["mega_mb"] = round(len(saved[0]) / 2**20, 1)
    else:
        if step == "aotc-mega":
            timed("load_artifacts_s", lambda: torch.compiler.load_cache_artifacts(open(os.path.join(work, "aotc-mega.bin"), "rb").read()))
        data = open(os.path.join(work, "aotc.bin"), "rb").read()
        if step == "aotc-new":  # where the load's seconds go: the top functions by cumulative time, to stderr
            import cProfile, io, pstats
            prof = cProfile.Profile()
            timed("load_s", lambda: prof.runcall(cm._load_aot_compiled_module, data))
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
            print(text.getvalue(), file=sys.stderr)
        else:
            timed("load_s", lambda: cm._load_aot_compiled_module(data))
        for r in cm.forward.compiled_results:
            r.disable_guard_check()  # the engine checks shape, dtype and layout itself
    with torch.inference_mode():
        got = timed("first_call_s", lambda: cm(x)); timed("second_call_s", lambda: cm(x))
    out["max_diff"] = round((ref.float() - got.float()).abs().max().item(), 4)
elif step in ("cold", "warm"):
    if step == "warm":
        timed("load_artifacts_s", lambda: torch.compiler.load_cache_artifacts(open(os.path.join(work, "mega.bin"), "rb").read()))
    f = torch.compile(First(net), dynamic=False)
    with torch.inference_mode():
        timed("first_call_s", lambda: f(x)); timed("second_call_s", lambda: f(x))
    if step == "cold":
        saved = torch.compiler.save_cache_artifacts()
        open(os.path.join(work, "mega.bin"), "wb").write(saved[0])
        out["artifacts_mb"] = round(len(saved[0]) / 2**20, 1)
elif step == "aoti":
    with torch.no_grad():
        First(net)(x)
        ep = timed("export_s", lambda: torch.export.export(First(net), (x,), strict=False))
    timed("compile_s", lambda: torch._inductor.aoti_compile_and_package(ep, package_path=pkg))
    runner = timed("load_s", lambda: torch._inductor.aoti_load_package(pkg))
    with torch.inference_mode():
        ref = First(net)(x)
        got = timed("first_call_s", lambda: runner(x))
    out["max_diff"] = round((ref.float() - got.float()).abs().max().item(), 4)
else:  # aoti-new
    runner = timed("load_s", lambda: torch._inductor.aoti_load_package(pkg))
    with torch.inference_mode():
        timed("first_call_s", lambda: runner(x)); timed("second_call_s", lambda: runner(x))
out["total_s"] = round(time.perf_counter() - t0, 2)
print(json.dumps(out), flush=True)
'''


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/compile-start-probe")
    p.add_argument("--steps", default="cold,warm,aotc,aotc-new,aotc-mega,aotc-again,aoti,aoti-new")
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--batch", type=int, default=32, help="the compiled input's batch (the engine's forward batch)")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    for step in a.steps.split(","):
        folder = "aotc-new" if step == "aotc-again" else step
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(a.work, f"inductor-{folder}")}
        t = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", STEP, step, a.work, str(a.batch)], capture_output=True,
                               text=True, env=env, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            print(f"{step}: timed out after {a.timeout:.0f} s", flush=True)
            continue
        line = next((ln for ln in reversed(r.stdout.splitlines()) if ln.startswith("{")), None)
        if step == "aotc-new":
            with open(os.path.join(a.work, "aotc-new.profile.txt"), "w") as f:
                f.write(r.stderr)
        if r.returncode == 0 and line:
            print(json.dumps({**json.loads(line), "wall_s": round(time.perf_counter() - t, 1)}), flush=True)
        else:
            where = [ln.strip() for ln in r.stderr.splitlines() if ln.strip().startswith("File ")][:4]
            print(f"{step}: exit {r.returncode}; {line or ''} {r.stderr.strip().splitlines()[-1:] if r.stderr.strip() else ''} "
                  f"at {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
