"""The `yoloray` command. Each subcommand imports its code only when it runs, so `--help` is instant.

Errors a user can cause end in one clear line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from yoloray.errors import UserError

os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_VERBOSE", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


PROFILE_ENV = "YOLORAY_PROFILE"  # a profile file used when --profile is not given


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", help="weights .pt or model YAML (default: the bundled demo detector)")
    g.add_argument("--profile", "--config", dest="config",
                   help=f"profile YAML (a tune winner's or a job's _profile.yaml, or a flat engine config; default: "
                   f"${PROFILE_ENV} when set); flags override its fields; fields left out or auto are resolved "
                   "for the hardware and inputs found")
    g.add_argument("--backend", help="auto | torch | torch-compile | onnxruntime (see `yoloray backends`); auto: "
                   "onnxruntime's CPU provider at fp32 on a CPU (exact, faster than torch), torch on CUDA")
    g.add_argument("--provider", help="onnxruntime provider: cpu | cuda | tensorrt (default: the best present; "
                   "tensorrt is built against ONNX Runtime's documented options, not run here)")
    g.add_argument("--imgsz", help="input size: 640 or HxW such as 384x640 (default auto: the frames' stride-aligned "
                   "rectangle, as ultralytics' rect letterbox; 1920x1080 frames -> 384x640)")
    g.add_argument("--precision", help="fp32 | fp16 | bf16 | int8 (onnxruntime cpu/tensorrt) (default auto: fp16 on "
                   "CUDA, fp32 on CPU)")
    g.add_argument("--calibration", help="int8: folder, glob or archive of your own images to calibrate on "
                   "(infer: default its own inputs)")
    g.add_argument("--cache-dir", dest="cache_dir", help="built-engine cache shared by actors and jobs: a path or "
                   "a pyarrow URI such as s3://bucket/dir (default $YOLORAY_CACHE or ~/.cache/yoloray)")
    g.add_argument("--batch-size", type=int, dest="batch_size", help="engine batch (default auto: 128 CUDA, 16 CPU)")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--decode", help="cpu (OpenCV / PyAV) | gpu (the GPU's JPEG decoder; NVDEC for video, needs "
                   "PyNvVideoCodec, not tested without a GPU) | hybrid (default auto: hybrid or gpu for JPEGs on CUDA, gpu for "
                   "video with NVDEC present, else cpu)")
    g.add_argument("--conf", type=float, help="confidence threshold (default 0.25)")
    g.add_argument("--iou", type=float, help="NMS IoU threshold (default 0.7)")
    g.add_argument("--max-det", type=int, dest="max_det", help="max detections per image (default 300)")


def _layout_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("layout (how the work is spread; never changes a detection)")
    g.add_argument("--actors-per-gpu", type=int, dest="actors_per_gpu", help="detector actors sharing one GPU")
    g.add_argument("--actors", type=int, help="detector actors in all (default: actors per GPU x GPUs, 1 on CPU)")
    g.add_argument("--gpus-per-actor", type=float, dest="gpus_per_actor",
                   help="GPU share of an actor, 1/N (0.5 puts two on a GPU); the same as --actors-per-gpu N")
    g.add_argument("--calls-per-actor", type=int, dest="calls_per_actor",
                   help="concurrent batches per actor, to overlap decode with inference")
    g.add_argument("--decode-threads", type=int, dest="decode_threads", help="CPU decode threads per actor")
    g.add_argument("--batches-per-call", type=int, dest="batches_per_call",
                   help="engine batches of rows per actor call; a call's last batch may be short")


FLAGS = ("model", "backend", "provider", "imgsz", "precision", "calibration", "cache_dir", "batch_size", "device",
         "decode", "conf", "iou", "max_det", "actors_per_gpu", "actors", "calls_per_actor", "decode_threads",
         "batches_per_call")

COUNTS = ("batch_size", "actors_per_gpu", "actors", "calls_per_actor", "decode_threads", "batches_per_call")


def engine_config(args):
    """The Profile from --profile (else $YOLORAY_PROFILE) plus flag overrides; fields may still be `auto`."""
    from yoloray.config import PROFILE_HINT, ConfigError, Profile

    fields = {}
    path = getattr(args, "config", None) or os.environ.get(PROFILE_ENV)
    if path:
        source = "" if getattr(args, "config", None) else f" (from ${PROFILE_ENV})"  # the file's name came from there
        try:
            fields = Profile.from_yaml(path, "profile file", source + PROFILE_HINT).model_dump()
        except ConfigError as e:  # said once, right after what is wrong, whatever the error
            raise ConfigError(str(e) if source in str(e) else f"{e}{source}") from None
    share = getattr(args, "gpus_per_actor", None)
    if share is not None:
        if not 0 < share <= 1 or abs(1 / share - round(1 / share)) > 0.05 * round(1 / share):
            raise UserError(f"--gpus-per-actor {share}: give 1/N of a GPU (1, 0.5, 0.33, 0.25...), or --actors-per-gpu N")
        if getattr(args, "actors_per_gpu", None) not in (None, round(1 / share)):
            raise UserError("--gpus-per-actor and --actors-per-gpu disagree; give one of them")
        args.actors_per_gpu = round(1 / share)
    for name in FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            if name in COUNTS and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
            fields[name] = value
    return Profile.parse(fields, source="options")


# ----------------------------------------------------------------------------------------- commands
def _detect_rows(detector, paths: list[Path]) -> list[dict]:
    from yoloray.batch.video import detect_video
    from yoloray.data.inputs import kind_of

    videos = [p for p in paths if kind_of(p.name) == "video"]
    images = [p for p in paths if p not in videos]
    rows = detector.detect([p.read_bytes() for p in images]).to_rows()
    for p, row in zip(images, rows):
        row["key"] = str(p)
        row["engine"] = detector.key
    for p in videos:  # every frame of each clip, decoded by PyAV (--decode gpu: NVDEC, with PyNvVideoCodec)
        rows.extend(detect_video(detector, str(p)))
    return rows


def _print_rows(rows: list[dict], args) -> None:
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for row in rows:
        if row["error"]:
            print(f"{row['key']}: ERROR {row['error']}")
            continue
        print(f"{row['key']}: {row['width']}x{row['height']}, {len(row['detections'])} detections")
        for d in row["detections"][: args.show]:
            print(
                f"  {d['label']:<12} {d['score']:.3f}  "
                f"[{d['x1']:.1f}, {d['y1']:.1f}, {d['x2']:.1f}, {d['y2']:.1f}]"
            )


def _detect_profile(args, paths: list[Path]):
    """The detect command's profile, resolved for this machine and a sample of the files (a few stills, and the
    first clip's frames by its index: nothing decoded), as `infer` samples its units; printed with -v."""
    from yoloray.data.inputs import kind_of
    from yoloray.data.units import list_units
    from yoloray.profile import Hardware, Sample, resolve, summary

    profile = engine_config(args)
    videos = [p for p in paths if kind_of(p.name) == "video"]
    stills = [p for p in paths if kind_of(p.name) != "video"]
    sample = Sample.of_images([p.read_bytes() for p in stills[:8]])
    if videos:
        sample += Sample.of_units(list_units([str(videos[0])]))
    hardware = Hardware.local()
    config = resolve(profile, hardware, sample)
    if args.verbose:
        print(summary(config, hardware, sample, set(profile.auto_fields())), file=sys.stderr)
    return config


def cmd_detect(args) -> int:
    from yoloray.detector import Detector
    from yoloray.observe.trace import Tracer, stage

    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"no such file: {', '.join(missing)}")
    config = _detect_profile(args, paths)
    detector = Detector(config).warmup()
    tracer = Tracer(args.trace, detector.device.type == "cuda") if args.trace else None
    with tracer.call() if tracer else contextlib.nullcontext():
        rows = _detect_rows(detector, paths)
        with stage("write", detector.device.type == "cuda"):
            _print_rows(rows, args)
    if tracer:
        tracer.close()
        print(f"trace: {tracer.path} (open in https://ui.perfetto.dev or chrome://tracing)\n{tracer.table}",
              file=sys.stderr)
    return 1 if all(r["error"] for r in rows) else 0


def init_ray(address: str | None) -> bool:
    """Ray for `infer`: a new local Ray without --address, else the cluster named (yoloray/cluster.py). True
    when this call connected (the caller shuts down)."""
    from yoloray.cluster import connect

    return connect(address, log_to_driver=False, configure_logging=False, logging_level=logging.WARNING)


def cmd_infer(args) -> int:
    from yoloray.batch import ActorOptions, run_job
    from yoloray.data.inputs import SourceOptions
    from yoloray.data.units import list_units
    from yoloray.observe.budgets import after_job, budgets_of
    from yoloray.observe.job_observer import JobObserver, run_label
    from yoloray.observe.quiet import quiet_ray_startup
    from yoloray.profile import Hardware, Sample, resolve
    from yoloray.profile import summary as profile_summary
    from yoloray.runlog import log_path, ray_output_to

    profile = engine_config(args)
    if profile.precision == "int8" and profile.calibration is None:  # calibrate on the job's own frames
        profile = profile.replace(calibration=args.sources[0])
    source_options = SourceOptions(video_stride=args.video_stride, video_fps=args.video_fps,
                                   video_start=args.start, video_end=args.end)
    units = list_units(args.sources, source_options)  # missing / empty / unsupported inputs fail before Ray starts
    log = log_path("infer")
    with ray_output_to(log) as terminal:
        try:
            quiet_ray_startup(args.verbose)
            started = init_ray(args.address)
            try:
                hardware, sample = Hardware.cluster(), Sample.of_units(units, source_options)
                config = resolve(profile, hardware, sample)  # ConfigError for an explicit value that cannot run
                print(profile_summary(config, hardware, sample, set(profile.auto_fields())), file=terminal)
                obs = JobObserver(units, source_options, args.run_name or run_label(args.out), args.trace,
                                  args.verbose, stream=terminal)
                with obs:
                    summary = run_job(
                        args.sources,
                        args.out,
                        config,
                        dataclasses.replace(ActorOptions.from_layout(config.layout), observe=obs.actor_observe),
                        source_options,
                        rows_per_part=args.part_rows,
                        units=units,
                        seconds_per_part=args.part_seconds,
                        progress=obs.progress,
                    )
            finally:
                if started:
                    import ray

                    ray.shutdown()
        except BaseException as e:
            import traceback

            traceback.print_exc()  # into the log
            e.log = log  # main() names it
            raise
        if summary.images == 0 and summary.skipped_done:
            print(f"nothing to do: all {summary.skipped_done:,} inputs already have results in {args.out}",
                  file=terminal)
            return 0
        print(summary.text(), file=terminal)
        print(obs.report(), file=terminal)
        if warning := after_job(budgets_of(obs.received), config.actors_per_gpu):  # ran at a default too large
            print(warning, file=terminal)
        print(f"ray log       {log}", file=terminal)
    return 0


def cmd_demo(args) -> int:
    from yoloray.demo import run_demo

    return run_demo(Path(args.out), frames=args.frames, device=args.device)


def cmd_sample_data(args) -> int:
    from yoloray.data.synthetic import generate
    from yoloray.observe.live import LiveLine, Rate

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    rendered = Rate(args.frames + (args.video_frames if "video" in formats else 0))

    def count(n: int) -> None:
        rendered.done += n

    with LiveLine("sample-data", lambda _: rendered.fields("frames")):
        data = generate(
            args.out, frames=args.frames, seed=args.seed, width=args.width, height=args.height,
            formats=formats, video_frames=args.video_frames, workers=args.workers, progress=count,
        )
    print(f"wrote {data.frames} frames to {data.root} (dataset YAML: {data.dataset_yaml})")
    return 0


def cmd_finetune(args) -> int:
    from yoloray.finetune import main as finetune_main

    return finetune_main(args.rest)


def cmd_eval(args) -> int:
    from yoloray.evaluate import main as eval_main

    return eval_main(args.rest)


def cmd_tune(args) -> int:
    from yoloray.tune.sweep import main as tune_main

    return tune_main(args.rest)


def cmd_serve(args) -> int:
    from yoloray.serve.app import main as serve_main

    return serve_main(args.rest)


def cmd_backends(args) -> int:
    from yoloray.engines.capabilities import PROVIDERS, capability_table
    from yoloray.engines.ort_providers import missing

    def status(provider: str) -> str:
        reason = missing(provider, "cpu" if provider == "cpu" else "cuda")
        return "available" if reason is None else f"not available: {reason}"

    print(capability_table({p: status(p) for p in PROVIDERS}))
    return 0


# ----------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yoloray",
        description="YOLO detection over image and video archives on Ray: batch, tune, serve.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("detect", help="detect objects in image or video files and print the detections")
    d.add_argument("images", nargs="+", metavar="FILE", help="images, or videos (.mp4 .mkv .avi .mov: every frame)")
    _engine_args(d)
    d.add_argument("--json", action="store_true", help="print JSON rows in the output schema")
    d.add_argument("--show", type=int, default=10, help="detections listed per image (text output)")
    d.add_argument("--trace", metavar="DIR", help="write a torch profiler trace (Perfetto / chrome://tracing JSON) "
                   "of the detect call, with a range per stage (NVTX too on CUDA: not run without a GPU), and print a "
                   "per-stage table (stderr)")
    d.set_defaults(func=cmd_detect)

    i = sub.add_parser("infer", help="run the detector over archives on Ray Data into Parquet (resumable)")
    i.add_argument("sources", nargs="+", metavar="SOURCE", help="folders, globs, .tar/.zip/.parquet, videos; local or s3:// gs:// file://")
    i.add_argument("--out", required=True, help="output folder of Parquet parts (rerun the same command to resume)")
    _engine_args(i)
    _layout_args(i)
    i.add_argument("--video-stride", type=int, default=1, dest="video_stride", help="every Nth video frame")
    i.add_argument("--video-fps", type=float, dest="video_fps", help="resample videos to this frame rate")
    i.add_argument("--start", type=float, help="videos: first second to detect (presentation time; default 0)")
    i.add_argument("--end", type=float, help="videos: detect frames before this second (default: to the end)")
    i.add_argument("--part-rows", type=int, dest="part_rows",
                   help="write a Parquet part every N result rows at the latest (default 4096)")
    i.add_argument("--part-seconds", type=float, default=30.0, dest="part_seconds",
                   help="write a Parquet part every S seconds at the latest while results come (default 30)")
    i.add_argument("--address", help="Ray cluster to join: HOST:PORT, ray://HOST:10001 or auto (the running one); "
                   "default: a new local Ray for this command (RAY_ADDRESS, when set, counts as --address)")
    i.add_argument("--run-name", dest="run_name",
                   help="the `run` label of the job's metrics (default: the --out folder's name)")
    i.add_argument("--trace", metavar="DIR", help="write a torch profiler trace (Perfetto / chrome://tracing JSON) "
                   "of one actor's first call (a range per stage; NVTX too on CUDA: not run without a GPU) and a "
                   "per-stage table to DIR")
    i.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                   help="keep Ray Data's own progress blocks and per-run lines (in the ray log; quieted by default)")
    i.set_defaults(func=cmd_infer)

    m = sub.add_parser("demo", help="generate sample footage and run the detector on it (the README's demo)")
    m.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    m.add_argument("--frames", type=int, default=48, help="sample frames to generate (default 48)")
    m.add_argument("--device", default="auto", help="auto | cpu | cuda")
    m.set_defaults(func=cmd_demo)

    s = sub.add_parser("sample-data", help="generate labelled inspection-line footage (images, tar, zip, parquet, video)")
    s.add_argument("out", metavar="OUT")
    s.add_argument("--frames", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--width", type=int, default=1920)
    s.add_argument("--height", type=int, default=1080)
    s.add_argument("--formats", default="folder,tar,zip,parquet,video", help="comma list of folder,tar,zip,parquet,video")
    s.add_argument("--video-frames", type=int, default=60, dest="video_frames")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.set_defaults(func=cmd_sample_data)

    f = sub.add_parser("finetune", help="fine-tune a detector with the ultralytics trainer as a Ray task", add_help=False)
    f.add_argument("rest", nargs=argparse.REMAINDER)
    f.set_defaults(func=cmd_finetune)

    e = sub.add_parser("eval", help="COCO mAP of a predictions Parquet against YOLO label files", add_help=False)
    e.add_argument("rest", nargs=argparse.REMAINDER)
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("tune", help="search the engine configuration with the most images/s under constraints (Ray Tune)",
                       add_help=False)
    t.add_argument("rest", nargs=argparse.REMAINDER)
    t.set_defaults(func=cmd_tune)

    v = sub.add_parser("serve", help="run a Ray Serve config (the tune winner or serve_configs/detector.yaml)",
                       add_help=False)
    v.add_argument("rest", nargs=argparse.REMAINDER)
    v.set_defaults(func=cmd_serve)

    b = sub.add_parser(
        "backends", help="print which engine knobs each backend and ONNX Runtime provider honours, and where each is verified",
        description="The capability table that config validation and the tune space are built from. The onnxruntime "
        "TensorRT provider is built against ONNX Runtime's documented TensorRT provider options and has not been run "
        "here (no machine of this project has TensorRT); the CUDA provider is checked by tests/gpu with onnxruntime-gpu.")
    b.set_defaults(func=cmd_backends)
    return p


def _user_errors() -> tuple[type[Exception], ...]:
    """Error types of the subcommands that mean 'fix your input', imported only if already loaded."""
    found = []
    for module, name in (("yoloray.data.inputs", "SourceError"), ("yoloray.batch.pipeline", "JobError")):
        mod = sys.modules.get(module)
        if mod is not None:
            found.append(getattr(mod, name))
    return tuple(found)


def _log_note(e: BaseException) -> str:
    log = getattr(e, "log", None)
    return f" (Ray's output and the traceback: {log})" if log else ""


# subcommands with their own argument parser: everything after the name is theirs (including --help)
DELEGATED = {"finetune": cmd_finetune, "eval": cmd_eval, "tune": cmd_tune, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Ctrl-C anywhere (Ray starting, a job running, the cleanup after it) is one line and
    exit code 130: each command's own `finally` has shut its Ray down by then, and a batch job resumes when run
    again."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _run(argv)
    except KeyboardInterrupt:
        command = next((a for a in argv if not a.startswith("-")), None)
        print(f"yoloray{f' {command}' if command else ''}: interrupted", file=sys.stderr)
        return 130


def _run(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:
        return int(DELEGATED[argv[0]](argparse.Namespace(rest=argv[1:])) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    from yoloray.config import ConfigError
    from yoloray.engines.base import EngineError

    try:
        return int(args.func(args) or 0)
    except (UserError, ConfigError, EngineError, FileNotFoundError, ConnectionError, *_user_errors()) as e:
        if args.verbose:
            raise
        print(f"yoloray {args.command}: error: {e}{_log_note(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # not the user's doing: one line, the traceback in the run's log when there is one
        if args.verbose or not hasattr(e, "log"):
            raise
        print(f"yoloray {args.command}: error: {type(e).__name__}: {e}{_log_note(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
