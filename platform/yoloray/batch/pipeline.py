"""Build and run the batch job: sources -> map_batches(Predictor) -> Parquet parts, exactly once.

Resume is key-level bookkeeping in the output folder: the driver writes results as Parquet parts as they come
(batch/parts.py: every `rows_per_part` rows or `seconds_per_part` seconds, atomically: temp name, then rename).
A rerun reads the `key` column of the parts already there, skips those inputs, and writes only the rest; a
finished job finds nothing to do and says so. Any crash (driver, actor, node) loses at most the rows not yet
renamed into place, which the rerun recomputes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from yoloray.batch.parts import PartWriter, batches_or_ticks
from yoloray.batch.predecode import predecode
from yoloray.batch.predictor import Predictor
from yoloray.batch.video import drop_done_frames, expand_on_cpu, frames_per_row, kept_per_segment
from yoloray.config import Layout, Profile
from yoloray.data.inputs import SourceOptions
from yoloray.data.sources import read_units
from yoloray.data.units import list_units
from yoloray.engines.base import EngineError, check_weights_file
from yoloray.observe.errors import error_kind
from yoloray.observe.reports import ActorObserve

log = logging.getLogger(__name__)

JOB_FILE = "_job.json"
# the resolved profile the job ran, beside the results; `_` keeps Parquet readers of the folder from opening it
PROFILE_FILE = "_profile.yaml"
SUMMARY_FILE = "_summary.json"
COMPLETE_FILE = "_complete.json"  # unit ids and source options of a run that finished; a rerun of both returns at once
ROWS_PER_PART = 4096
SECONDS_PER_PART = 30.0
READ_TASK_CPUS = 1.0  # Ray Data's default for a read task: what must stay free beside the actor pool
ROWS_PER_PART_ENV = "YOLORAY_ROWS_PER_PART"  # overrides the default rows per part (tests, small outputs)


class JobError(ValueError):
    """The job cannot start as asked; the message says what to change."""


@dataclass
class ActorOptions:
    """The actor pool Ray Data gets; `from_layout` makes it from a profile's layout (what `run_job` does when
    none is given)."""

    actors: int | None = None  # actors in the pool (default: actors_per_gpu x the cluster's GPUs, or 1 on CPU)
    gpus_per_actor: float | None = None  # default 1/actors_per_gpu when the cluster has GPUs, else 0
    actors_per_gpu: int = 1
    cpus_per_actor: float = 1.0
    calls_per_actor: int = 1  # concurrent batches inside one actor (overlaps decode with inference)
    decode_threads: int | None = None  # CPU decode threads per actor (default: all cores)
    # Engine batches of rows Ray Data hands one actor call. Blocks rarely divide into whole batches, and a
    # call's last batch is short (read blocks of 100 rows, batch 128: calls of 200 rows ran as 128 + 72), so
    # more batches per call means fewer short batches and fewer calls.
    batches_per_call: int = 4
    observe: ActorObserve | None = None  # metric labels, --trace, reports to the driver (observe/actor.py)

    def layout_fields(self) -> dict:
        """These options as the profile's layout fields (what `run_job` records in the profile it writes)."""
        per_gpu = max(1, round(1 / self.gpus_per_actor)) if self.gpus_per_actor else self.actors_per_gpu
        return {"actors": self.actors, "actors_per_gpu": per_gpu, "calls_per_actor": self.calls_per_actor,
                "decode_threads": self.decode_threads, "batches_per_call": self.batches_per_call}

    @classmethod
    def from_layout(cls, layout: Layout) -> ActorOptions:
        return cls(actors=layout.actors, actors_per_gpu=layout.actors_per_gpu, calls_per_actor=layout.calls_per_actor,
                   decode_threads=layout.decode_threads, batches_per_call=layout.batches_per_call)


@dataclass
class Summary:
    out: str
    images: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    detections_per_class: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped_done: int = 0
    engine: str = ""
    first_result_s: float = 0.0  # start-up: listing, actor start and warmup, first batch
    write_s: float = 0.0  # time spent writing Parquet parts on the driver

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def text(self) -> str:
        lines = [
            f"images        {self.images:,} new ({self.skipped_done:,} already done before this run)",
            f"throughput    {self.images_per_s:,.1f} images/s over {self.seconds:.1f} s (actor start included)",
            f"errors        {sum(self.errors.values()):,}"
            + "".join(f"\n  {n:>6,}  {kind}" for kind, n in sorted(self.errors.items(), key=lambda kv: -kv[1])),
            "detections    " + (", ".join(f"{k}: {v:,}" for k, v in sorted(self.detections_per_class.items())) or "none"),
            f"engine        {self.engine}",
            f"output        {self.out}",
        ]
        return "\n".join(lines)


def _resources(options: ActorOptions) -> tuple[float, int]:
    """GPUs per actor and actors, from the options and the cluster; JobError for options that cannot run."""
    import ray

    if options.batches_per_call < 1:
        raise JobError(f"--batches-per-call must be >= 1, got {options.batches_per_call}")

    resources = ray.cluster_resources() if ray.is_initialized() else {}
    cluster_gpus = resources.get("GPU", 0)
    if options.gpus_per_actor is not None:
        gpus = options.gpus_per_actor
    else:
        gpus = 1.0 / options.actors_per_gpu if cluster_gpus else 0.0
    if gpus and not cluster_gpus:
        raise JobError(f"--gpus-per-actor {gpus} asked for, but the Ray cluster has no GPUs")
    if options.actors is not None:
        actors = options.actors
        if actors < 1:
            raise JobError(f"--actors must be >= 1, got {actors}")
        if gpus and actors * gpus > cluster_gpus + 1e-9:
            raise JobError(f"{actors} actors x {gpus} GPU need {actors * gpus:g} GPUs; the Ray cluster has "
                           f"{cluster_gpus:g}: lower --actors or --gpus-per-actor")
    elif gpus:
        actors = max(1, int(cluster_gpus / gpus + 1e-6))  # 1 GPU / (1/3 GPU) is 3 actors, not 2.9999
    else:
        actors = 1
    cpus = resources.get("CPU")
    if cpus is not None and actors * options.cpus_per_actor > cpus - READ_TASK_CPUS + 1e-9:
        raise JobError(
            f"{actors} actors x {options.cpus_per_actor:g} CPU leave no CPU for the read tasks on this Ray cluster "
            f"of {cpus:g} CPUs; lower --actors (inputs are read in Ray tasks beside the actors)"
        )
    return gpus, actors


def detect(ds, config: Profile, options: ActorOptions | None = None, frames_per_row: float | None = None,
           segment_frames: float | None = None):
    """Ray Dataset of input rows (key, image, source, frame, ts, error[, segment]) -> Dataset of output rows.

    Composes with a user's own pipeline: anything upstream (filters, unions, their own readers) and
    downstream (joins, writes) is plain Ray Data. Missing optional columns are filled with nulls.
    `frames_per_row`: set when the rows hold video segment references (batch/video.py `frames_per_row`);
    the CPU share of the segments is then decoded upstream and actor calls are sized in frames.
    `segment_frames`: when every row is a segment reference, their mean kept frames (`kept_per_segment`): the
    rows are cut into blocks of one actor call's frames, so the segments of a long file (which its one read
    task emits together) spread over the actors' calls and the CPU decode tasks. A profile with `auto`
    fields is resolved for the cluster (give `imgsz`, or resolve it with a Sample first)."""
    from ray.data import ActorPoolStrategy

    if not config.is_resolved():  # no sample here: the input size falls back to square 640 unless given
        from yoloray.profile import Hardware, resolve

        config = resolve(config, Hardware.cluster())
    options = options or ActorOptions.from_layout(config.layout)
    columns = ds.columns(fetch_if_missing=False)  # known without running anything (e.g. from_items)
    if columns is not None:
        _check_columns(columns)
    gpus, actors = _resources(options)  # JobError for options that cannot run, before they reach the profile
    # the actors remember their GPU memory budget for this profile (observe/budgets.py)
    running = config.replace(calls_per_actor=options.calls_per_actor, batches_per_call=options.batches_per_call)
    options = replace(options, observe=(options.observe or ActorObserve()).for_profile(running))
    ds = ds.map_batches(_normalize, batch_format="pyarrow", batch_size=None)
    if segment_frames:  # a streaming split: never fused into the maps after it, so they run per block
        ds = ds.repartition(target_num_rows_per_block=max(
            1, round(config.batch_size * options.batches_per_call / segment_frames)))
    predecoded = config.decode == "hybrid"
    # The CPU share is decoded in Ray tasks fused with the reads, not by threads in the actor: Ray Data fuses a
    # task map into the actor's operator only when their resources match (num_gpus 0 and num_cpus 1: a CPU-only
    # actor of one CPU, where it then runs in the actor's calls), never into a GPU actor.
    if predecoded:
        ds = ds.map_batches(predecode, batch_format="pyarrow", batch_size=None, fn_kwargs={
            "imgsz": config.imgsz, "max_pixels": config.max_pixels, "reduced_decode": config.reduced_decode,
            "share": config.hybrid_cpu_share})
    if frames_per_row is not None and config.decode != "gpu":  # video: the CPU share decoded in Ray tasks
        share = 1.0 if config.decode == "cpu" else config.hybrid_cpu_share
        ds = ds.map_batches(expand_on_cpu, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"imgsz": config.imgsz, "share": share})
    rows_per_call = config.batch_size * options.batches_per_call / (frames_per_row or 1.0)
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"config": config.model_dump(mode="json"), "decode_threads": options.decode_threads,
                               "predecoded": predecoded, "observe": options.observe,
                               "video": frames_per_row is not None and config.decode != "cpu"},
        batch_size=max(1, round(rows_per_call)),  # the Detector runs it in engine batches
        batch_format="pyarrow",
        # A fixed pool: every actor starts (and warms) at once, instead of the pool growing from one mid-job.
        # Ray Data runs one call of a class at a time per actor unless true multi-threading is on; the Detector
        # is thread-safe (a CUDA stream per thread), so concurrent calls really overlap.
        compute=ActorPoolStrategy(size=actors, max_concurrent_calls_per_actor=max(1, options.calls_per_actor),
                                  enable_true_multi_threading=options.calls_per_actor > 1),
        num_gpus=gpus,
        num_cpus=options.cpus_per_actor,
    )


def _check_columns(columns: list[str]) -> None:
    if "image" not in columns or "key" not in columns:
        raise JobError(f"input rows need 'key' and 'image' (encoded bytes) columns; got {columns}")


def _normalize(batch: pa.Table) -> pa.Table:
    _check_columns(batch.column_names)
    n = batch.num_rows
    for name, typ in (("source", pa.string()), ("frame", pa.int64()), ("ts", pa.float64()), ("error", pa.string()),
                      ("segment", pa.string())):
        if name not in batch.column_names:
            batch = batch.append_column(name, pa.nulls(n, typ))
    return batch


def _drop_done(batch: pa.Table, done: frozenset) -> pa.Table:
    keep = pc.invert(pc.is_in(batch.column("key"), value_set=pa.array(list(done), pa.string())))
    return drop_done_frames(batch.filter(keep), done)


def _fs(out: str) -> tuple[pafs.FileSystem, str]:
    if "://" in out:
        return pafs.FileSystem.from_uri(out)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(out)


def _parts(fs: pafs.FileSystem, root: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.path for i in infos if i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))


def done_keys(out: str) -> set[str]:
    fs, root = _fs(out)
    keys: set[str] = set()
    for path in _parts(fs, root):
        keys.update(pq.read_table(path, columns=["key"], filesystem=fs).column("key").to_pylist())
    return keys


def _check_job_file(fs, root: str, config: Profile, sources: list[str]) -> None:
    """Record the output key of a new job; refuse to resume one whose output key differs (a change of batch
    size or layout keeps it, so a resumed job may run faster settings)."""
    path = f"{root}/{JOB_FILE}"
    info = fs.get_file_info(path)
    record = {"output_key": config.output_key(), "sources": list(sources), "profile": config.model_dump(mode="json")}
    if info.type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            old = json.loads(f.read())
        if old.get("output_key") != record["output_key"] and _parts(fs, root):
            before = old.get("output_key") or f"{old.get('engine')}, written by an earlier yoloray"
            raise JobError(
                f"{root} holds results of settings that give other detections (output key {before}, now "
                f"{record['output_key']}); use a new --out folder to run these settings"
            )
        if old.get("output_key") == record["output_key"]:
            return  # else: a start that failed before any result; these settings take the folder
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(record, indent=1).encode())


def _check_model(config: Profile) -> None:
    """Fail on the driver, before any actor starts, when the weights file is missing: an actor that dies in its
    constructor makes Ray Data log a full stack trace and raise an ActorDiedError instead of a clear message.
    Skipped under Ray Client (the path is resolved on the cluster, not here)."""
    from ray.util.client import ray as client_ray

    if client_ray.is_connected():
        return
    try:
        check_weights_file(config.model)
    except EngineError as e:
        raise JobError(str(e)) from None


_USER_ERROR_LINE = re.compile(r"^(?:yoloray\.\S+\.)?(?:EngineError|ConfigError|JobError): (.+)$", re.M)


def _actor_init_error(exc: BaseException) -> str | None:
    """The user-facing message when the detector actor failed in its constructor (bad weights, bad config)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "actor_init_failed", False):
            m = _USER_ERROR_LINE.search(str(exc))
            return m.group(1).strip() if m else None
        exc = exc.__cause__ or exc.__context__
    return None


def run_job(
    sources: list[str],
    out: str,
    config: Profile,
    options: ActorOptions | None = None,
    source_options: SourceOptions | None = None,
    rows_per_part: int | None = None,
    units: list[dict] | None = None,
    seconds_per_part: float = SECONDS_PER_PART,
    progress=None,
) -> Summary:
    """Run (or resume) detection over `sources` into the Parquet folder `out`. Needs ray initialised.

    A part is written every `rows_per_part` rows or `seconds_per_part` seconds, whichever comes first;
    `rows_per_part` defaults to $YOLORAY_ROWS_PER_PART when set, else ROWS_PER_PART. `units` are the
    sources' `list_units` when the caller has listed them already. `progress` (observe/job_progress.py) is
    told the rows already done and each batch of new rows."""
    t0 = time.perf_counter()
    if rows_per_part is None:
        rows_per_part = int(os.environ.get(ROWS_PER_PART_ENV) or ROWS_PER_PART)
    if rows_per_part < 1:
        raise JobError(f"--part-rows must be >= 1, got {rows_per_part}")
    if not seconds_per_part > 0:
        raise JobError(f"--part-seconds must be > 0, got {seconds_per_part}")
    fs, root = _fs(out)
    source_options = source_options or SourceOptions()
    if units is None:  # SourceError for missing / empty / unsupported inputs
        units = list_units(sources, source_options)
    if options is not None:  # explicit actor options (JobError if they cannot run): the profile records them
        _resources(options)
        config = config.replace(**options.layout_fields())
    if not config.is_resolved():
        from yoloray.profile import Hardware, Sample, resolve

        config = resolve(config, Hardware.cluster(), Sample.of_units(units, source_options))
        log.info("resolved profile:\n%s", config.to_yaml())
    options = options or ActorOptions.from_layout(config.layout)
    gpus, _ = _resources(options)  # bad actor options fail before the output folder is touched
    if not gpus and (reasons := config.cuda_only()):  # would fail in every actor's constructor
        raise JobError(f"{reasons[0]} (the detector actors get no GPU: the Ray cluster has none, or "
                       "--gpus-per-actor is 0)")
    _check_model(config)
    _check_job_file(fs, root, config, sources)
    done = frozenset(done_keys(out))
    summary = Summary(out=out, engine=config.output_key(), skipped_done=len(done))
    # a video is one unit whatever frames it yields: the source options (stride, time range) say which ones
    finished = {"units": sorted(u["unit_id"] for u in units), "options": asdict(source_options)}
    if done and _completed(fs, root) == {**finished, "rows": len(done)}:  # finished, same inputs, all rows
        summary.seconds = time.perf_counter() - t0
        return summary  # writes nothing, not even the profile: the one there is what ran
    with fs.open_output_stream(f"{root}/{PROFILE_FILE}") as f:  # what runs: `infer --profile` reruns it
        f.write(config.to_yaml().encode())
    if progress is not None:
        progress.begin(len(done))
    ds = read_units(units, source_options)
    if done:
        ds = ds.map_batches(_drop_done, batch_format="pyarrow", batch_size=None, fn_kwargs={"done": done})
    video = any(u["kind"] == "video" for u in units)
    kept = kept_per_segment(units, source_options) if video else None  # a few files indexed here, once
    per_row = frames_per_row(kept, config.decode, config.hybrid_cpu_share) if video else None
    results = detect(ds, config, options, per_row, kept)
    writer = PartWriter(fs, root, uuid.uuid4().hex[:8], rows_per_part, seconds_per_part, error_kind)
    try:
        for batch in batches_or_ticks(results.iter_batches(batch_format="pyarrow", batch_size=None), writer.wait_s):
            if batch is None:  # no result for a while: the buffered rows are due
                writer.flush()
                continue
            if not summary.first_result_s:
                summary.first_result_s = time.perf_counter() - t0
            writer.add(batch)
            if progress is not None:
                progress.rows(batch)
            if writer.wait_s() == 0.0:
                writer.flush()
    except Exception as e:
        writer.flush()  # what came back before the failure is kept: a rerun does only the rest
        message = _actor_init_error(e)
        if message is None:
            raise
        raise JobError(f"the detector actor (batch/predictor.py Predictor) failed to start: {message}. Fix the "
                       "engine configuration and rerun; the same --out folder takes it") from e
    writer.flush()
    written = writer.written
    summary.images = len(written)
    summary.errors = dict(writer.errors)
    summary.detections_per_class = {str(k): int(v) for k, v in writer.per_class.items()}
    summary.write_s = writer.write_s
    summary.seconds = time.perf_counter() - t0
    with fs.open_output_stream(f"{root}/{COMPLETE_FILE}") as f:  # every unit read and written
        f.write(json.dumps({**finished, "rows": len(done) + len(written)}).encode())
    if not written and done:  # nothing to do: keep the record of the run that did the work
        return summary
    with fs.open_output_stream(f"{root}/{SUMMARY_FILE}") as f:
        f.write(json.dumps({**asdict(summary), "images_per_s": summary.images_per_s}, indent=1).encode())
    return summary


def _completed(fs: pafs.FileSystem, root: str) -> dict | None:
    """Unit ids, source options and row count of the last run that finished, if one did."""
    path = f"{root}/{COMPLETE_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())
