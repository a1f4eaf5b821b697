"""One read unit (from `list_units`, data/units.py) -> INPUT_SCHEMA rows, in a deterministic order.

Bad image BYTES are not detected here (readers only read bytes); the detector decodes and reports them.
Rows are never dropped: anything that cannot be read becomes a row with `error` set.

tar/zip/parquet are streamed through pyarrow's filesystem with nothing extracted to disk. A video file unit is
indexed here, in its read task (its packets demuxed, nothing decoded: data/video_index.py), and reads as one
segment reference row per keyframe segment, in frame order, or as its one error row when it cannot be opened
or has no frames; a segment unit reads as its one reference row. The frames are decoded downstream
(batch/video.py). A unit's rows come out in tables of at most ~32 MB.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from yoloray.data.inputs import (
    INPUT_COLUMNS,
    INPUT_SCHEMA,
    SourceOptions,
    is_local,
    join_path,
    kind_of,
    open_file,
)
from yoloray.data.names import UniqueNames, escape_name, unique_names, zip_member_name
from yoloray.data.splits import parquet_ids
from yoloray.data.video_index import reference_rows, segments_of

_FLUSH_ROWS, _FLUSH_BYTES = 512, 32 << 20
READ_ERRORS = (
    OSError,
    EOFError,
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)


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
def open_zip(root: str, rel: str) -> Iterator[zipfile.ZipFile]:
    f = open_file(root, rel)
    if not is_local(root):
        f = io.BufferedReader(_RandomAccess(f), 1 << 16)
    with f, zipfile.ZipFile(f) as zf:
        yield zf


def _row(key: str, image: bytes | None, source: str, frame=None, ts=None, error=None) -> dict:
    return {"key": key, "image": image, "source": source, "frame": frame, "ts": ts, "error": error, "segment": None}


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _read_files(unit: dict, options: SourceOptions) -> Iterator[dict]:
    for name in unit["keys"]:
        key, source = escape_name(name), escape_name(join_path(unit["source_root"], name))
        try:
            with open_file(unit["root"], name, random_access=False) as f:
                data = f.read()
        except READ_ERRORS as e:
            yield _row(key, None, source, error=f"cannot read file: {_err(e)}")
            continue
        yield _row(key, data, source)


def read_tar(unit: dict, options: SourceOptions | None = None) -> Iterator[dict]:
    if "members" in unit:  # a range of an indexed tar (data/splits.py)
        yield from _read_tar_members(unit)
        return
    prefix, source = unit["prefix"], unit["source"]
    unique = UniqueNames()
    key = prefix
    try:
        with (
            open_file(unit["root"], unit["rel"], random_access=False) as raw,
            tarfile.open(fileobj=raw, mode="r|*", encoding="utf-8", errors="surrogateescape") as tf,
        ):
            for m in tf:
                if not m.isfile() or kind_of(m.name) != "image":
                    continue
                key = f"{prefix}::{unique(escape_name(m.name))}"
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                yield _row(key, data, source)
                key = prefix
    except READ_ERRORS as e:
        what = "tar archive" if key == prefix else "tar member"
        yield _row(key, None, source, error=f"cannot read {what}: {_err(e)}")


def _read_tar_members(unit: dict) -> Iterator[dict]:
    prefix, source = unit["prefix"], unit["source"]
    members, done = unit["members"], 0
    try:
        with open_file(unit["root"], unit["rel"]) as f:
            for offset, size, name in members:
                f.seek(offset)
                data = f.read(size)
                if len(data) != size:
                    raise EOFError(f"tar member {name!r} ends after {len(data)} of {size} bytes")
                yield _row(f"{prefix}::{name}", data, source)
                done += 1
    except READ_ERRORS as e:  # the rest of the range: one error row per member, none lost
        for _, _, name in members[done:]:
            yield _row(f"{prefix}::{name}", None, source, error=f"cannot read tar member: {_err(e)}")


def zip_member_ok(info: zipfile.ZipInfo) -> bool:
    return (
        not info.is_dir() and not info.filename.startswith("__MACOSX/") and kind_of(info.filename) == "image"
    )


def _read_zip(unit: dict, options: SourceOptions) -> Iterator[dict]:
    prefix, source = unit["prefix"], unit["source"]
    try:
        with open_zip(unit["root"], unit["rel"]) as zf:
            infos = [i for i in zf.infolist() if zip_member_ok(i)]
            keys = unique_names(escape_name(zip_member_name(i.filename, i.flag_bits)) for i in infos)
            start, stop = unit.get("members", (0, len(infos)))
            for info, name in zip(infos[start:stop], keys[start:stop]):
                key = f"{prefix}::{name}"
                try:
                    data = zf.read(info)
                except READ_ERRORS as e:
                    yield _row(key, None, source, error=f"cannot read zip member: {_err(e)}")
                    continue
                yield _row(key, data, source)
    except READ_ERRORS as e:
        yield _row(prefix, None, source, error=f"cannot read zip archive: {_err(e)}")


def _parquet_tables(unit: dict, options: SourceOptions) -> Iterator[pa.Table]:
    """One row group at a time; keys are the key column (or the row number in the file), with the unit's
    renames of repeated keys (data/splits.py) applied."""
    prefix, source = unit["prefix"], unit["source"]
    image_col, key_col = unit["image_column"], unit["key_column"]
    renames = dict(unit.get("renames") or [])
    columns = [image_col] + ([key_col] if key_col else [])
    offset = unit["row_offset"]
    with contextlib.ExitStack() as stack:
        try:
            pf = pq.ParquetFile(stack.enter_context(open_file(unit["root"], unit["rel"])))
        except (OSError, pa.ArrowException) as e:
            pf, opened = None, e
        for rg, n in zip(unit["row_groups"], unit["group_rows"]):
            try:
                if pf is None:
                    raise opened
                t = pf.read_row_group(rg, columns=columns)
                img = t.column(image_col).combine_chunks()
                if pa.types.is_struct(img.type):
                    img = pc.struct_field(img, "bytes")
                img = img.cast(pa.large_binary())
                ids = parquet_ids(t, key_col, offset)
                null = pa.scalar(None, pa.string())
                error = pc.if_else(pc.is_null(img), pa.scalar(f"null value in image column {image_col!r}"), null)
            except (OSError, pa.ArrowException) as e:  # unreadable row group: one error row per row, keyed by index
                img, ids = pa.nulls(n, pa.large_binary()), parquet_ids(pa.table({"_": pa.nulls(n)}), None, offset)
                error = pa.array([f"cannot read parquet row group {rg}: {_err(e)}"] * n, pa.string())
            if renames:
                ids = pa.array([renames.get(offset + i, k) for i, k in enumerate(ids.to_pylist())], pa.string())
            keys = pc.binary_join_element_wise(pa.scalar(prefix), ids, "::")
            cols = [keys, img, pa.array([source] * n, pa.string()), pa.nulls(n, pa.int64()), pa.nulls(n, pa.float64()),
                    error, pa.nulls(n, pa.string())]
            table = pa.Table.from_arrays(cols, schema=INPUT_SCHEMA)
            for i in range(0, n, _FLUSH_ROWS):
                yield table.slice(i, _FLUSH_ROWS)
            offset += n


def _read_video(unit: dict, options: SourceOptions) -> Iterator[dict]:
    for segment in segments_of([unit], options):  # a file unit is indexed here; a segment unit is itself
        yield from reference_rows(segment)


_ROW_READERS = {"files": _read_files, "tar": read_tar, "zip": _read_zip, "video": _read_video}


def read_tables(unit: dict, options: SourceOptions) -> Iterator[pa.Table]:
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
    for table in read_tables(unit, options):
        yield from table.to_pylist()
