"""Input archives -> a Ray Dataset of input rows (DESIGN.md "Data contract"; row schema in data/inputs.py).

Parallelism: `list_units` (data/units.py) expands the inputs on the driver into units; `read_units` reads them
through a Ray Data datasource with one read task per unit (a big shard streams out in ~32 MB tables; a video
file is indexed in its read task and streams out as its segment reference rows, which `batch.pipeline.detect`
cuts into blocks of one actor call's frames).

Why a datasource and not `from_items(units).map_batches(read)`: Ray Data fuses a task-based `map_batches` into
the actor stage that follows it, with the larger of the two batch sizes. The reads then ran inside the detector
actors, `batch_size x batches_per_call` units per actor call (every unit of a small job in one call on one actor,
the other actors idle, and no result until the call ended). A read operator is never fused into the actor
stage: reads run as their own tasks, on the cluster's free CPUs, and each actor call gets one engine-sized batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from yoloray.data.inputs import INPUT_SCHEMA, SourceOptions
from yoloray.data.readers import read_tables
from yoloray.data.units import list_units

if TYPE_CHECKING:
    import ray.data

MAX_READ_BLOCKS = 8192  # one read task per unit, up to this many (then several units per task)


def _read(units: list[dict], options: SourceOptions) -> Iterator[pa.Table]:
    for unit in units:
        yield from read_tables(unit, options)


def _datasource(units: Sequence[dict], options: SourceOptions):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class UnitsDatasource(Datasource):
        """Read units (data/units.py) -> INPUT_SCHEMA blocks; one read task per group of units."""

        def get_name(self) -> str:
            return "ReadUnits"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            tasks = max(1, min(len(units), parallelism, MAX_READ_BLOCKS))
            groups = [list(units[i::tasks]) for i in range(tasks)]
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [
                ReadTask(lambda g=g: _read(g, options), meta, schema=INPUT_SCHEMA, per_task_row_limit=per_task_row_limit)
                for g in groups
                if g
            ]

    return UnitsDatasource()


def read_sources(paths: Sequence[str], options: SourceOptions = SourceOptions()) -> ray.data.Dataset:  # noqa: B008
    """Lazy Ray Dataset of INPUT_SCHEMA rows; each unit is read by its own Ray task."""
    return read_units(list_units(paths, options), options)


def read_units(units: Sequence[dict], options: SourceOptions = SourceOptions()) -> ray.data.Dataset:  # noqa: B008
    """Lazy Ray Dataset of the rows of these units (from `list_units`); each unit is read by its own task."""
    import ray

    units = list(units)
    return ray.data.read_datasource(_datasource(units, options), override_num_blocks=min(len(units), MAX_READ_BLOCKS))
