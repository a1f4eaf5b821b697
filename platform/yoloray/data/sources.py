"""Input archives -> a Ray Dataset of input rows (DESIGN.md "Data contract"; row schema in data/inputs.py).

Parallelism: `list_units` (data/units.py) expands the inputs on the driver into units; `read_sources` makes one
Ray Data block per unit and reads each in a task (`map_batches` generator over data/readers.py, so a big shard
streams out in ~32 MB tables).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from yoloray.data.inputs import SourceOptions
from yoloray.data.readers import read_tables
from yoloray.data.units import list_units

if TYPE_CHECKING:
    import ray.data

MAX_READ_BLOCKS = 8192  # one Ray Data block (= read task) per unit, up to this many


def _read_batch(batch: pa.Table, options: SourceOptions) -> Iterator[pa.Table]:
    for encoded in batch.column("unit").to_pylist():
        yield from read_tables(json.loads(encoded), options)


def read_sources(paths: Sequence[str], options: SourceOptions = SourceOptions()) -> ray.data.Dataset:  # noqa: B008
    """Lazy Ray Dataset of INPUT_SCHEMA rows; each unit is read by its own Ray task."""
    return read_units(list_units(paths, options), options)


def read_units(units: Sequence[dict], options: SourceOptions = SourceOptions()) -> ray.data.Dataset:  # noqa: B008
    """Lazy Ray Dataset of the rows of these units (from `list_units`); each unit is read by its own task."""
    import ray

    items = [{"unit": json.dumps(u)} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_READ_BLOCKS))
    return ds.map_batches(_read_batch, batch_size=1, batch_format="pyarrow", fn_kwargs={"options": options})
