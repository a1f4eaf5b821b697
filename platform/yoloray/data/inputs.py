"""The input contract shared by listing (data/units.py) and reading (data/readers.py): the row schema, the
options, the user-error type, input kinds by file extension, path resolution (DESIGN.md "Data contract"),
and zero-copy views of the `image` column for whoever consumes the rows (`encoded_views`).

Row columns (`INPUT_COLUMNS`, Arrow types in `INPUT_SCHEMA`):

    key     string        unique, stable across runs:
                            folder / glob   path relative to the given root       images/val/frame_000001.jpg
                            tar / zip       <archive>::<member>                  shard-000000.tar::frame_000001.jpg
                            parquet         <file>::<key column value | row #>   images.parquet::17
                          Names that are not UTF-8 are escaped losslessly and repeated member names / parquet
                          keys get `#dup=N` (data/names.py; README "Keys").
                            video           <file>#frame=<index>                 clip.mp4#frame=120
                          where <archive>/<file> is the path relative to the given root (its basename when the
                          archive itself was given).
    image   large_binary  ENCODED image bytes, exactly as stored (null when `error` or `segment` is set). Video
                          frames are never re-encoded: a video is read as segment references (below).
    source  string        the file the row came from: the archive/video/parquet path, or the image file path
                          (the given folder/glob root + key), spelled as the user gave it (URIs stay URIs)
    frame   int64         video frame index; null for still images
    ts      float64       video: the frame's presentation time from the container, seconds from the first frame
    error   string        null, or why this input could not be READ (unreadable member, video that cannot be
                          opened, archive that is not a tar/zip, null value in a parquet image column)
    segment string        video only: a keyframe segment reference (JSON of its unit, data/video_index.py) whose
                          sampled frames the batch job decodes and detects (batch/video.py); `image` is null.
                          Each such row becomes one output row per kept frame, keyed `<file>#frame=<index>`

Paths are local paths or any URI `pyarrow.fs.FileSystem.from_uri` understands (file://, s3://, gs://, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
KIND_EXTS = {
    "image": IMAGE_EXTS,
    "tar": (".tar", ".tar.gz", ".tgz"),
    "zip": (".zip",),
    "parquet": (".parquet", ".pq"),
    "video": (".mp4", ".mkv", ".avi", ".mov"),
}

INPUT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("image", pa.large_binary()),
        pa.field("source", pa.string()),
        pa.field("frame", pa.int64()),
        pa.field("ts", pa.float64()),
        pa.field("error", pa.string()),
        pa.field("segment", pa.string()),
    ]
)
INPUT_COLUMNS: tuple[str, ...] = tuple(INPUT_SCHEMA.names)


class SourceError(ValueError):
    """bad user input: missing path, empty archive, unsupported type — message says what and what to do"""


@dataclass(frozen=True)
class SourceOptions:
    video_stride: int = 1
    video_fps: float | None = None
    video_start: float | None = None  # seconds: only frames with video_start <= ts < video_end
    video_end: float | None = None
    image_column: str | None = None
    files_per_task: int = 64  # images per read unit (folder files, tar/zip members, parquet rows)
    unit_bytes: int = 64 << 20  # an archive or parquet file bigger than this is cut into units of about this size


def kind_of(name: str) -> str | None:
    low = name.lower()
    for kind, exts in KIND_EXTS.items():
        if low.endswith(exts):
            return kind
    return None


def resolve_path(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise SourceError(f"cannot open {path!r}: {e}. Use a local path or a URI pyarrow supports") from e
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join_path(root: str, rel: str) -> str:
    if not root:
        return rel
    return root + rel if root.endswith("/") else f"{root}/{rel}"


def is_local(root: str) -> bool:
    """Local paths are listed and opened with Python's own os/open, which take names in any bytes (pyarrow's
    local filesystem fails on names that are not UTF-8); URIs go through pyarrow's filesystems."""
    return "://" not in root


def open_file(root: str, rel: str, random_access: bool = True):
    """A binary file object for `rel` under `root` (a local path or a URI)."""
    if is_local(root):
        return open(os.path.join(root, rel), "rb", buffering=1 << 20)
    fs, base = resolve_path(root)
    path = join_path(base, rel)
    return fs.open_input_file(path) if random_access else fs.open_input_stream(path, compression=None, buffer_size=1 << 20)


def locate(unit: dict) -> tuple[pafs.FileSystem, str]:
    """Filesystem + path of an archive/parquet/video unit. The root is resolved, then the (decoded) relative path
    joined, so names with spaces etc. work under URIs."""
    fs, root = resolve_path(unit["root"])
    return fs, join_path(root, unit.get("rel", unit["prefix"]))


def encoded_views(column: pa.ChunkedArray | pa.Array) -> list:
    """Zero-copy memoryviews of an Arrow binary column's values (no bytes object per image); null -> b"".
    Chunk by chunk: a batch that Ray Data put together from several blocks is never copied into one."""
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise TypeError(f"the image column must hold encoded bytes (binary), not {column.type}")
    width = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    views: list = []
    for arr in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if not len(arr):  # an empty chunk may come without an offsets buffer
            continue
        _, offsets_buf, data_buf = arr.buffers()
        offsets = np.frombuffer(offsets_buf, width)[arr.offset : arr.offset + len(arr) + 1].tolist()
        data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
        valid = np.asarray(arr.is_valid())
        views.extend(data[offsets[i] : offsets[i + 1]] if valid[i] else b"" for i in range(len(arr)))
    return views
