"""Inputs -> read units, on the driver (listing + small metadata reads only).

Inputs: folders (recursive; jpg jpeg png bmp webp tif tiff, case-insensitive; folders also pick up archives,
parquet and videos they contain, unknown files are skipped), glob patterns (`*`, `?`, `[..]`, `**`), tar shards
(`.tar`, `.tar.gz`, `.tgz`; WebDataset or plain; only image members become rows), `.zip` (`__MACOSX/` skipped),
Parquet (`.parquet`, `.pq`) with an image-bytes column (`SourceOptions.image_column`, or a binary column - or a
HF-style struct with a `bytes` field - named image/img/bytes/jpg/jpeg; keys from a key/__key__/id/filename/
file_name column when present, else the row index in the file), videos (mp4 mkv avi mov).

`list_units` expands the inputs into units (a group of `files_per_task` image files, one tar, one zip, one parquet
row group, one keyframe segment of a video), each with a stable `unit_id`. Videos are cut at keyframes found by
demuxing their packets (data/video_index.py).

User mistakes raise `SourceError` on the driver: missing path, nothing supported found, unsupported file type,
an explicitly given archive with no image members, a parquet file without an image column, bad options. An
empty archive found inside a folder/glob does not stop the job; it becomes one error row.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from yoloray.data.inputs import (
    IMAGE_EXTS,
    KIND_EXTS,
    SourceError,
    SourceOptions,
    join_path,
    kind_of,
    locate,
    resolve_path,
)
from yoloray.data.readers import READ_ERRORS, open_zip, read_tar, zip_member_ok
from yoloray.data.video_index import video_units

IMAGE_COLUMN_NAMES = ("image", "img", "bytes", "jpg", "jpeg")
KEY_COLUMN_NAMES = ("key", "__key__", "id", "filename", "file_name")
# An explicitly given tar this small is read on the driver to reject an empty one with a SourceError.
SMALL_ARCHIVE_BYTES = 64 * 1024


def _local_root(path: str) -> str:
    """A root that resolves identically on every worker (absolute for local paths, URIs unchanged)."""
    return path if "://" in path else os.path.abspath(path)


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
    if o.video_start is not None and o.video_start < 0:
        raise SourceError(f"video start must be >= 0 seconds, got {o.video_start!r}")
    if o.video_end is not None and o.video_end <= (o.video_start or 0):
        raise SourceError(f"video end ({o.video_end!r} s) must be after its start ({o.video_start or 0!r} s)")
    if not isinstance(o.files_per_task, int) or o.files_per_task < 1:
        raise SourceError(f"files_per_task must be an integer >= 1, got {o.files_per_task!r}")


def _supported() -> str:
    return ", ".join(e for exts in KIND_EXTS.values() for e in exts)


def _walk(fs: pafs.FileSystem, base: str, root: str, source_root: str, match=None) -> list[_Entry]:
    sel = pafs.FileSelector(base, recursive=True)
    out = []
    for info in fs.get_file_info(sel):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) :].lstrip("/")
        kind = kind_of(rel)
        if kind and (match is None or match.match(rel)):
            out.append(_Entry(root, source_root, rel, info.size, kind, False))
    return sorted(out, key=lambda e: e.rel)


def _expand(path: str) -> list[_Entry]:
    is_uri = "://" in path
    globbing = any(c in path.split("://", 1)[-1] for c in "*?[")
    if globbing and is_uri:  # in a URI these can only be wildcards ("?" would start a query)
        fs = fpath = info = None
    else:
        fs, fpath = resolve_path(path)
        info = fs.get_file_info(fpath)
    if globbing and (info is None or info.type == pafs.FileType.NotFound):
        parts = path.split("/")
        skip = 3 if is_uri else 0  # never glob inside "scheme://bucket"
        first = next((i for i, p in enumerate(parts) if i >= skip and any(c in p for c in "*?[")), None)
        if first is None:
            raise SourceError(f"unsupported glob {path!r}: wildcards are only allowed after the bucket/host")
        source_root = "/".join(parts[:first]) or ("/" if path.startswith("/") else "")
        fs, base = resolve_path(source_root or ".")
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
    kind = kind_of(info.base_name)
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
    source = join_path(e.source_root, e.rel)
    base = {"kind": e.kind, "root": e.root, "source": source, "prefix": e.rel}
    if e.kind == "tar":
        if e.explicit and (e.size or 0) <= SMALL_ARCHIVE_BYTES:
            rows = list(read_tar(base))
            if not rows:
                raise SourceError(f"tar archive {source!r} has no image members ({', '.join(IMAGE_EXTS)})")
            if len(rows) == 1 and rows[0]["key"] == e.rel:
                raise SourceError(f"tar archive {source!r} is empty or not a tar file ({rows[0]['error']})")
        return [{"unit_id": f"tar:{source}", **base}]
    if e.kind == "zip":
        if e.explicit:
            fs, p = locate(base)
            try:
                with open_zip(fs, p) as zf:
                    n = sum(1 for i in zf.infolist() if zip_member_ok(i))
            except READ_ERRORS:
                n = -1  # unreadable: the reader reports it as an error row
            if n == 0:
                raise SourceError(f"zip archive {source!r} has no image members ({', '.join(IMAGE_EXTS)})")
        return [{"unit_id": f"zip:{source}", **base}]
    if e.kind == "parquet":
        return _parquet_units(e, base, options)
    return video_units(base, options)


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
    fs, p = locate(base)
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
            where = join_path(e.root, e.rel)
            if where in seen:
                continue  # the same file reached twice (e.g. a folder and a file inside it)
            seen.add(where)
            if e.rel in owner:
                raise SourceError(
                    f"inputs {owner[e.rel]!r} and {join_path(e.source_root, e.rel)!r} both produce key {e.rel!r}; "
                    "pass their common parent folder (or a glob under it) so keys include the distinguishing path"
                )
            owner[e.rel] = join_path(e.source_root, e.rel)
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
