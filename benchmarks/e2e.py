"""End-to-end throughput on one GPU: the bare model, the two usual peers, and `yoloray infer`, on the same data.

    python benchmarks/e2e.py --images 10000 --out results/   (on the H200; see benchmarks/README.md)

Data: `--unique` generated 1920x1080 inspection-line JPEGs (yoloray sample-data), written as WebDataset tar
shards; the shards are repeated until there are `--images` archive members (distinct keys, repeated pixels: the
decoder and the model do the same work per member; repeats are hard links, so long jobs fit on disk). All rows
use the same YOLOv8s random weights, saved once as an ultralytics checkpoint. Rows:
  (1) bare model ceiling: fp16 + channels_last + CUDA graph on ready GPU tensors (640x640 and 384x640)
  (2) ultralytics `predict(files, batch=32, half=True)` over JPEG files
  (3) the Ray Data docs pattern: `read_images` -> `map_batches(YOLO class, num_gpus=1)`
  (4) `yoloray infer` configurations, archive -> Parquet on disk, actor start included (levers tried); the
      configuration `auto` is `yoloray infer SHARDS --out O --model M` with no other flag (the resolved default
      profile), and `profile:PATH` is `yoloray infer ... --profile PATH` (e.g. a `yoloray tune` winner)
plus a per-stage breakdown of the best (4) configuration. Prints a table last; writes JSON to --out.
`--scaling CONFIG` (a hand-set name, `auto` or `profile:PATH`): every row sees one GPU (Ray started with
num_gpus=1), then Ray is restarted with every GPU of the machine and CONFIG runs again: the scaling efficiency,
(images/s on N GPUs) / (N x images/s on one), end to end and steady (skipped with fewer than 2 GPUs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402
from _common import cli_infer, describe, init_ray, scaling  # noqa: E402

from yoloray.detector import CUDA_CONNECTIONS  # noqa: E402

# The "Detector alone" rows run in this process: give its CUDA context the work queues the Detector gives an
# actor's (the bare-model rows create the context before any Detector could set them).
os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", CUDA_CONNECTIONS)
RESULTS: list[dict] = []
GPU = torch.cuda.is_available()  # on a machine without one, everything runs small on the CPU (a dry run)
DEVICE = "cuda" if GPU else "cpu"


def row(name: str, images: int, seconds: float, **extra) -> dict:
    r = {"row": name, "images": images, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1), **extra}
    RESULTS.append(r)
    print(f"  -> {name}: {r['images_per_s']:,} images/s ({images} in {seconds:.1f} s) {extra or ''}", flush=True)
    return r


def make_data(root: Path, unique: int, images: int) -> tuple[Path, list[Path], list[tuple[Path, int]]]:
    """The shards folder of `images` members, the unique frames as files (peer rows), and the base shards
    with their member counts (to repeat into a longer job)."""
    from yoloray.data.synthetic import generate

    t = time.perf_counter()
    data = generate(root / "gen", frames=unique, seed=11, formats=("folder", "tar"), shard_size=100)
    import tarfile

    base = []
    for s in sorted(data.tar_shards):
        with tarfile.open(s) as tar:
            base.append((s, sum(m.name.endswith(".jpg") for m in tar.getmembers())))
    shards, n = repeat_shards(base, root / "shards", images)
    files = sorted(Path(data.images_train).glob("*.jpg")) + sorted(Path(data.images_val).glob("*.jpg"))
    print(f"data: {unique} unique frames, {n} tar members in {len(list(shards.iterdir()))} shards, {time.perf_counter() - t:.0f} s")
    return shards, files, base


def repeat_shards(base: list[tuple[Path, int]], folder: Path, images: int) -> tuple[Path, int]:
    """`folder` with the base shards repeated (distinct names, so distinct keys) until it holds at least `images`
    members; the folder and its member count."""
    folder.mkdir(parents=True, exist_ok=True)
    copies, n, wanted = 0, 0, set()
    while n < images:
        for s, members in base:
            if n >= images:
                break
            dst = folder / f"copy{copies:04d}-{s.name}"
            wanted.add(dst)
            _link_or_copy(s, dst)
            n += members
        copies += 1
    for extra in set(folder.iterdir()) - wanted:  # left by an earlier, longer run in the same --work folder
        extra.unlink()
    return folder, n


def _link_or_copy(src: Path, dst: Path) -> None:
    """A repeated shard as a hard link (no extra disk, so long jobs fit; every row reads the archive from the
    page cache either way), or a copy where links are not possible."""
    if dst.exists():  # a rerun over the same --work folder
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def bare_model(weights: Path) -> None:
    from yoloray.config import Profile
    from yoloray.engines import build_engine

    for shape, batch in (((640, 640), 64), ((384, 640), 128)):
        cfg = Profile(model=str(weights), precision="fp16" if GPU else "fp32", channels_last=True, cuda_graph=GPU,
                      imgsz=shape, batch_size=batch if GPU else 4, micro_batch=None, device=DEVICE)
        batch = cfg.batch_size
        eng = build_engine(cfg, torch.device(DEVICE))
        eng.warmup(batch, shape)
        x = torch.rand((batch, 3, *shape), device=DEVICE, dtype=eng.dtype)
        for _ in range(5 if GPU else 1):
            eng(x)
        sync()
        iters = 40 if GPU else 2
        t = time.perf_counter()
        for _ in range(iters):
            eng(x)
        sync()
        row(f"(1) bare model fp16+CL+graph {shape[0]}x{shape[1]} b{batch}", iters * batch, time.perf_counter() - t)


def ultralytics_predict(weights: Path, files: list[Path], n: int) -> None:
    from ultralytics import YOLO

    model = YOLO(str(weights))
    model.predict([str(f) for f in files[:32]], batch=32, half=True, verbose=False)  # warm
    subset = [str(f) for f in (files * (n // len(files) + 1))[:n]]
    t = time.perf_counter()
    count = sum(1 for _ in model.predict(subset, batch=32, half=True, stream=True, verbose=False))
    row("(2) ultralytics predict(files, batch=32, half)", count, time.perf_counter() - t)


class DocsPatternPredictor:
    """The Ray Data docs' batch inference pattern with an ultralytics model."""

    def __init__(self, weights: str):
        from ultralytics import YOLO

        self.model = YOLO(weights)

    def __call__(self, batch):
        results = self.model.predict(list(batch["image"]), half=True, verbose=False)
        batch["n_boxes"] = [len(r.boxes) for r in results]
        del batch["image"]
        return batch


def ray_docs_pattern(weights: Path, folder: list[Path], n: int) -> None:
    import ray

    t = time.perf_counter()
    ds = ray.data.read_images([str(f) for f in folder]).limit(n)
    ds = ds.map_batches(DocsPatternPredictor, fn_constructor_kwargs={"weights": str(weights)},
                        compute=ray.data.ActorPoolStrategy(size=1), num_gpus=1 if GPU else 0, batch_size=32)
    count = ds.count()
    row("(3) Ray Data docs pattern (read_images -> map_batches YOLO)", count, time.perf_counter() - t)


def pool(actors: int, calls: int, threads: int | None = None, per_call: int | None = None) -> dict:
    """Actor options per GPU: `actors` sharing it equally (0.5, 0.33, 0.25 GPU), `calls` concurrent calls
    each, `threads` CPU decode threads each (default: all cores), `per_call` engine batches per call
    (default: ActorOptions')."""
    options: dict = {"calls_per_actor": calls}
    if per_call:
        options["batches_per_call"] = per_call
    if actors > 1:
        options.update(actors=actors, gpus_per_actor=math.floor(100 / actors) / 100)
    if threads:
        options["decode_threads"] = threads
    return options


def yoloray_cli(name: str, weights: Path, shards: Path, out: Path, label: str = "", gpus: int = 1) -> dict:
    """A (4) row run through the command line, in this process (on the Ray that is up, `gpus` GPUs): `auto` is
    `yoloray infer` with no flag but the model; `profile:PATH` adds `--profile PATH`. The resolved profile is in
    the row."""
    profile = name.removeprefix("profile:") if name.startswith("profile:") else None
    res = cli_infer(shards, out / name.replace("/", "_").replace(":", "_"), weights, "images", profile)
    what = "no flags (auto profile)" if name == "auto" else f"--profile {profile}"
    return row(f"(4) yoloray infer {what}" + (f" on {gpus} GPUs" if gpus > 1 else "") + (f" ({label})" if label else ""),
               res.pop("units"), res.pop("seconds"), config=name, label=label or None, gpus=gpus, **res)


def yoloray_infer(name: str, weights: Path, shards: Path, out: Path, engine: dict, actor: dict, gpus: int = 1,
                  label: str = "") -> dict | None:
    """One (4) row: `run_job` (what `yoloray infer` runs) from the shards to Parquet. `actor` is per GPU; the
    pool gets `gpus` times its actors (fractional actors pack onto as few GPUs as they fill)."""
    from yoloray.batch import ActorOptions, run_job
    from yoloray.config import Profile

    cfg = Profile(model=str(weights), **engine)
    actor = {**actor, "actors": actor.get("actors", 1) * gpus}
    actor.setdefault("gpus_per_actor", 1.0 if GPU else 0.0)
    dest = out / name
    shutil.rmtree(dest, ignore_errors=True)
    t, began = time.perf_counter(), time.time()
    summary = run_job([str(shards)], str(dest), cfg, ActorOptions(**actor))
    seconds = time.perf_counter() - t
    run = seconds - summary.first_result_s
    steady = summary.images / run if run > 1.0 else None  # after the first result: no start-up
    shutil.rmtree(dest, ignore_errors=True)  # keep the disk for the next row
    return row(f"(4) yoloray infer {name}" + (f" on {gpus} GPUs" if gpus > 1 else "") + (f" ({label})" if label else ""),
               summary.images, seconds, config=name, label=label or None,
               startup_s=round(summary.first_result_s, 1), steady_images_per_s=round(steady, 1) if steady else None,
               write_s=round(summary.write_s, 2), errors=sum(summary.errors.values()), engine=engine, actor=actor,
               gpus=gpus, wall_clock=(round(began, 1), round(began + seconds, 1)))


def actor_startup(weights: Path, engine: dict) -> None:
    """Where a detector actor's start-up goes: process start (Ray worker, imports of ray), torch and
    ultralytics imports, engine build (load, convert), warmup (CUDA graph capture)."""
    import ray

    @ray.remote(num_gpus=1 if GPU else 0, num_cpus=1)
    class StartupProbe:
        def run(self, engine: dict) -> dict:
            marks = [("start", time.perf_counter())]
            import torch

            marks.append(("import_torch", time.perf_counter()))
            import ultralytics  # noqa: F401

            marks.append(("import_ultralytics", time.perf_counter()))
            from yoloray.config import Profile
            from yoloray.detector import Detector
            from yoloray.engines.torch_backend import load_model

            marks.append(("import_yoloray", time.perf_counter()))
            load_model(engine["model"])  # alone, to see its share of the build (the Detector loads it again)
            marks.append(("model_load_cpu", time.perf_counter()))
            det = Detector(Profile(**engine))  # the CUDA context is created while the model loads
            marks.append(("detector_build", time.perf_counter()))
            det.warmup()
            marks.append(("warmup", time.perf_counter()))
            if torch.cuda.is_available():
                t = time.perf_counter()
                torch.cuda.synchronize()
                marks.append(("sync", t))
            return {name: round(t - marks[i][1], 2) for i, (name, t) in enumerate(marks[1:])}

    t = time.perf_counter()
    probe = StartupProbe.remote()
    ray.get(probe.__ray_ready__.remote())
    started = time.perf_counter() - t
    parts = ray.get(probe.run.remote({**engine, "model": str(weights)}))
    ray.kill(probe)
    RESULTS.append({"row": "actor start-up (s)", "process_start_s": round(started, 2), **parts, "engine": engine})
    print(f"  -> actor start-up: process {started:.2f} s, {parts}", flush=True)


def stage_breakdown(weights: Path, shards: Path, engine: dict, n: int = 2048) -> None:
    """Per-stage time of the Detector alone (synchronized stages, so they add up), on archive bytes."""
    import tarfile

    from yoloray.config import Profile
    from yoloray.detector import Detector

    datas = []
    for s in sorted(shards.iterdir()):
        with tarfile.open(s) as tar:
            datas += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")]
        if len(datas) >= n:
            break
    n = min(n, len(datas))  # a dry run's job can be smaller
    det = Detector(Profile(model=str(weights), **engine), profile=True).warmup()  # hand-set fields, or auto's profile
    b = det.config.batch_size
    det.detect(datas[:b])
    t = time.perf_counter()
    dets = det.detect(datas[:n])
    wall = time.perf_counter() - t
    per = {k: round(1000 * v / n, 3) for k, v in dets.timings.items()}
    RESULTS.append({"row": "stage breakdown (ms per image, stages synchronized)", "engine": engine, "ms_per_image": per,
                    "images_per_s_synchronized": round(n / wall, 1)})
    print(f"  -> stages ms/image: {per}; synchronized total {n / wall:,.0f} images/s", flush=True)
    # the Detector alone, unsynchronized, with 1-3 concurrent callers (what one actor could do without Ray Data)
    from concurrent.futures import ThreadPoolExecutor

    det.profile = False
    chunks = [datas[i : i + b] for i in range(0, n, b)]
    for callers in (1, 2, 3):
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(det.detect, chunks[:callers]))
            t = time.perf_counter()
            list(pool.map(det.detect, chunks))
            wall = time.perf_counter() - t
        row(f"Detector alone, {callers} concurrent caller(s), bytes in memory", n, wall)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--unique", type=int, default=1000)
    p.add_argument("--model", default="yolov8s.yaml")
    p.add_argument("--work", default="/tmp/yoloray-bench")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--peer-images", type=int, default=1500, help="images for the slow peer rows (2) and (3)")
    p.add_argument("--skip", default="", help="comma list of rows to skip: startup,bare,predict,docs,infer,stages")
    p.add_argument("--configs", default="all", help="comma list of (4) configuration names, or all")
    p.add_argument("--scaling", help="a (4) configuration (a hand-set name, auto or profile:PATH) to run on one GPU "
                                     "(every other row sees one GPU) and then on all GPUs of the machine: the scaling "
                                     "efficiency, end to end and steady")
    p.add_argument("--long-images", type=int, default=0,
                   help="run a (4) configuration again over this many archive members (a long job, where start-up "
                        "counts less)")
    p.add_argument("--long-config", help="the configuration of the long job (default: the fastest (4) row end to end)")
    a = p.parse_args()
    skip = set(a.skip.split(","))
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name(0) if GPU else 'cpu (dry run)'}; CPUs: {os.cpu_count()}; torch {torch.__version__}", flush=True)
    shards, files, base_shards = make_data(work, a.unique, a.images)
    from yoloray.engines.torch_backend import save_random_checkpoint

    weights = save_random_checkpoint(a.model, work / "yolov8s-random.pt")

    t = time.perf_counter()
    one_gpu = 1 if a.scaling and GPU else None  # scaling run: every row but the last sees one GPU
    init_ray(one_gpu)
    print(f"ray.init {time.perf_counter() - t:.1f} s (not counted in any row)", flush=True)
    # hand-set rows: every field they do not set is pinned to its value before profiles (not `auto`)
    fast = {"micro_batch": None, "precision": "fp16", "channels_last": True, "cuda_graph": True, "imgsz": (384, 640), "batch_size": 64,
            "device": "cuda"}
    if not GPU:  # dry run: same code paths that exist on a CPU
        fast = {"micro_batch": None, "precision": "fp32", "imgsz": (384, 640), "batch_size": 8, "device": "cpu"}
    b128 = {**fast, "batch_size": 128}
    tv = {**b128, "decode": "gpu", "gpu_decoder": "torchvision"}
    nv = {**b128, "decode": "gpu", "gpu_decoder": "nvimgcodec"}
    hybrid = {"decode": "hybrid", "reduced_decode": True}
    configs = {  # name -> (engine fields, actor options per GPU)
        "cpu-reduced": ({**fast, "decode": "cpu", "reduced_decode": True}, {}),
        "gpu-nvjpeg": ({**fast, "decode": "gpu", "gpu_decoder": "torchvision"}, {}),
        "gpu-1actor-3calls-b128": (tv, pool(1, 3)),
        "gpu-2actors-2calls-b128": (tv, pool(2, 2, threads=8)),
        "gpu-3actors-2calls-b128": (tv, pool(3, 2, threads=5)),
        "gpu-4actors-2calls-b128": (tv, pool(4, 2, threads=4)),
        "gpu-2actors-2calls-b256": ({**tv, "batch_size": 256}, pool(2, 2, threads=8)),
        "hybrid.3-2actors-2calls-b128": ({**tv, **hybrid, "hybrid_cpu_share": 0.3}, pool(2, 2, threads=4)),
        "hybrid.45-2actors-2calls-b128": ({**tv, **hybrid, "hybrid_cpu_share": 0.45}, pool(2, 2, threads=4)),
        "hybrid.3-3actors-2calls-b128": ({**tv, **hybrid, "hybrid_cpu_share": 0.3}, pool(3, 2, threads=4)),
        # nvImageCodec on the hardware JPEG engines: a decoder per call, no process-wide lock
        "nvimg-1actor-2calls-b128": (nv, pool(1, 2, threads=4)),
        "nvimg-1actor-3calls-b128": (nv, pool(1, 3, threads=4)),
        "nvimg-2actors-2calls-b128": (nv, pool(2, 2, threads=4)),
        "nvimg-3actors-2calls-b128": (nv, pool(3, 2, threads=4)),
        "nvimg-4actors-1call-b128": (nv, pool(4, 1, threads=4)),
        "nvimg-hybrid.3-3actors-2calls-b128": ({**nv, **hybrid, "hybrid_cpu_share": 0.3}, pool(3, 2, threads=4)),
        "nvimg-hybrid.2-1actor-3calls-b128": ({**nv, **hybrid, "hybrid_cpu_share": 0.2}, pool(1, 3, threads=4)),
        "nvimg-hybrid.3-2actors-2calls-b128": ({**nv, **hybrid, "hybrid_cpu_share": 0.3}, pool(2, 2, threads=4)),
        # micro_batch: the model's batch as several CUDA-graph replays, so GPU decode runs between them
        "gpu-1actor-2calls-b128-m32": ({**tv, "micro_batch": 32}, pool(1, 2, threads=8)),
        "gpu-1actor-3calls-b128-m32": ({**tv, "micro_batch": 32}, pool(1, 3, threads=8)),
        "gpu-1actor-3calls-b128-m16": ({**tv, "micro_batch": 16}, pool(1, 3, threads=8)),
        "gpu-1actor-2calls-b256-m32": ({**tv, "batch_size": 256, "micro_batch": 32}, pool(1, 2, threads=8)),
        "gpu-2actors-2calls-b128-m32": ({**tv, "micro_batch": 32}, pool(2, 2, threads=8)),
        # one engine batch of rows per actor call (before batches_per_call: calls of 200 rows ran as 128 + 72)
        "gpu-1actor-3calls-b128-m32-c1": ({**tv, "micro_batch": 32}, pool(1, 3, threads=8, per_call=1)),
        "gpu-2actors-2calls-b128-m32-c1": ({**tv, "micro_batch": 32}, pool(2, 2, threads=8, per_call=1)),
        "gpu-3actors-2calls-b128-m32": ({**tv, "micro_batch": 32}, pool(3, 2, threads=5)),
        "nvimg-1actor-3calls-b128-m32": ({**nv, "micro_batch": 32}, pool(1, 3, threads=4)),
        "nvimg-1actor-4calls-b128-m32": ({**nv, "micro_batch": 32}, pool(1, 4, threads=4)),
        "nvimg-2actors-2calls-b128-m32": ({**nv, "micro_batch": 32}, pool(2, 2, threads=4)),
        "hybrid.3-1actor-3calls-b128-m32": ({**tv, **hybrid, "hybrid_cpu_share": 0.3, "micro_batch": 32}, pool(1, 3, threads=4)),
        "hybrid.3-2actors-2calls-b128-m32": ({**tv, **hybrid, "hybrid_cpu_share": 0.3, "micro_batch": 32}, pool(2, 2, threads=4)),
        "hybrid.15-2actors-2calls-b128-m32": ({**tv, **hybrid, "hybrid_cpu_share": 0.15, "micro_batch": 32}, pool(2, 2, threads=4)),
        "hybrid.15-3actors-2calls-b128-m32": ({**tv, **hybrid, "hybrid_cpu_share": 0.15, "micro_batch": 32}, pool(3, 2, threads=4)),
        # torch.compile (inductor, default mode; no CUDA graph around it); compile time counts in the row
        "compile-3actors-2calls-b128-m32": (
            {**tv, "backend": "torch-compile", "cuda_graph": False, "micro_batch": 32}, pool(3, 2, threads=5)),
        "compile-hybrid.15-3actors-2calls-b128-m32": (
            {**tv, **hybrid, "backend": "torch-compile", "cuda_graph": False, "hybrid_cpu_share": 0.15, "micro_batch": 32},
            pool(3, 2, threads=4)),
    }
    if not GPU:
        configs = {"cpu-reduced": configs["cpu-reduced"], "cpu-2calls": ({**fast, "reduced_decode": True}, {"calls_per_actor": 2})}
    wanted = list(configs) if a.configs == "all" else a.configs.split(",")

    def run_config(name: str, folder: Path = shards, gpus: int = 1, label: str = "") -> dict:
        """A (4) row: a hand-set configuration through run_job, else the command line (auto, profile:PATH)."""
        if name in configs:
            return yoloray_infer(name, weights, folder, work / "out", *configs[name], gpus=gpus, label=label)
        return yoloray_cli(name, weights, folder, work / "out", label=label, gpus=gpus)

    steps = [
        ("bare", lambda: bare_model(weights)),
        ("predict", lambda: ultralytics_predict(weights, files, a.peer_images)),
        ("docs", lambda: ray_docs_pattern(weights, files, a.peer_images)),
    ] + [("infer", lambda n=n: run_config(n)) for n in wanted]
    unknown = [n for n in wanted + ([a.scaling] if a.scaling else [])
               if n not in configs and n != "auto" and not n.startswith("profile:")]
    if unknown:
        p.error(f"unknown --configs/--scaling {', '.join(unknown)}; known: auto, profile:PATH, {', '.join(configs)}")
    hand_set = [n for n in wanted if n in configs]
    if hand_set:
        steps.insert(0, ("startup", lambda: actor_startup(weights, configs[hand_set[0]][0])))
    if a.scaling:
        steps.append(("scaling", lambda: scaling(a.scaling, lambda gpus: run_config(a.scaling, gpus=gpus), RESULTS, "images")))
    for name, step in steps:
        if name in skip:
            continue
        try:
            step()
        except Exception:
            traceback.print_exc()
            RESULTS.append({"row": name, "error": traceback.format_exc(limit=3)})
        (out / "e2e.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    infer_rows = [r for r in RESULTS if r["row"].startswith("(4)") and "images_per_s" in r and r.get("gpus") == 1]
    if infer_rows and a.long_images:
        name = a.long_config or max(infer_rows, key=lambda r: r["images_per_s"])["config"]
        long_shards, n = repeat_shards(base_shards, work / "shards-long", a.long_images)
        try:  # a row of its own: the best configuration, the stages and the ratios stay those of --images jobs
            if a.scaling and GPU and "scaling" not in skip:
                init_ray(1)  # the scaling step left Ray with every GPU
            run_config(name, long_shards, label=f"long job, {n:,} images")
        except Exception:
            traceback.print_exc()
        (out / "e2e.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    if infer_rows and "stages" not in skip:
        best = max(infer_rows, key=lambda r: r["images_per_s"])
        try:
            stage_breakdown(weights, shards, best["engine"])
        except Exception:
            traceback.print_exc()
    (out / "e2e.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    print_table(infer_rows)
    return 0


def print_table(infer_rows: list[dict]) -> None:
    get: dict[str, dict] = {}
    for r in RESULTS:
        if "images_per_s" in r:
            get.setdefault(r["row"][:3], r)  # the first (1) row is the square 640 ceiling
    best = max(infer_rows, key=lambda r: r["images_per_s"]) if infer_rows else None
    print("\n| row | images | s | images/s | steady images/s | startup s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in RESULTS:
        if "images_per_s" in r:
            print(f"| {r['row']} | {r['images']:,} | {r['seconds']} | {r['images_per_s']:,} | "
                  f"{r.get('steady_images_per_s', '')} | {r.get('startup_s', '')} |")
    if best:
        print(f"\nbest (4): {best['row']} = {best['images_per_s']:,} images/s")
        for tag in ("(1)", "(2)", "(3)"):
            ref = get.get(tag)
            if ref:
                print(f"  ratio to {ref['row']}: {best['images_per_s'] / ref['images_per_s']:.2f}x")
    for r in RESULTS:
        if "efficiency" in r:
            print(describe(r))
        if "process_start_s" in r:
            print(f"actor start-up: {r}")
        if "ms_per_image" in r:
            print(f"stage breakdown of best (ms/image, synchronized): {r['ms_per_image']}")


if __name__ == "__main__":
    raise SystemExit(main())
