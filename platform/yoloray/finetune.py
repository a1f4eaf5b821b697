"""Fine-tune (or train from scratch) a YOLO detector with ultralytics' trainer, as one Ray task.

`finetune(data, out, ...)` runs `YOLO(model).train(...)` inside a Ray task that reserves `num_gpus=gpus` on one
node (so `ray job submit -- python jobs/finetune.py ...` trains on a GPU worker), or in-process with
`use_ray=False`. With gpus > 1 the trainer runs its own DDP over that node's GPUs (it spawns
`torch.distributed.run` subprocesses; ultralytics needs the `cloudpickle` package for that).

Outputs in `out`: `weights/best.pt`, `metrics.json` (final val of best.pt: map50_95, map50, precision, recall, plus
epochs, imgsz, time in seconds), `args.yaml` (our arguments, the exact ultralytics train arguments, versions),
`results.csv`, and the ultralytics run directory `out/train`. When the task ran on another node, the four summary
files are shipped back and written on the driver's node as well; `out/train` stays where training ran, so put
`out` on shared storage to keep it.

Offline: nothing is downloaded. `plots=False` (no fonts for plots), and while the trainer runs, ultralytics'
download entry points (`safe_download`, `get_github_assets`, the `is_url(check=True)` probe) raise
`ConnectionError` / answer "unreachable" instead of touching the network (`no_downloads()`). That covers the
dataset check's Arial.ttf font fetch and the AMP check: `check_amp` loads yolo26n.pt from the weights dir to
compare FP32 and AMP outputs and downloads it if missing; here the missing file raises ConnectionError, which
check_amp itself handles as "offline: skip the check, keep AMP on". Put yolo26n.pt into ultralytics'
`weights_dir` to get the real check. On CPU (gpus == 0) we pass `amp=False`. The patch is applied in the
trainer class (`OfflineDetectionTrainer`), so DDP subprocesses, which rebuild that class, get it too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml
from ultralytics.models.yolo.detect import DetectionTrainer

METRIC_KEYS = {  # our name -> ultralytics DetMetrics.results_dict key
    "map50_95": "metrics/mAP50-95(B)",
    "map50": "metrics/mAP50(B)",
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
}
# Arguments finetune() owns; `extra` may not set them (use the named parameter instead).
OWNED_ARGS = {"data", "model", "epochs", "imgsz", "batch", "device", "workers", "seed", "project", "name", "exist_ok"}
SUMMARY_FILES = ("weights/best.pt", "metrics.json", "args.yaml", "results.csv")


@dataclass
class FinetuneResult:
    weights: Path
    metrics: dict[str, float]  # map50_95, map50, precision, recall (ultralytics' final val of best.pt)
    run_dir: Path
    args_path: Path
    metrics_path: Path


# ----------------------------------------------------------------------------------------------------- offline


def _unreachable(*args, **kwargs):
    url = kwargs.get("url") or (args[0] if args else "")
    raise ConnectionError(f"yoloray: downloads are disabled (offline), not fetching {url}")


@contextlib.contextmanager
def no_downloads():
    """Make ultralytics' download entry points fail fast with ConnectionError while the block runs.

    ultralytics treats ConnectionError as "offline" where a download is optional (AMP check: skipped, AMP kept on;
    fonts: none), so training proceeds; anything that truly needs a download fails with a clear message.
    """
    import ultralytics.data.utils as data_utils
    import ultralytics.utils.downloads as downloads

    is_url = downloads.is_url

    def is_url_offline(url, check=False):
        return False if check else is_url(url, check=False)

    patches = [
        (downloads, "safe_download", _unreachable),
        (downloads, "get_github_assets", _unreachable),
        (downloads, "is_url", is_url_offline),
        (data_utils, "safe_download", _unreachable),
    ]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, fn in patches:
            setattr(mod, name, fn)
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


class OfflineDetectionTrainer(DetectionTrainer):
    """ultralytics' DetectionTrainer running under `no_downloads()`.

    Importable by name, so the DDP workers (which rebuild the trainer from its pickled class) get the patch too.
    """

    def __init__(self, *args, **kwargs):
        with no_downloads():
            super().__init__(*args, **kwargs)

    def train(self):
        with no_downloads():
            return super().train()

    def read_results_csv(self):
        """results.csv as {column: [values]} with the stdlib (ultralytics imports polars just for this)."""
        import csv

        try:
            with open(self.csv, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            return {}
        out: dict[str, list] = {k.strip(): [] for k in (rows[0] if rows else {})}
        for row in rows:
            for k, v in row.items():
                try:
                    out[k.strip()].append(float(v))
                except (TypeError, ValueError):
                    out[k.strip()].append(v)
        return out


# ------------------------------------------------------------------------------------------------- validation


def _check_data(data: str | Path) -> Path:
    path = Path(data).expanduser()
    if path.suffix not in {".yaml", ".yml"}:
        raise ValueError(f"--data must be a dataset YAML file (train/val/names), got {data}")
    if not path.is_file():
        raise ValueError(
            f"dataset YAML not found: {path}; pass --data pointing at an existing file with 'path', 'train', 'val' "
            f"and 'names' (ultralytics dataset format)"
        )
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"dataset YAML {path} does not parse: {e}") from e
    missing = [k for k in ("train", "val", "names") if k not in spec]
    if missing:
        raise ValueError(f"dataset YAML {path} lacks {missing}; it needs 'train', 'val' and 'names'")
    return path.resolve()


def _check_model(model: str | Path) -> str:
    m = str(model)
    if m.endswith((".yaml", ".yml")):
        return m  # model definition (from ultralytics' cfg or a local file); random init
    if m.endswith(".pt"):
        if not Path(m).expanduser().is_file():
            raise ValueError(
                f"weights file not found: {m} (nothing is downloaded offline); pass a local .pt to continue from, "
                f"or a model YAML such as yolov8n.yaml to train from scratch"
            )
        return str(Path(m).expanduser().resolve())
    raise ValueError(f"--model must be a model YAML (e.g. yolov8n.yaml) or a local .pt file, got {m}")


def _check_local_gpus(gpus: int) -> None:
    if gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    if gpus == 0:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < gpus:
        raise ValueError(
            f"--gpus {gpus} requested but this machine has {have} CUDA GPU(s); pass --gpus 0 to train on CPU"
        )
    if gpus > 1:
        try:
            import cloudpickle  # noqa: F401
        except ImportError:
            raise ValueError(
                "multi-GPU training needs the 'cloudpickle' package (ultralytics DDP); install it, or pass --gpus 1"
            ) from None


def _train_args(data: Path, model: str, out: Path, epochs: int, imgsz: int, batch: int, gpus: int, workers: int,
                seed: int, extra: dict | None) -> dict:
    extra = dict(extra or {})
    clash = sorted(OWNED_ARGS & set(extra))
    if clash:
        raise ValueError(f"extra sets {clash}; use finetune()'s own parameters for those")
    args = {
        "data": str(data),
        "epochs": int(epochs),
        "imgsz": int(imgsz),
        "batch": int(batch),
        "device": "cpu" if gpus == 0 else ",".join(str(i) for i in range(gpus)),
        "workers": int(workers),
        "seed": int(seed),
        "project": str(out),
        "name": "train",
        "exist_ok": True,
        "plots": False,
        "amp": gpus > 0,  # CPU: no AMP (and no AMP check); GPU: AMP, check offline-safe (see module doc)
    }
    args.update(extra)
    return args


# --------------------------------------------------------------------------------------------------- training


def _versions() -> dict[str, str]:
    import torch
    import ultralytics

    import yoloray

    v = {"python": sys.version.split()[0], "torch": str(torch.__version__),
         "ultralytics": str(ultralytics.__version__), "yoloray": str(yoloray.__version__)}
    with contextlib.suppress(ImportError):
        import ray

        v["ray"] = str(ray.__version__)
    return v


def _metrics_from(model) -> dict[str, float]:
    m = model.metrics
    d = m.results_dict if hasattr(m, "results_dict") else dict(m or {})
    missing = [k for k in METRIC_KEYS.values() if k not in d]
    if missing:
        raise RuntimeError(f"ultralytics' final validation gave no {missing} (got {sorted(d)})")
    return {ours: float(d[theirs]) for ours, theirs in METRIC_KEYS.items()}


def _train(model: str, out: Path, gpus: int, train_args: dict, call_args: dict, ship_files: bool = False) -> dict:
    """Run the trainer here (in-process or inside the Ray task) and write the summary files into `out`."""
    _check_local_gpus(gpus)
    from ultralytics import YOLO

    from yoloray.observe.epochs import epoch_progress

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with no_downloads(), warnings.catch_warnings():
        # ultralytics' Ray Tune callback asks for a trial id every epoch; outside Tune that only warns
        warnings.filterwarnings("ignore", message=".*get_trial_id.*")
        yolo = YOLO(model)
        yolo.add_callback("on_fit_epoch_end", epoch_progress())  # one progress line per epoch
        yolo.train(trainer=OfflineDetectionTrainer, **train_args)
    elapsed = time.time() - t0
    metrics = _metrics_from(yolo)

    trainer = yolo.trainer
    run_dir = Path(trainer.save_dir)
    best = Path(trainer.best) if Path(trainer.best).exists() else Path(trainer.last)
    (out / "weights").mkdir(exist_ok=True)
    shutil.copy2(best, out / "weights" / "best.pt")
    if (run_dir / "results.csv").exists():
        shutil.copy2(run_dir / "results.csv", out / "results.csv")
    (out / "metrics.json").write_text(json.dumps(
        {**metrics, "epochs": train_args["epochs"], "imgsz": train_args["imgsz"], "time": round(elapsed, 3)},
        indent=2,
    ) + "\n")
    record = {
        "finetune": call_args,
        "train_args": train_args,
        "model": model,
        "versions": _versions(),
        "host": socket.gethostname(),
    }
    record = json.loads(json.dumps(record, default=str))  # plain types only (e.g. Path values in `extra`)
    (out / "args.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    files = {}
    if ship_files:
        files = {rel: (out / rel).read_bytes() for rel in SUMMARY_FILES if (out / rel).exists()}
    return {"metrics": metrics, "run_dir": str(run_dir), "files": files}


def _train_task(model, out, gpus, train_args, call_args, driver_node):
    """Ray task body: ships the summary files back when the driver is on another node."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return _train(model, Path(out), gpus, train_args, call_args, ship_files=here != driver_node)


def _ray_resources(gpus: int, workers: int) -> tuple[int, int]:
    """(num_cpus, num_gpus) for the task; ValueError when no live node has `gpus` GPUs."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    eligible = [r for r in nodes if r.get("GPU", 0) >= gpus]
    if not eligible:
        most = max((int(r.get("GPU", 0)) for r in nodes), default=0)
        raise ValueError(
            f"--gpus {gpus} requested but no node of the Ray cluster has that many GPUs (most on one node: {most}); "
            f"pass --gpus {most} or --gpus 0 to train on CPU, or add GPU nodes"
        )
    node_cpus = max(int(r.get("CPU", 1)) for r in eligible)
    return max(1, min(max(1, workers) * max(1, gpus), node_cpus)), gpus


def _runtime_env() -> dict | None:
    """Job-level runtime env that ships the yoloray package to the workers when it is not installed.

    E.g. `ray job submit --working-dir . -- python jobs/finetune.py`: the driver imports yoloray from
    `<repo>/platform`, which is not on the workers' path. Ray takes local `py_modules` only at `ray.init`.
    """
    from importlib import metadata

    try:
        metadata.distribution("yoloray")
        return None
    except metadata.PackageNotFoundError:
        import yoloray

        return {"py_modules": [str(Path(yoloray.__file__).parent)]}


def finetune(
    data: str | Path,
    out: str | Path,
    model: str = "yolov8n.yaml",
    epochs: int = 30,
    imgsz: int = 640,
    batch: int = 32,
    gpus: int = 0,
    workers: int = 8,
    seed: int = 0,
    extra: dict | None = None,
    use_ray: bool = True,
    address: str | None = None,
) -> FinetuneResult:
    """Train `model` on the ultralytics dataset YAML `data`; outputs go to `out` (see module docstring).

    `model`: a model YAML (random init, e.g. "yolov8n.yaml") or a local `.pt` to continue from. `gpus`: 0 = CPU,
    n > 1 = ultralytics DDP on n GPUs of one node. `extra`: further ultralytics train arguments (lr0, mosaic, amp, ...).
    `use_ray`: run as a Ray task (connects to `address`, or starts a local Ray and stops it afterwards when none
    is running; when this call initializes Ray and yoloray is not installed, the package is shipped to the workers
    as a job-level `py_modules`; a Ray initialized by the caller must provide it). Raises ValueError for user
    errors (missing data YAML or weights, GPUs not available).
    """
    data_path = _check_data(data)
    model = _check_model(model)
    out = Path(out).expanduser().resolve()
    if gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    train_args = _train_args(data_path, model, out, epochs, imgsz, batch, gpus, workers, seed, extra)
    call_args = {"data": str(data_path), "out": str(out), "model": model, "epochs": epochs, "imgsz": imgsz,
                 "batch": batch, "gpus": gpus, "workers": workers, "seed": seed, "extra": dict(extra or {}),
                 "use_ray": use_ray, "address": address}

    if not use_ray:
        res = _train(model, out, gpus, train_args, call_args)
    else:
        import ray

        started = not ray.is_initialized()
        if started:
            ray.init(address=address, runtime_env=_runtime_env())
        try:
            num_cpus, num_gpus = _ray_resources(gpus, workers)
            opts = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 0}
            task = ray.remote(_train_task).options(**opts)
            driver_node = ray.get_runtime_context().get_node_id()
            res = ray.get(task.remote(model, str(out), gpus, train_args, call_args, driver_node))
        finally:
            if started:
                ray.shutdown()
        for rel, blob in res["files"].items():  # trained on another node: keep a copy of the summary here
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(blob)

    return FinetuneResult(
        weights=out / "weights" / "best.pt",
        metrics=res["metrics"],
        run_dir=Path(res["run_dir"]),
        args_path=out / "args.yaml",
        metrics_path=out / "metrics.json",
    )


# -------------------------------------------------------------------------------------------------------- CLI


def format_metrics(result: FinetuneResult) -> str:
    rows = [f"{'metric':<10} {'value':>8}"] + [f"{k:<10} {v:>8.4f}" for k, v in result.metrics.items()]
    return "\n".join([*rows, f"weights    {result.weights}"])


def main(argv: list[str] | None = None) -> int:
    """`python jobs/finetune.py --data DATA.yaml --out DIR ...` (also `yoloray finetune`)."""
    p = argparse.ArgumentParser(prog="yoloray finetune", description="Train a YOLO detector (ultralytics trainer) "
                                "as a Ray task; writes weights/best.pt, metrics.json, args.yaml into --out.")
    p.add_argument("--data", required=True, help="ultralytics dataset YAML (path, train, val, names)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default="yolov8n.yaml", help="model YAML (from scratch) or local .pt to continue from")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=32, help="total batch size over all GPUs")
    p.add_argument("--gpus", type=int, default=0, help="GPUs on one node (0 = CPU; >1 = DDP)")
    p.add_argument("--workers", type=int, default=8, help="dataloader workers per GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--address", default=None, help="Ray address (default: running cluster or a local Ray)")
    p.add_argument("--no-ray", action="store_true", help="train in this process instead of a Ray task")
    p.add_argument("--hours", type=float, default=None,
                   help="wall-clock budget: ultralytics fits the epochs (and LR schedule) into it; overrides --epochs")
    p.add_argument("--cache", choices=["ram", "disk"], default=None, help="cache decoded training images")
    a = p.parse_args(argv)
    extra = {k: v for k, v in (("time", a.hours), ("cache", a.cache)) if v is not None}
    try:
        result = finetune(a.data, a.out, model=a.model, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch,
                          gpus=a.gpus, workers=a.workers, seed=a.seed, use_ray=not a.no_ray, address=a.address,
                          extra=extra or None)
    except ValueError as e:
        msg = str(getattr(e, "cause", None) or e)  # a ValueError raised inside the Ray task arrives wrapped
        print(f"yoloray finetune: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    print(format_metrics(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
