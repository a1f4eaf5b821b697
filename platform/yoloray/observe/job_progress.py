"""Progress of a batch job on the driver: units and frames done/total, frames/s, errors, ETA.

    infer: units 3/10  [#######.................] frames 1,234/4,000 (31%)  52.1 frames/s  ETA 0:53  errors 2

Fed by the output rows as the driver collects them (`JobProgress.rows(batch)`): a row is one frame. Totals
come from the read units (data/units.py) where they are known without reading the data: a files unit lists
its images, a Parquet unit its row group's rows, a local tar or zip its image members (counted here from
the headers), a video file the frame count its container states (MP4/MOV/AVI; over --video-stride), both
counted in a thread beside the job, one source after another until all are counted or the job ends (the totals
appear when counted; until then the line shows no ETA); a video segment unit its frame range (over
--video-stride). A video is never demuxed here, so a --video-fps resample, a --start/--end range, or a container
that states no frame count (Matroska) is unknown. When any total is unknown the frame count shows no total (and,
once counting is over, the ETA comes from units). A unit counts as done once all rows of its source have
arrived; a resumed run starts from the rows already written (shown as done) and counts units this run finished.
"""

from __future__ import annotations

import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from yoloray.data.inputs import IMAGE_EXTS, SourceOptions, join_path
from yoloray.data.video_index import is_video_file, stated_frames
from yoloray.observe.live import LiveLine, Rate, duration


@dataclass
class _Group:
    """Units whose rows share sources: a files unit (its files), or all units of one archive/parquet/video."""

    units: int
    expected: int | None
    seen: int = 0


def _count_members(unit: dict) -> int | None:
    """Image members of a local tar/zip (what the reader makes rows of), or None (remote, unreadable)."""
    if "://" in unit.get("root", "") or "://" in unit.get("source", ""):
        return None
    path = join_path(unit["root"], unit.get("rel", unit["prefix"]))  # rel: the real name (prefix is escaped)
    try:
        if unit["kind"] == "tar":
            with tarfile.open(path) as tf:
                return sum(1 for m in tf if m.isfile() and m.name.lower().endswith(IMAGE_EXTS))
        with zipfile.ZipFile(path) as zf:
            return sum(1 for i in zf.infolist() if not i.is_dir() and i.filename.lower().endswith(IMAGE_EXTS)
                       and not i.filename.startswith("__MACOSX/"))
    except (OSError, tarfile.TarError, zipfile.BadZipFile, KeyError):
        return None


def expected_rows(unit: dict, options: SourceOptions, read_headers: bool = True) -> int | None:
    """Rows a unit yields, when known without reading its data (see the module docstring); without
    `read_headers`, only what the unit itself says (no tar/zip index, no video header is opened)."""
    kind = unit.get("kind")
    if kind == "files":
        return len(unit["keys"])
    if kind == "parquet":
        return unit.get("num_rows")
    if kind in ("tar", "zip"):
        return unit.get("members") or (_count_members(unit) if read_headers else None)
    if kind == "video" and is_video_file(unit):
        if not _counts_videos(options) or not read_headers:
            return None
        frames = stated_frames(unit)
        return None if frames is None else -(-frames // max(1, options.video_stride))
    if kind == "video":
        if options.video_fps or unit.get("stop") is None:
            return None
        frames = unit["stop"] - unit["start"]
        return -(-frames // max(1, options.video_stride))
    return None


def _counts_videos(options: SourceOptions) -> bool:
    """A video file's rows follow from its stated frame count: every frame, or every video_stride-th."""
    return options.video_fps is None and options.video_start is None and options.video_end is None


def _needs_count(unit: dict, options: SourceOptions) -> bool:
    if is_video_file(unit):
        return _counts_videos(options)
    return unit.get("kind") in ("tar", "zip") and not unit.get("members")


def _sum_known(counts) -> int | None:
    """The sum, or None when any count is unknown."""
    counts = list(counts)
    return None if any(c is None for c in counts) else sum(counts)


def _total(units: list[dict], options: SourceOptions, read_headers: bool = True) -> int | None:
    return _sum_known(expected_rows(u, options, read_headers) for u in units)


class JobProgress:
    """Tracks a job's output rows against its units; `live` prints the line (see LiveLine)."""

    def __init__(self, units: list[dict], options: SourceOptions | None = None, label: str = "infer",
                 **line_options):
        options = options or SourceOptions()
        self.groups: list[_Group] = []
        self.group_of: dict[str, int] = {}  # source -> group index
        by_source: dict[str, list[dict]] = {}
        for u in units:
            if u.get("kind") == "files":
                self.groups.append(_Group(1, len(u["keys"])))
                for key in u["keys"]:
                    self.group_of[join_path(u.get("source_root", ""), key)] = len(self.groups) - 1
            else:
                by_source.setdefault(u.get("source", u["unit_id"]), []).append(u)
        to_count: list[tuple[int, list[dict]]] = []  # archives and videos counted by reading their headers
        for source, members in by_source.items():
            self.groups.append(_Group(len(members), _total(members, options, read_headers=False)))
            self.group_of[source] = len(self.groups) - 1
            if any(_needs_count(u, options) for u in members):
                to_count.append((len(self.groups) - 1, members))
        self.units_total = sum(g.units for g in self.groups)
        self.frames = Rate(_sum_known(g.expected for g in self.groups))
        # Counting reads every tar/zip index and video header (the H200 machine counted 151 video files in 2 s,
        # so a 5,000-file archive takes about a minute): done beside the job, not before it; the totals appear
        # on the line when known.
        self.closed = threading.Event()  # the job is over (finished or not): counting stops
        self.already_done = 0
        self.errors = 0
        self.first_row_s: float | None = None
        self.began = False  # run_job started the Dataset (not a finished job that had nothing to do)
        self.finished = False
        self.live = LiveLine(label, self.render, **line_options)
        self.counted: threading.Thread | None = None
        if to_count:
            self.counted = threading.Thread(target=self._count, args=(to_count, options), daemon=True,
                                            name="yoloray-count-members")
            self.counted.start()

    def _count(self, to_count: list[tuple[int, list[dict]]], options: SourceOptions) -> None:
        """Each source's expected rows in turn (a source's units count as done from then on); the frame total
        once all are known. Stops when the job has ended: no line is left to show the count."""
        for g, members in to_count:
            if self.closed.is_set():
                return
            self.groups[g].expected = _total(members, options)
        self.frames.total = _sum_known(g.expected for g in self.groups)

    @property
    def counting(self) -> bool:
        return self.counted is not None and self.counted.is_alive()

    # ------------------------------------------------------------------ feeding (batch/pipeline.run_job)
    def begin(self, already_done: int) -> None:
        """The job starts; `already_done` rows have results from an earlier run (a resume)."""
        self.began = True
        self.already_done = already_done
        self.frames.done = self.frames.base = already_done
        self.live.start()  # not before: a finished job's rerun ("nothing to do") prints no progress

    def rows(self, batch: pa.Table) -> None:
        """Count one batch of output rows (columns `source` and `error`)."""
        self.frames.done += batch.num_rows
        if self.first_row_s is None:  # the rate counts from the first result on (start-up is shown apart)
            self.first_row_s = time.perf_counter() - self.live.t0
            self.frames.start, self.frames.base = time.perf_counter(), self.frames.done
        self.errors += batch.num_rows - batch.column("error").null_count
        counts = pc.value_counts(batch.column("source")).flatten()
        for source, n in zip(counts[0].to_pylist(), counts[1].to_pylist()):
            g = self.group_of.get(source)
            if g is not None:
                self.groups[g].seen += n

    def finish(self) -> None:
        """Every unit has been read (the job ran to its end)."""
        self.finished = True

    # ------------------------------------------------------------------ rendering
    @property
    def units_done(self) -> int:
        if self.finished:
            return self.units_total
        return sum(g.units for g in self.groups if g.expected is not None and g.seen >= g.expected)

    def render(self, elapsed: float) -> str:
        tty = self.live.tty
        if self.first_row_s is None and not self.finished:
            return f"units 0/{self.units_total:,}  starting (listing, actor start and warmup) {duration(elapsed)}"
        rate = self.frames
        if rate.done == rate.base or (self.finished and rate.total is None):
            # one batch so far, or the end of a run whose total was unknown: the rate over the whole run
            # (start-up included), and what came is the total once all was read
            rate = Rate(rate.done if self.finished and rate.total is None else rate.total, self.live.t0)
            rate.done, rate.base = self.frames.done, self.already_done
        text = f"units {self.units_done:,}/{self.units_total:,}  {rate.fields('frames', tty=tty)}"
        if rate.total is None and not self.finished:
            if self.counting:  # units done lag while their sources are uncounted: an ETA from them would be wrong
                text += "  (counting totals)"
            elif self.units_done:
                eta = elapsed * (self.units_total - self.units_done) / self.units_done
                text += f"  ETA ~{duration(eta)} (by units)"
        text += f"  errors {self.errors:,}"
        if self.already_done:
            text += f"  ({self.already_done:,} done before)"
        return text

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.closed.set()
        if self.counted is not None:  # it stops after the source it is reading: no header read outlives the job
            self.counted.join(timeout=10)
        if exc_type is None:
            self.finish()
        self.live.close(final=self.began)

