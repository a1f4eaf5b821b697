"""`yoloray tune`: search the profile with the most images/s per GPU, in two levels, on Ray.

    yoloray tune --model M [--archive SOURCE... | --images DIR] [--space space.yaml] [--gpus N]
        [--budget-trials K | --budget-minutes T] [--max-p99-ms X] [--max-gpu-mem-gib Y] [--min-fidelity Z]
        [--layout-top K] [--layout-images N] --out runs/NAME [--resume]

Engine level (Ray Tune): one trial per point, one GPU per trial (CPU-only when the cluster has no GPU or
--gpus 0). A space that fits the trial budget is searched as a grid (the default CUDA space, 16 points, is); a
larger one with Optuna (TPE, define-by-run so conditional knobs stay conditional) and ASHA, which stops trials
whose images/s is clearly behind after a few windows. A space file is searched as written: unlisted knobs stay
at the default profile's values. With neither budget flag at most 16 trials and 10 minutes. Layout level: the
best --layout-top engine configurations as real batch jobs over a sample of the inputs, once per layout
(actors per GPU, calls, decode placement), and the default profile beside them; the two fastest run twice
more, and the best median end to end is the winner, written as RUN/profile.yaml. An --archive of video files
is measured on frames decoded from its videos, and its layout runs go over its video files (tune/archive.py).

Tune keeps its state in RUN/tune and the layout runs in RUN/layout.parquet; `--resume` (or `--resume RUN`)
restores them: finished trials and runs are kept, interrupted ones run again, the settings come from
RUN/sweep.yaml. The report (see `yoloray.tune.report`) is written at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ray import tune

from yoloray.cluster import ClusterError, connect
from yoloray.config import ConfigError, default_model
from yoloray.errors import UserError
from yoloray.tune.settings import TuneConfig

DEFAULT_TRIALS = 16  # the default CUDA space (16 points), as a grid; a YOLOv8s trial takes ~10 s on an H200
# the engine level's wall-time cap when neither budget flag is given; the layout level then runs
# (2 engines x 6 layouts + the default profile + the two best again twice: 17 batch jobs of 20,000 members, ~20 s
# each on one H200; the whole default sweep took 450 s with 13 of them: benchmarks/README.md, issue 16)
DEFAULT_MINUTES = 10.0
METRIC = "images_per_s"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="yoloray tune", description=__doc__.split("\n\n")[2].replace("\n", " "))
    p.add_argument("--model", help="weights .pt or model YAML (default: the bundled demo detector)")
    p.add_argument("--space", help="space YAML: knob: [values] or knob: value (default: the capability table)")
    p.add_argument("--gpus", type=int, help="GPUs to use, one trial each (default: all in the cluster; 0 = CPU)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-trials", type=int, help=f"number of trials, no time limit (default: "
                        f"{DEFAULT_TRIALS} trials and at most {DEFAULT_MINUTES:g} minutes)")
    budget.add_argument("--budget-minutes", type=float, help="wall-time budget of the sweep; as many trials as fit "
                        f"(default: {DEFAULT_MINUTES:g} minutes and at most {DEFAULT_TRIALS} trials)")
    p.add_argument("--max-p99-ms", type=float, help="winner's p99 batch latency limit")
    p.add_argument("--max-gpu-mem-gib", type=float, help="winner's peak GPU memory limit")
    p.add_argument("--min-fidelity", type=float, default=0.9,
                   help="minimum match rate vs the fp32 reference, 0-1 (default 0.9; 0 turns the check off)")
    p.add_argument("--out", help="run directory runs/NAME (report, engine.yaml, Tune state)")
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN", help="continue the sweep in RUN (or --out)")
    p.add_argument("--images", help="folder of images to measure on (default: generated 1080p frames)")
    p.add_argument("--archive", nargs="+", metavar="SOURCE", help="your archive (any `yoloray infer` source): its "
                   "first images, or frames of its videos, are measured instead")
    p.add_argument("--layout-top", type=int, default=2, help="best engine configurations measured as real batch "
                   "jobs, one per layout; the two fastest jobs run twice more and the best median wins (default 2; "
                   "0: the engine level only)")
    p.add_argument("--layout-images", type=int, help="archive members (video: frames) per layout run: the sample "
                   "repeated (default 20,000 with GPUs, 256 on CPU)")
    p.add_argument("--frame-size", default="1920x1080", help="WxH of the generated frames (default 1920x1080); with "
                   "--images or --archive the input shape follows the size of your own frames instead")
    p.add_argument("--window-seconds", type=float, default=2.0, help="measurement window (default 2)")
    p.add_argument("--max-windows", type=int, default=10, help="windows per trial at most (default 10)")
    p.add_argument("--max-trial-seconds", type=float, default=120.0, help="measurement cap per trial")
    p.add_argument("--cpus-per-trial", type=int, help="CPUs per trial (default: node CPUs / GPUs, 1 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve-config", help="where to write the winner's Serve config (default serve_configs/NAME.yaml)")
    p.add_argument("--address", help="Ray address (auto, ray://host:10001); default: RAY_ADDRESS or a local Ray")
    return p


def _frame_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--frame-size {text!r} is not WxH (e.g. 1920x1080)") from None
    if w < 32 or h < 32:
        raise UserError(f"--frame-size {text!r}: width and height must be at least 32")
    return w, h


def _model(model: str | None) -> str:
    model = model or default_model()
    path = Path(model).expanduser()
    if path.is_file():
        return str(path.resolve())
    if model.endswith((".yaml", ".yml")) and "/" not in model:
        return model  # an ultralytics model definition such as yolov8n.yaml
    raise UserError(f"--model {model}: no such file (give weights .pt or a model YAML such as yolov8n.yaml)")


def settings_from_args(args) -> tuple[TuneConfig, bool]:
    """(settings, resuming). A resumed sweep takes every setting from RUN/sweep.yaml."""
    from yoloray.tune.space import load_space_file

    out = args.resume if isinstance(args.resume, str) else args.out
    if not out:
        raise UserError("--out runs/NAME is required (or --resume runs/NAME)")
    out = Path(out).expanduser().resolve()
    saved = out / "sweep.yaml"
    if args.resume:
        if not saved.is_file():
            raise UserError(f"nothing to resume: {saved} does not exist")
        return TuneConfig.from_yaml(saved), True
    if saved.is_file():
        raise UserError(f"{out} already holds a sweep; add --resume to continue it, or choose another --out")
    for flag in ("gpus", "budget_trials", "cpus_per_trial", "max_windows"):
        if getattr(args, flag) is not None and getattr(args, flag) < (0 if flag == "gpus" else 1):
            raise UserError(f"--{flag.replace('_', '-')} must be {'>= 0' if flag == 'gpus' else '>= 1'}")
    if args.images and not Path(args.images).is_dir():
        raise UserError(f"--images {args.images}: not a folder")
    if args.images and args.archive:
        raise UserError("give --images or --archive, not both")
    for flag in ("layout_top", "layout_images"):
        if getattr(args, flag) is not None and getattr(args, flag) < (0 if flag == "layout_top" else 1):
            raise UserError(f"--{flag.replace('_', '-')} must be {'>= 0' if flag == 'layout_top' else '>= 1'}")
    fields = {
        "name": out.name, "out": str(out), "model": _model(args.model),
        "space": load_space_file(args.space) if args.space else {},
        **default_budget(args.budget_trials, args.budget_minutes),
        "max_p99_ms": args.max_p99_ms, "max_gpu_mem_gib": args.max_gpu_mem_gib, "min_fidelity": args.min_fidelity,
        "window_s": args.window_seconds, "max_windows": args.max_windows, "max_trial_s": args.max_trial_seconds,
        "images": str(Path(args.images).resolve()) if args.images else None,
        "archive": list(args.archive or []), "layout_top": args.layout_top, "layout_images": args.layout_images,
        "frame_size": _frame_size(args.frame_size), "seed": args.seed,
        "serve_config": str(Path(args.serve_config).resolve()) if args.serve_config else None,
    }
    return TuneConfig.parse(fields, source="yoloray tune"), False


def _resources(settings: TuneConfig, gpus: int | None, cpus: int | None) -> TuneConfig:
    import ray

    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0)) if gpus is None else gpus
    if gpus > total.get("GPU", 0):
        print(f"yoloray tune: warning: --gpus {gpus} but the cluster has {int(total.get('GPU', 0))} GPU(s) now; "
              "trials wait for the autoscaler", file=sys.stderr)
    if cpus is None:
        cpus = max(1, min(16, int(total.get("CPU", 1)) // gpus)) if gpus else 1
    return settings.model_copy(update={"gpus": gpus, "cpus_per_trial": cpus})


def load_inputs(settings: TuneConfig, units: list[dict] | None = None) -> list[bytes]:
    """The measured images: RUN/inputs when present (resume), else the archive's (`units`: its listing) first
    images or video frames, a folder's images or generated frames."""
    import cv2

    from yoloray.tune.archive import archive_images, video_frames

    folder = Path(settings.out) / "inputs"
    if folder.is_dir() and any(folder.iterdir()):
        return [p.read_bytes() for p in sorted(folder.iterdir())]
    if settings.archive:
        named = (video_frames if settings.video else archive_images)(settings, units or [])
    elif settings.images:
        files = sorted(p for p in Path(settings.images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"--images {settings.images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        named = [(f"{i:04d}{p.suffix.lower()}", p.read_bytes()) for i, p in enumerate(files[: settings.n_images])]
    else:
        from yoloray.data.scene import render_frame

        w, h = settings.frame_size
        named = []
        for i in range(settings.n_images):
            img, _ = render_frame(settings.seed, i, w, h)
            named.append((f"{i:04d}.jpg", cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()))
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in named:
        (folder / name).write_bytes(data)
    return [data for _, data in named]


def default_budget(trials: int | None, minutes: float | None) -> dict:
    """Both budgets when neither is given (a trial count and a wall-time cap); else what was given."""
    if trials is None and minutes is None:
        return {"budget_trials": DEFAULT_TRIALS, "budget_minutes": DEFAULT_MINUTES}
    return {"budget_trials": trials, "budget_minutes": minutes}


def search_plan(n_points: int, settings: TuneConfig) -> tuple[bool, int]:
    """(grid, trials): a grid over every point when they fit the trial budget, else that many Optuna trials
    (every point, until the time budget ends, when only --budget-minutes is given)."""
    if n_points <= (settings.budget_trials or DEFAULT_TRIALS):
        return True, n_points
    return False, settings.budget_trials or (n_points if settings.budget_minutes else DEFAULT_TRIALS)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(settings: TuneConfig, images: list[bytes], resume: bool, base: dict | None = None):
    from ray.tune.schedulers import ASHAScheduler

    from yoloray.tune.space import OptunaSpace, Space
    from yoloray.tune.trial import run_trial

    resources = {"cpu": settings.cpus_per_trial, "gpu": 1} if settings.gpus else {"cpu": settings.cpus_per_trial}
    weights = Path(settings.model).read_bytes() if Path(settings.model).is_file() else None  # for other nodes
    trainable = tune.with_resources(tune.with_parameters(
        run_trial, settings=settings.model_dump(mode="json"), images=images, weights=weights), resources)
    exp_dir = Path(settings.out) / "tune"
    if resume and tune.Tuner.can_restore(str(exp_dir)):
        print(f"yoloray tune: resuming {exp_dir} (finished trials are kept)", file=sys.stderr)
        return tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=False), None
    decode = base["decode"] if settings.video and base else None  # video: what a batch job decodes it with
    space = Space.build(settings.space, cuda=settings.gpus > 0, frame_size=settings.frame_size, base=base, decode=decode)
    for line in space.warnings():
        print(f"yoloray tune: warning: {line}", file=sys.stderr)
    points = space.points()
    grid, samples = search_plan(len(points), settings)
    tune_config = dict(metric=METRIC, mode="max", max_concurrent_trials=settings.gpus or None,
                       time_budget_s=settings.budget_minutes * 60 if settings.budget_minutes else None,
                       reuse_actors=True, trial_dirname_creator=trial_dirname)
    if grid:
        param_space = {"engine": tune.grid_search(points)}
        tune_config.update(num_samples=1)
        how = f"grid over all {len(points)} points"
    else:
        param_space = {}
        from yoloray.tune.optuna_search import DistinctOptunaSearch  # optuna only when it searches

        searcher = DistinctOptunaSearch(space=OptunaSpace(space), metric=METRIC, mode="max", seed=settings.seed)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=settings.max_windows,
                                  grace_period=min(3, settings.max_windows), reduction_factor=3)
        tune_config.update(num_samples=samples, search_alg=searcher, scheduler=scheduler)
        how = f"Optuna + ASHA, {samples} trials of {len(points)} points"
    print(f"yoloray tune: {space.describe()}; {how}; device {'cuda' if settings.gpus else 'cpu'}, "
          f"{settings.gpus or 'no'} GPU(s)", file=sys.stderr)
    run_config = tune.RunConfig(name="tune", storage_path=str(Path(settings.out)), verbose=0,
                                callbacks=[_progress_callback()])
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune.TuneConfig(**tune_config),
                      run_config=run_config), space


def _progress_callback():
    """A Tune callback that prints one line per finished trial."""
    from ray.tune import Callback

    class Progress(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            m, e = trial.last_result or {}, trial.config.get("engine", {})
            knobs = " ".join(f"{k}={e[k]}" for k in ("backend", "precision", "batch_size", "imgsz") if k in e)
            figures = f"{m.get('measured_images_per_s', 0):.1f} img/s, p99 {m.get('p99_ms', 0):.1f} ms"
            reason = f" ({m['reason']})" if m.get("reason") else ""
            print(f"  {trial.trial_id} {knobs}: {m.get('status', '?')}, {figures}{reason}", file=sys.stderr, flush=True)

    return Progress()


def default_profile(settings: TuneConfig, images: list[bytes], units: list[dict] | None = None):
    """(the profile `yoloray infer` runs with no flags on this cluster and these inputs, the sample, the hardware).
    Engine trials fix every knob a space file does not list at its value. Video: sampled from the listing."""
    from yoloray.config import Profile
    from yoloray.profile import Hardware, Sample, resolve

    hardware = Hardware.cluster()
    sample = Sample.of_units(units or []) if settings.video else Sample.of_images(images)
    if not settings.gpus:
        hardware = Hardware(cpus=hardware.cpus)
    return resolve(Profile(model=settings.model), hardware, sample), sample, hardware


def layout_level(settings: TuneConfig, default, sample, images: list[bytes], units: list[dict] | None = None):
    """A function the report calls with the engine trials: runs the layout level (tune/layout.py) for the best
    `layout_top` of them and returns its rows (kept in RUN/layout.parquet, so a resumed sweep skips them)."""
    import pandas as pd

    from yoloray.config import Profile
    from yoloray.profile import Hardware, resolve
    from yoloray.tune.archive import video_sample
    from yoloray.tune.layout import layout_points, run_level, saved_runs, write_sample
    from yoloray.tune.trial import engine_fields

    def run(top: list[tuple[str, dict]]) -> list[dict]:
        out = Path(settings.out)
        if not top or not settings.layout_top:
            return []
        hardware = Hardware.cluster()
        hardware = hardware if settings.gpus else Hardware(cpus=hardware.cpus)
        engines = [(tid, resolve(Profile.parse(engine_fields(point, settings), source="engine"), hardware, sample))
                   for tid, point in top]
        total = settings.layout_images or (20_000 if settings.gpus else 256)
        shards = (video_sample(units or [], out / "sample", total) if settings.video
                  else write_sample(images, out / "sample", total))
        video = default.decode if settings.video else None
        saved = out / "layout.parquet"
        done = saved_runs(pd.read_parquet(saved).to_dict("records")) if saved.is_file() else {}
        print(f"yoloray tune: layout level: {len(engines)} engine configuration(s) + the default profile, "
              f"{total:,} {'video frames' if video else 'archive members'} per run", file=sys.stderr)
        points = layout_points(settings.space, settings.gpus > 0, video, hardware.nvdec_engines)
        return run_level(engines, default, points, shards, out / "layout-run",
                         done, log=lambda line: print(line, file=sys.stderr, flush=True),
                         save=lambda rows: pd.DataFrame(rows).to_parquet(saved, index=False))

    return run


def _source_errors() -> tuple[type[Exception], ...]:
    from yoloray.data.inputs import SourceError

    return (SourceError,)


def _runtime_env() -> dict | None:
    """Ship the package to the workers when it is not installed (`ray job submit --working-dir .`)."""
    from importlib import metadata

    try:
        metadata.distribution("yoloray")
        return None
    except metadata.PackageNotFoundError:
        import yoloray

        return {"py_modules": [str(Path(yoloray.__file__).parent)]}


def run(settings: TuneConfig, resume: bool, gpus: int | None = None, cpus: int | None = None,
        address: str | None = None) -> int:
    import ray

    from yoloray.tune.archive import list_archive, with_archive, with_input_size
    from yoloray.tune.report import write_report

    started = connect(address, runtime_env=_runtime_env(), log_to_driver=False, configure_logging=False)
    try:
        units = list_archive(settings) if not resume or settings.video else None  # a resumed sweep has RUN/inputs
        if not resume:
            settings = with_archive(_resources(settings, gpus, cpus), units)
            Path(settings.out).mkdir(parents=True, exist_ok=True)
        images = load_inputs(settings, units)
        if not resume:
            settings = with_input_size(settings, images)
        settings.to_yaml(Path(settings.out) / "sweep.yaml")
        default, sample, hardware = default_profile(settings, images, units)
        print(f"yoloray tune: the default profile ({hardware.describe()}; {sample.describe()}):\n"
              f"{default.to_yaml()}", file=sys.stderr)
        tuner, _ = build_tuner(settings, images, resume, base=default.flat())
        results = tuner.fit()
        winner = write_report(results, settings, default, layout_level(settings, default, sample, images, units))
        if winner is not None and hardware.cuda:  # measured by the trials and layout runs (observe/budgets.py)
            from yoloray.observe.budgets import winner_lines
            from yoloray.profile import resolve

            winner = winner if winner.is_resolved() else resolve(winner, hardware, sample)
            print("\n".join(winner_lines(winner, hardware)))
    finally:
        if started:
            ray.shutdown()
    return 0 if winner is not None else 1


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        args = build_parser().parse_args(argv)
        settings, resume = settings_from_args(args)
        return run(settings, resume, gpus=args.gpus, cpus=args.cpus_per_trial, address=args.address)
    except (UserError, ConfigError, ClusterError, *_source_errors()) as e:
        print(f"yoloray tune: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("yoloray tune: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
