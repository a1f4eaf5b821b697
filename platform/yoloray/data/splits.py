"""One archive or parquet file -> read units small enough to spread over the cluster (data/units.py lists files).

A file bigger than `SourceOptions.unit_bytes` is cut so that every actor gets work, progress is fine-grained and a
crash loses at most the units in flight:

- uncompressed tar on a local (or mounted) filesystem: its headers are read on the driver (one 512-byte read per
  member, data skipped by seeking) and the image members cut into ranges by offset; a unit reads its members
  with one seek each. Compressed tars (.tar.gz), tars on object stores and tars with sparse members stay one
  streamed unit.
- zip: the central directory (one read) gives the members; units are ranges of image members.
- parquet: units are ranges of consecutive row groups; a row group is never cut (a row group is read whole).

Units hold at most `files_per_task` images and about `unit_bytes` bytes (one member or row group may be larger).
Member keys are escaped and made unique over the whole file (data/names.py) before it is cut, so a key does not
depend on how the file was cut.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from yoloray.data.inputs import SourceOptions, is_local, kind_of, open_file
from yoloray.data.names import UniqueNames, escape_name

TAR_ERRORS = (OSError, EOFError, tarfile.TarError)


def ranges(sizes: list[int] | list[tuple[int, int]], options: SourceOptions) -> Iterator[tuple[int, int]]:
    """[start, stop) index ranges of at most files_per_task images and about unit_bytes bytes each. An item is
    its size in bytes (one image), or (images, bytes) for a group (a parquet row group); one item may be over."""
    start = images = total = 0
    for i, item in enumerate(sizes):
        n, size = item if isinstance(item, tuple) else (1, item)
        if i > start and (images + n > options.files_per_task or total + size > options.unit_bytes):
            yield start, i
            start, images, total = i, 0, 0
        images, total = images + n, total + size
    if start < len(sizes):
        yield start, len(sizes)


def tar_members(unit: dict) -> list[list] | None:
    """[data offset, size, member key] of the image members of an uncompressed local tar, from its headers;
    None when it cannot be cut (compressed, remote, sparse members, unreadable: the streamed reader reports it)."""
    if not unit["rel"].lower().endswith(".tar") or not is_local(unit["root"]):
        return None
    unique = UniqueNames()
    out = []
    try:
        with (
            open_file(unit["root"], unit["rel"]) as f,
            tarfile.open(fileobj=f, mode="r:", encoding="utf-8", errors="surrogateescape") as tf,
        ):
            for m in tf:  # a seekable tar: headers are read, member data skipped by seeking
                if m.issparse():
                    return None
                if m.isfile() and kind_of(m.name) == "image":
                    out.append([m.offset_data, m.size, unique(escape_name(m.name))])
    except TAR_ERRORS:
        return None
    return out


def split_tar(base: dict, size: int | None, options: SourceOptions) -> list[dict]:
    members = tar_members(base) if (size or 0) > options.unit_bytes else None
    if not members:
        return [{"unit_id": f"tar:{base['source']}", **base}]
    return [
        {"unit_id": f"tar:{base['source']}#members={a}-{b}", **base, "members": members[a:b]}
        for a, b in ranges([m[1] for m in members], options)
    ]


def split_zip(base: dict, sizes: list[int], options: SourceOptions) -> list[dict]:
    """`sizes`: compressed sizes of the zip's image members, in central-directory order."""
    cuts = list(ranges(sizes, options))
    if len(cuts) <= 1:
        return [{"unit_id": f"zip:{base['source']}", **base}]
    return [{"unit_id": f"zip:{base['source']}#members={a}-{b}", **base, "members": [a, b]} for a, b in cuts]


def parquet_ids(table: pa.Table, key_col: str | None, row_offset: int) -> pa.Array:
    """The key column as strings, the row number (in the file) where there is none."""
    index = pa.array(range(row_offset, row_offset + table.num_rows), pa.int64()).cast(pa.string())
    if key_col is None:
        return index
    return pc.coalesce(table.column(key_col).combine_chunks().cast(pa.string()), index)


def parquet_renames(f, key_col: str | None) -> dict[int, str]:
    """{row: unique id} for the rows of a parquet file whose key repeats an earlier one (usually none)."""
    if key_col is None:
        return {}
    ids = parquet_ids(pq.ParquetFile(f).read(columns=[key_col]), key_col, 0)
    if pc.count_distinct(ids).as_py() == len(ids):
        return {}
    unique = UniqueNames()
    return {i: new for i, old in enumerate(ids.to_pylist()) if (new := unique(old)) != old}


def split_parquet(base: dict, meta: pq.FileMetaData, renames: dict[int, str], options: SourceOptions) -> list[dict]:
    """Ranges of consecutive non-empty row groups, at most files_per_task rows and about unit_bytes each."""
    groups = [(rg, meta.row_group(rg)) for rg in range(meta.num_row_groups)]
    offsets = [0]
    for _, g in groups:
        offsets.append(offsets[-1] + g.num_rows)
    groups = [(rg, g.num_rows, g.total_byte_size) for rg, g in groups if g.num_rows]
    units = []
    sizes = [(rows, size) for _, rows, size in groups]
    for a, b in ranges(sizes, options):
        chosen = groups[a:b]
        lo = offsets[chosen[0][0]]
        hi = lo + sum(rows for _, rows, _ in chosen)
        units.append(
            {
                "unit_id": f"parquet:{base['source']}#rg={chosen[0][0]}-{chosen[-1][0]}",
                **base,
                "row_groups": [rg for rg, _, _ in chosen],
                "group_rows": [rows for _, rows, _ in chosen],
                "row_offset": lo,
                "num_rows": hi - lo,
                "renames": [[r, k] for r, k in renames.items() if lo <= r < hi],
            }
        )
    return units
