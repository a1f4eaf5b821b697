"""Input archives -> a Ray Dataset of input rows (DESIGN.md "Data contract").

Row columns (`INPUT_COLUMNS`, Arrow types in `INPUT_SCHEMA`):

    key     string        unique, stable across runs:
                            folder / glob   path relative to the given root       images/val/frame_000001.jpg
                            tar / zip       <archive>::<member>                  shard-000000.tar::frame_000001.jpg
                            parquet         <file>::<key column value | row #>   images.parquet::17
                            video           <file>#frame=<index>                 clip.mp4#frame=120
                          where <archive>/<file> is the path relative to the given root (its basename when the
                          archive itself was given).
    image   large_binary  ENCODED image bytes, exactly as stored (null only when `error` is set). Video frames
                          are decoded here and re-encoded losslessly as PNG (compression level 1), so every row has
                          the same shape - "bytes the detector decodes" - and the detector needs no second input
                          path. (A tensor column mixed with nulls/ragged shapes is brittle in Ray Data/Arrow, and
                          raw pixels would need a shape column; PNG costs some CPU in the reader tasks only.)
                          GPU (nvJPEG) decode must fall back to CPU for these PNG frames.
    source  string        the file the row came from: the archive/video/parquet path, or the image file path
                          (the given folder/glob root + key), spelled as the user gave it (URIs stay URIs)
    frame   int64         video frame index; null for still images
    ts      float64       video timestamp in seconds = frame / native fps; null for images or unknown fps
    error   string        null, or why this input could not be READ (unreadable member, video that stopped
                          decoding mid-way, archive that is not a tar/zip, null value in a parquet image column)

Bad image BYTES are not detected here (sources only read bytes); the detector decodes and reports them.
Rows are never dropped: anything that cannot be read becomes a row with `error` set.

Inputs: folders (recursive; jpg jpeg png bmp webp tif tiff, case-insensitive; folders also pick up archives,
parquet and videos they contain, unknown files are skipped), glob patterns (`*`, `?`, `[..]`, `**`), tar shards
(`.tar`, `.tar.gz`, `.tgz`; WebDataset or plain; only image members become rows), `.zip` (`__MACOSX/` skipped),
Parquet (`.parquet`, `.pq`) with an image-bytes column (`SourceOptions.image_column`, or a binary column - or a
HF-style struct with a `bytes` field - named image/img/bytes/jpg/jpeg; keys from a key/__key__/id/filename/
file_name column when present, else the row index in the file), videos (mp4 mkv avi mov; every frame, every
`video_stride`-th, or resampled to `video_fps` - frame i is kept when floor(i * video_fps / native_fps)
changes; every frame when the container reports no fps).

Paths are local paths or any URI `pyarrow.fs.FileSystem.from_uri` understands (file://, s3://, gs://, ...);
tar/zip/parquet are streamed through pyarrow's filesystem with nothing extracted to disk. OpenCV needs a local
path, so a video on a remote filesystem is copied to a local temp file by the task reading it (and is read as
one unit; local videos are split into chunks of `VIDEO_FRAMES_PER_UNIT` frames using frame-accurate seeks).

Parallelism: `list_units` expands the inputs on the driver into units (a group of `files_per_task` image files,
one tar, one zip, one parquet row group, one video chunk), each with a stable `unit_id`; `read_sources` makes
one Ray Data block per unit and reads each in a task (`map_batches` generator, so a big shard streams out in
~32 MB tables). Row order inside a unit is deterministic.

User mistakes raise `SourceError` on the driver: missing path, nothing supported found, unsupported file type,
an explicitly given archive with no image members, a parquet file without an image column, bad options. An
empty archive found inside a folder/glob does not stop the job; it becomes one error row.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import ray.data

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_KIND_EXTS = {
    "image": IMAGE_EXTS,
    "tar": (".tar", ".tar.gz", ".tgz"),
    "zip": (".zip",),
    "parquet": (".parquet", ".pq"),
    "video": (".mp4", ".mkv", ".avi", ".mov"),
}
IMAGE_COLUMN_NAMES = ("image", "img", "bytes", "jpg", "jpeg")
KEY_COLUMN_NAMES = ("key", "__key__", "id", "filename", "file_name")
VIDEO_FRAMES_PER_UNIT = 512
# An explicitly given tar this small is read on the driver to reject an empty one with a SourceError.
SMALL_ARCHIVE_BYTES = 64 * 1024
MAX_READ_BLOCKS = 8192  # one Ray Data block (= read task) per unit, up to this many
_FLUSH_ROWS, _FLUSH_BYTES = 512, 32 << 20
_READ_ERRORS = (
    OSError,
    EOFError,
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)

INPUT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("image", pa.large_binary()),
        pa.field("source", pa.string()),
        pa.field("frame", pa.int64()),
        pa.field("ts", pa.float64()),
        pa.field("error", pa.string()),
    ]
)
INPUT_COLUMNS: tuple[str, ...] = tuple(INPUT_SCHEMA.names)


class SourceError(ValueError):
    """bad user input: missing path, empty archive, unsupported type — message says what and what to do"""


@dataclass(frozen=True)
class SourceOptions:
    video_stride: int = 1
    video_fps: float | None = None
    image_column: str | None = None
    files_per_task: int = 64


# ----------------------------------------------------------------------------------------------- paths


def _kind(name: str) -> str | None:
    low = name.lower()
    for kind, exts in _KIND_EXTS.items():
        if low.endswith(exts):
            return kind
    return None


def _resolve(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise SourceError(f"cannot open {path!r}: {e}. Use a local path or a URI pyarrow supports") from e
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _join(root: str, rel: str) -> str:
    if not root:
        return rel
    return root + rel if root.endswith("/") else f"{root}/{rel}"


def _locate(unit: dict) -> tuple[pafs.FileSystem, str]:
    """Filesystem + path of an archive/parquet/video unit. The root is resolved, then the (decoded) relative path
    joined, so names with spaces etc. work under URIs."""
    fs, root = _resolve(unit["root"])
    return fs, _join(root, unit["prefix"])


def _local_root(path: str) -> str:
    """A root that resolves identically on every worker (absolute for local paths, URIs unchanged)."""
    return path if "://" in path else os.path.abspath(path)


class _RandomAccess(io.RawIOBase):
    """pyarrow random-access file as a Python raw file: seeks before the start raise OSError (zipfile relies on
    that), and wrapped in a BufferedReader so zipfile's many small header reads don't each hit the store."""

    def __init__(self, f: pa.NativeFile):
        self._f = f

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        return self._f.readinto(b)

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return self._f.seek(offset, whence)
        except pa.ArrowInvalid as e:
            raise OSError(str(e)) from e

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()
        super().close()


@contextlib.contextmanager
def _open_zip(fs: pafs.FileSystem, path: str) -> Iterator[zipfile.ZipFile]:
    with io.BufferedReader(_RandomAccess(fs.open_input_file(path)), 1 << 16) as f, zipfile.ZipFile(f) as zf:
        yield zf


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[" and (j := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : j]
            out += "[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


# ---------------------------------------------------------------------------------------- driver side


@dataclass
class _Entry:
    root: str  # resolvable root (absolute path or URI)
    source_root: str  # the root as the user spelled it
    rel: str  # key / key prefix, relative to root
    size: int | None
    kind: str
    explicit: bool  # the user named this file directly


def _check_options(o: SourceOptions) -> None:
    if not isinstance(o.video_stride, int) or o.video_stride < 1:
        raise SourceError(f"video_stride must be an integer >= 1, got {o.video_stride!r}")
    if o.video_fps is not None and not o.video_fps > 0:
        raise SourceError(f"video_fps must be > 0 or None, got {o.video_fps!r}")
    if o.video_fps is not None and o.video_stride != 1:
        raise SourceError("set either video_stride or video_fps, not both")
    if not isinstance(o.files_per_task, int) or o.files_per_task < 1:
        raise SourceError(f"files_per_task must be an integer >= 1, got {o.files_per_task!r}")


def _supported() -> str:
    return ", ".join(e for exts in _KIND_EXTS.values() for e in exts)


def _walk(fs: pafs.FileSystem, base: str, root: str, source_root: str, match=None) -> list[_Entry]:
    sel = pafs.FileSelector(base, recursive=True)
    out = []
    for info in fs.get_file_info(sel):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) :].lstrip("/")
        kind = _kind(rel)
        if kind and (match is None or match.match(rel)):
            out.append(_Entry(root, source_root, rel, info.size, kind, False))
    return sorted(out, key=lambda e: e.rel)


def _expand(path: str) -> list[_Entry]:
    is_uri = "://" in path
    globbing = any(c in path.split("://", 1)[-1] for c in "*?[")
    if globbing and is_uri:  # in a URI these can only be wildcards ("?" would start a query)
        fs = fpath = info = None
    else:
        fs, fpath = _resolve(path)
        info = fs.get_file_info(fpath)
    if globbing and (info is None or info.type == pafs.FileType.NotFound):
        parts = path.split("/")
        skip = 3 if is_uri else 0  # never glob inside "scheme://bucket"
        first = next((i for i, p in enumerate(parts) if i >= skip and any(c in p for c in "*?[")), None)
        if first is None:
            raise SourceError(f"unsupported glob {path!r}: wildcards are only allowed after the bucket/host")
        source_root = "/".join(parts[:first]) or ("/" if path.startswith("/") else "")
        fs, base = _resolve(source_root or ".")
        root = _local_root(source_root or ".")
        try:
            found = _walk(fs, base, root, source_root, _glob_regex("/".join(parts[first:])))
        except FileNotFoundError:
            found = []
        if not found:
            raise SourceError(f"glob {path!r} matched no supported files (supported: {_supported()})")
        return found
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"input not found: {path!r}. Check the path (and credentials for cloud storage)")
    if info.type == pafs.FileType.Directory:
        found = _walk(fs, fpath, _local_root(path), path.rstrip("/") or "/")
        if not found:
            raise SourceError(
                f"no supported inputs under folder {path!r} (looked for {_supported()}, case-insensitive)"
            )
        return found
    kind = _kind(info.base_name)
    if kind is None:
        raise SourceError(
            f"unsupported input type {path!r}: expected a folder, a glob, or one of {_supported()}"
        )
    parent = path.rsplit("/", 1)[0] if is_uri else posixpath.dirname(path)
    if parent.endswith(":/"):
        parent += "/"  # "file:///x.tar" -> "file:///"
    root = _local_root(parent) if parent else os.path.abspath(".")
    return [_Entry(root, parent, info.base_name, info.size, kind, True)]


def _archive_unit(e: _Entry, options: SourceOptions) -> list[dict]:
    source = _join(e.source_root, e.rel)
    base = {"kind": e.kind, "root": e.root, "source": source, "prefix": e.rel}
    if e.kind == "tar":
        if e.explicit and (e.size or 0) <= SMALL_ARCHIVE_BYTES:
            rows = list(_read_tar(base))
            if not rows:
                raise SourceError(f"tar archive {source!r} has no image members ({', '.join(IMAGE_EXTS)})")
            if len(rows) == 1 and rows[0]["key"] == e.rel:
                raise SourceError(f"tar archive {source!r} is empty or not a tar file ({rows[0]['error']})")
        return [{"unit_id": f"tar:{source}", **base}]
    if e.kind == "zip":
        if e.explicit:
            fs, p = _locate(base)
            try:
                with _open_zip(fs, p) as zf:
                    n = sum(1 for i in zf.infolist() if _zip_member_ok(i))
            except _READ_ERRORS:
                n = -1  # unreadable: the reader reports it as an error row
            if n == 0:
                raise SourceError(f"zip archive {source!r} has no image members ({', '.join(IMAGE_EXTS)})")
        return [{"unit_id": f"zip:{source}", **base}]
    if e.kind == "parquet":
        return _parquet_units(e, base, options)
    return _video_units(e, base)


def _image_column(schema: pa.Schema, wanted: str | None, source: str) -> str:
    def is_bytes(t: pa.DataType) -> bool:
        if pa.types.is_struct(t):
            return any(f.name == "bytes" and is_bytes(f.type) for f in t)
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)

    cols = ", ".join(f"{f.name} ({f.type})" for f in schema)
    if wanted is not None:
        if wanted not in schema.names or not is_bytes(schema.field(wanted).type):
            raise SourceError(f"parquet {source!r} has no binary column {wanted!r}; columns: {cols}")
        return wanted
    for f in schema:
        if f.name.lower() in IMAGE_COLUMN_NAMES and is_bytes(f.type):
            return f.name
    raise SourceError(
        f"parquet {source!r}: no image-bytes column found (looked for a binary column named "
        f"{'/'.join(IMAGE_COLUMN_NAMES)}); pass image_column=... Columns: {cols}"
    )


def _parquet_units(e: _Entry, base: dict, options: SourceOptions) -> list[dict]:
    fs, p = _locate(base)
    try:
        with fs.open_input_file(p) as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as err:
        raise SourceError(f"cannot read parquet metadata of {base['source']!r}: {err}") from err
    image_col = _image_column(schema, options.image_column, base["source"])
    key_col = next(
        (
            f.name
            for f in schema
            if f.name.lower() in KEY_COLUMN_NAMES
            and (pa.types.is_string(f.type) or pa.types.is_integer(f.type))
        ),
        None,
    )
    units, offset = [], 0
    for rg in range(meta.num_row_groups):
        n = meta.row_group(rg).num_rows
        if n:
            units.append(
                {
                    "unit_id": f"parquet:{base['source']}#rg={rg}",
                    **base,
                    "row_group": rg,
                    "row_offset": offset,
                    "num_rows": n,
                    "image_column": image_col,
                    "key_column": key_col,
                }
            )
        offset += n
    if not units and e.explicit:
        raise SourceError(f"parquet {base['source']!r} has no rows")
    return units


def _video_units(e: _Entry, base: dict) -> list[dict]:
    count, fps = 0, 0.0
    fs, p = _locate(base)
    if isinstance(fs, pafs.LocalFileSystem):
        import cv2

        cap = cv2.VideoCapture(p)
        if cap.isOpened():
            count, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS))
        cap.release()
    bounds = list(range(0, max(count, 1), VIDEO_FRAMES_PER_UNIT))
    units = []
    for i, start in enumerate(bounds):
        stop = bounds[i + 1] if i + 1 < len(bounds) else None  # last chunk reads to the end of the stream
        unit_id = f"video:{base['source']}#frames={start}-{'end' if stop is None else stop}"
        units.append({"unit_id": unit_id, **base, "start": start, "stop": stop, "fps": fps or None})
    return units


def list_units(paths: Sequence[str], options: SourceOptions = SourceOptions()) -> list[dict]:  # noqa: B008
    """Expand inputs into read units on the driver (listing + small metadata reads only)."""
    _check_options(options)
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise SourceError("no inputs given: pass folders, globs, tar/zip/parquet archives or video files")
    entries: list[_Entry] = []
    seen: set[str] = set()
    owner: dict[str, str] = {}
    for path in dict.fromkeys(paths):
        for e in _expand(path):
            where = _join(e.root, e.rel)
            if where in seen:
                continue  # the same file reached twice (e.g. a folder and a file inside it)
            seen.add(where)
            if e.rel in owner:
                raise SourceError(
                    f"inputs {owner[e.rel]!r} and {_join(e.source_root, e.rel)!r} both produce key {e.rel!r}; "
                    "pass their common parent folder (or a glob under it) so keys include the distinguishing path"
                )
            owner[e.rel] = _join(e.source_root, e.rel)
            entries.append(e)

    units: list[dict] = []
    groups: dict[tuple[str, str], list[str]] = {}
    for e in entries:
        if e.kind == "image":
            groups.setdefault((e.root, e.source_root), []).append(e.rel)
        else:
            units.extend(_archive_unit(e, options))
    for (root, source_root), keys in groups.items():
        for i in range(0, len(keys), options.files_per_task):
            chunk = keys[i : i + options.files_per_task]
            unit_id = f"files:{source_root or '.'}::{chunk[0]}..{chunk[-1]}"
            units.append(
                {"unit_id": unit_id, "kind": "files", "root": root, "source_root": source_root, "keys": chunk}
            )
    if not units:
        raise SourceError(f"nothing to read in {list(paths)!r}")
    return units


# ---------------------------------------------------------------------------------------- worker side


def _row(key: str, image: bytes | None, source: str, frame=None, ts=None, error=None) -> dict:
    return {"key": key, "image": image, "source": source, "frame": frame, "ts": ts, "error": error}


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _read_files(unit: dict, options: SourceOptions) -> Iterator[dict]:
    fs, root = _resolve(unit["root"])
    for key in unit["keys"]:
        source = _join(unit["source_root"], key)
        try:
            with fs.open_input_stream(_join(root, key), compression=None) as f:
                data = f.read()
        except _READ_ERRORS as e:
            yield _row(key, None, source, error=f"cannot read file: {_err(e)}")
            continue
        yield _row(key, data, source)


def _read_tar(unit: dict, options: SourceOptions | None = None) -> Iterator[dict]:
    prefix, source = unit["prefix"], unit["source"]
    fs, path = _locate(unit)
    key = prefix
    try:
        with (
            fs.open_input_stream(path, compression=None, buffer_size=1 << 20) as raw,
            tarfile.open(fileobj=raw, mode="r|*") as tf,
        ):
            for m in tf:
                if not m.isfile() or _kind(m.name) != "image":
                    continue
                key = f"{prefix}::{m.name}"
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                yield _row(key, data, source)
                key = prefix
    except _READ_ERRORS as e:
        what = "tar archive" if key == prefix else "tar member"
        yield _row(key, None, source, error=f"cannot read {what}: {_err(e)}")


def _zip_member_ok(info: zipfile.ZipInfo) -> bool:
    return not info.is_dir() and not info.filename.startswith("__MACOSX/") and _kind(info.filename) == "image"


def _read_zip(unit: dict, options: SourceOptions) -> Iterator[dict]:
    prefix, source = unit["prefix"], unit["source"]
    fs, path = _locate(unit)
    try:
        with _open_zip(fs, path) as zf:
            for info in zf.infolist():
                if not _zip_member_ok(info):
                    continue
                key = f"{prefix}::{info.filename}"
                try:
                    data = zf.read(info)
                except _READ_ERRORS as e:
                    yield _row(key, None, source, error=f"cannot read zip member: {_err(e)}")
                    continue
                yield _row(key, data, source)
    except _READ_ERRORS as e:
        yield _row(prefix, None, source, error=f"cannot read zip archive: {_err(e)}")


def _keep_frame(i: int, fps: float | None, options: SourceOptions) -> bool:
    if options.video_fps is not None and fps and options.video_fps < fps:
        r = options.video_fps / fps
        return i == 0 or math.floor(i * r + 1e-9) != math.floor((i - 1) * r + 1e-9)
    return i % options.video_stride == 0


def _read_video(unit: dict, options: SourceOptions) -> Iterator[dict]:
    import cv2

    prefix, source, start, stop = unit["prefix"], unit["source"], unit["start"], unit["stop"]
    fs, path = _locate(unit)
    tmp = None
    try:
        if not isinstance(fs, pafs.LocalFileSystem):  # OpenCV needs a local path
            fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1], prefix="yoloray-video-")
            with os.fdopen(fd, "wb") as out, fs.open_input_stream(path, compression=None) as src:
                shutil.copyfileobj(src, out, 8 << 20)
        cap = cv2.VideoCapture(tmp or path)
        if not cap.isOpened():
            yield _row(prefix, None, source, error="cannot open video (unsupported codec or corrupt file)")
            return
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or unit.get("fps") or None
        i = 0
        if start and cap.set(cv2.CAP_PROP_POS_FRAMES, start):
            i = start
        while stop is None or i < stop:
            keep = i >= start and _keep_frame(i, fps, options)
            ok = cap.grab()
            frame = cap.retrieve()[1] if ok and keep else None
            if not ok or (keep and frame is None):
                if stop is None and not ok:
                    if i == 0:
                        yield _row(prefix, None, source, error="video has no decodable frames")
                    break  # end of stream
                end = stop if not ok else i + 1
                for j in range(max(i, start), end):
                    if _keep_frame(j, fps, options):
                        yield _row(
                            f"{prefix}#frame={j}",
                            None,
                            source,
                            j,
                            j / fps if fps else None,
                            f"cannot decode video frame {j} (stream ended or is corrupt)",
                        )
                if not ok:
                    break
            elif keep:
                ok, buf = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
                err = None if ok else f"cannot encode video frame {i} as PNG"
                image = buf.tobytes() if ok else None
                yield _row(f"{prefix}#frame={i}", image, source, i, i / fps if fps else None, err)
            i += 1
        cap.release()
    except _READ_ERRORS as e:
        yield _row(prefix, None, source, error=f"cannot read video: {_err(e)}")
    finally:
        if tmp:
            os.unlink(tmp)


def _parquet_tables(unit: dict, options: SourceOptions) -> Iterator[pa.Table]:
    prefix, source = unit["prefix"], unit["source"]
    image_col, key_col = unit["image_column"], unit["key_column"]
    n = unit["num_rows"]
    index = pa.array(range(unit["row_offset"], unit["row_offset"] + n), pa.int64()).cast(pa.string())
    fs, path = _locate(unit)
    try:
        with fs.open_input_file(path) as f:
            columns = [image_col] + ([key_col] if key_col else [])
            t = pq.ParquetFile(f).read_row_group(unit["row_group"], columns=columns)
        img = t.column(image_col).combine_chunks()
        if pa.types.is_struct(img.type):
            img = pc.struct_field(img, "bytes")
        img = img.cast(pa.large_binary())
        ids = pc.coalesce(t.column(key_col).combine_chunks().cast(pa.string()), index) if key_col else index
        null = pa.scalar(None, pa.string())
        error = pc.if_else(pc.is_null(img), pa.scalar(f"null value in image column {image_col!r}"), null)
    except (OSError, pa.ArrowException) as e:  # unreadable row group: one error row per row, keyed by index
        img, ids = pa.nulls(n, pa.large_binary()), index
        error = pa.array([f"cannot read parquet row group {unit['row_group']}: {_err(e)}"] * n, pa.string())
    keys = pc.binary_join_element_wise(pa.scalar(prefix), ids, "::")
    cols = [
        keys,
        img,
        pa.array([source] * n, pa.string()),
        pa.nulls(n, pa.int64()),
        pa.nulls(n, pa.float64()),
        error,
    ]
    table = pa.Table.from_arrays(cols, schema=INPUT_SCHEMA)
    for i in range(0, n, _FLUSH_ROWS):
        yield table.slice(i, _FLUSH_ROWS)


_ROW_READERS = {"files": _read_files, "tar": _read_tar, "zip": _read_zip, "video": _read_video}


def _read_tables(unit: dict, options: SourceOptions) -> Iterator[pa.Table]:
    """Rows of one unit as INPUT_SCHEMA tables of at most ~32 MB."""
    if unit["kind"] == "parquet":
        yield from _parquet_tables(unit, options)
        return
    cols: dict[str, list[Any]] = {c: [] for c in INPUT_COLUMNS}
    size = total = 0
    for row in _ROW_READERS[unit["kind"]](unit, options):
        for c in INPUT_COLUMNS:
            cols[c].append(row[c])
        size += len(row["image"] or b"")
        total += 1
        if len(cols["key"]) >= _FLUSH_ROWS or size >= _FLUSH_BYTES:
            yield pa.Table.from_pydict(cols, schema=INPUT_SCHEMA)
            cols, size = {c: [] for c in INPUT_COLUMNS}, 0
    if total == 0 and unit["kind"] in ("tar", "zip"):
        cols = {
            c: [v]
            for c, v in _row(
                unit["prefix"], None, unit["source"], error="archive has no image members"
            ).items()
        }
    if cols["key"]:
        yield pa.Table.from_pydict(cols, schema=INPUT_SCHEMA)


def read_unit(unit: dict, options: SourceOptions) -> Iterator[dict]:
    """Yield the rows (dicts with INPUT_COLUMNS) of one unit, in a deterministic order."""
    for table in _read_tables(unit, options):
        yield from table.to_pylist()


def _read_batch(batch: pa.Table, options: SourceOptions) -> Iterator[pa.Table]:
    for encoded in batch.column("unit").to_pylist():
        yield from _read_tables(json.loads(encoded), options)


def read_sources(paths: Sequence[str], options: SourceOptions = SourceOptions()) -> ray.data.Dataset:  # noqa: B008
    """Lazy Ray Dataset of INPUT_SCHEMA rows; each unit is read by its own Ray task."""
    return read_units(list_units(paths, options), options)


def read_units(units: Sequence[dict], options: SourceOptions = SourceOptions()) -> ray.data.Dataset:  # noqa: B008
    """Lazy Ray Dataset of the rows of these units (from `list_units`); each unit is read by its own task."""
    import ray

    items = [{"unit": json.dumps(u)} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_READ_BLOCKS))
    return ds.map_batches(_read_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"options": options})
