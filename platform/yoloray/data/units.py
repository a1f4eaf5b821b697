"""Inputs -> read units, on the driver (listing + small metadata reads only).

Inputs: folders (recursive; jpg jpeg png bmp webp tif tiff, case-insensitive; folders also pick up archives,
parquet and videos they contain, unknown files are skipped), glob patterns (`*`, `?`, `[..]`, `**`), tar shards
(`.tar`, `.tar.gz`, `.tgz`; WebDataset or plain; only image members become rows), `.zip` (`__MACOSX/` skipped),
Parquet (`.parquet`, `.pq`) with an image-bytes column (`SourceOptions.image_column`, or a binary column - or a
HF-style struct with a `bytes` field - named image/img/bytes/jpg/jpeg; keys from a key/__key__/id/filename/
file_name column when present, else the row index in the file), videos (mp4 mkv avi mov).

`list_units` expands the inputs into units (a group of `files_per_task` image files; a tar, zip or parquet file, or
a part of one when it is large (data/splits.py); a video file), each with a stable `unit_id`. A video is listed
as one unit and nothing of it is read here: its read task indexes it and cuts it at keyframes
(data/video_index.py), so listing an archive of footage costs a directory walk. Local paths are listed with
Python's os functions, which take file names in any bytes; keys and sources are escaped when the rows are read
(data/names.py).

User mistakes raise `SourceError` on the driver: missing path, nothing supported found, unsupported file type,
an explicitly given archive with no image members, a parquet file without an image column, bad options. An
empty archive found inside a folder/glob does not stop the job; it becomes one error row.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from yoloray.data.inputs import (
    IMAGE_EXTS,
    KIND_EXTS,
    SourceError,
    SourceOptions,
    is_local,
    join_path,
    kind_of,
    open_file,
    resolve_path,
)
from yoloray.data.names import escape_name, raw_bytes
from yoloray.data.readers import READ_ERRORS, open_zip, read_tar, zip_member_ok
from yoloray.data.splits import parquet_renames, split_parquet, split_tar, split_zip

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


def _stat(path: str) -> tuple[str, int | None]:
    """("file" | "dir" | "missing", size) of a local path or URI."""
    if is_local(path):
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return "missing", None
        return ("dir" if stat.S_ISDIR(st.st_mode) else "file"), st.st_size
    fs, fpath = resolve_path(path)
    info = fs.get_file_info(fpath)
    kind = {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(info.type, "missing")
    return kind, info.size


def _files_under(base: str) -> Iterator[tuple[str, int | None]]:
    """(relative path, size) of every file under a local folder or URI prefix; local names in any bytes."""
    if not is_local(base):
        fs, fbase = resolve_path(base)
        for info in fs.get_file_info(pafs.FileSelector(fbase, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                yield info.path[len(fbase) :].lstrip("/"), info.size
        return
    seen: set[tuple[int, int]] = set()  # (device, inode) of folders walked: a symlink loop ends there
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(base, rel) if rel else base) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir():
                    st = entry.stat()
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        stack.append(sub)
                elif entry.is_file():
                    yield sub, entry.stat().st_size
            except OSError:
                continue  # vanished or unreadable: not listed


def _walk(base: str, root: str, source_root: str, match=None) -> list[_Entry]:
    out = [
        _Entry(root, source_root, rel, size, kind, False)
        for rel, size in _files_under(base)
        if (kind := kind_of(rel)) and (match is None or match.match(rel))
    ]
    return sorted(out, key=lambda e: raw_bytes(e.rel))


def _expand(path: str) -> list[_Entry]:
    is_uri = not is_local(path)
    globbing = any(c in path.split("://", 1)[-1] for c in "*?[")
    if globbing and is_uri:  # in a URI these can only be wildcards ("?" would start a query)
        found_as, size = "missing", None
    else:
        found_as, size = _stat(path)
    if globbing and found_as == "missing":
        parts = path.split("/")
        skip = 3 if is_uri else 0  # never glob inside "scheme://bucket"
        first = next((i for i, p in enumerate(parts) if i >= skip and any(c in p for c in "*?[")), None)
        if first is None:
            raise SourceError(f"unsupported glob {path!r}: wildcards are only allowed after the bucket/host")
        source_root = "/".join(parts[:first]) or ("/" if path.startswith("/") else "")
        root = _local_root(source_root or ".")
        found = _walk(root, root, source_root, _glob_regex("/".join(parts[first:])))
        if not found:
            raise SourceError(f"glob {path!r} matched no supported files (supported: {_supported()})")
        return found
    if found_as == "missing":
        raise SourceError(f"input not found: {path!r}. Check the path (and credentials for cloud storage)")
    if found_as == "dir":
        found = _walk(_local_root(path), _local_root(path), path.rstrip("/") or "/")
        if not found:
            raise SourceError(
                f"no supported inputs under folder {path!r} (looked for {_supported()}, case-insensitive)"
            )
        return found
    name = path.rstrip("/").rsplit("/", 1)[-1]
    kind = kind_of(name)
    if kind is None:
        raise SourceError(
            f"unsupported input type {path!r}: expected a folder, a glob, or one of {_supported()}"
        )
    parent = path.rsplit("/", 1)[0] if is_uri else posixpath.dirname(path)
    if parent.endswith(":/"):
        parent += "/"  # "file:///x.tar" -> "file:///"
    root = _local_root(parent) if parent else os.path.abspath(".")
    return [_Entry(root, parent, name, size, kind, True)]


def _base(e: _Entry) -> dict:
    source = escape_name(join_path(e.source_root, e.rel))
    # prefix: the keys' prefix (escaped, data/names.py); rel: the file's path under root, as stored (any bytes)
    return {"kind": e.kind, "root": e.root, "source": source, "prefix": escape_name(e.rel), "rel": e.rel}


def _archive_unit(e: _Entry, options: SourceOptions) -> list[dict]:
    base = _base(e)
    source = base["source"]
    if e.kind == "tar":
        if e.explicit and (e.size or 0) <= SMALL_ARCHIVE_BYTES:
            rows = list(read_tar(base))
            if not rows:
                raise SourceError(f"tar archive {source!r} has no image members ({', '.join(IMAGE_EXTS)})")
            if len(rows) == 1 and rows[0]["key"] == base["prefix"]:
                raise SourceError(f"tar archive {source!r} is empty or not a tar file ({rows[0]['error']})")
        return split_tar(base, e.size, options)
    if e.kind == "zip":
        sizes = None
        if e.explicit or (e.size or 0) > options.unit_bytes:
            try:
                with open_zip(e.root, e.rel) as zf:
                    sizes = [i.compress_size for i in zf.infolist() if zip_member_ok(i)]
            except READ_ERRORS:
                pass  # unreadable: the reader reports it as an error row
        if e.explicit and sizes == []:
            raise SourceError(f"zip archive {source!r} has no image members ({', '.join(IMAGE_EXTS)})")
        return split_zip(base, sizes or [], options)
    if e.kind == "parquet":
        return _parquet_units(e, base, options)
    return [{"unit_id": f"video:{source}", **base}]  # the whole file: its read task indexes it (data/readers.py)


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
    try:
        with open_file(e.root, e.rel) as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
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
            renames = parquet_renames(f, key_col)
    except (OSError, pa.ArrowException) as err:
        raise SourceError(f"cannot read parquet metadata of {base['source']!r}: {err}") from err
    base = {**base, "image_column": image_col, "key_column": key_col}
    units = split_parquet(base, meta, renames, options)
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
