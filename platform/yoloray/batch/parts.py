"""Output rows -> Parquet parts on disk as the job goes (the driver side of the batch job).

A part is written when `rows` rows are buffered or `seconds` have passed since the first row now buffered came
in, whichever is first, so a crash loses at most that much. `batches_or_ticks` wakes the driver when no result
arrives for a while, so a quiet stretch cannot hold rows back past their deadline. Each key is written once per
run (a retried task may emit its rows again); the counters of the summary are taken from the rows actually
written, so they always agree with the Parquet.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from yoloray.data.sink import OUTPUT_SCHEMA, write_parquet_atomic

_END = object()


class PartWriter:
    def __init__(self, fs: pafs.FileSystem, root: str, run_id: str, rows: int, seconds: float,
                 error_kind: Callable[[str], str]):
        self.fs, self.root, self.run_id = fs, root, run_id
        self.rows, self.seconds, self._error_kind = rows, seconds, error_kind
        self.written: set[str] = set()
        self.errors: Counter = Counter()
        self.per_class: Counter = Counter()
        self.write_s = 0.0
        self.parts = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._since: float | None = None  # when the oldest buffered row came in

    def add(self, batch: pa.Table) -> None:
        keys = batch.column("key").to_pylist()
        fresh, seen = [], set()
        for k in keys:
            fresh.append(k not in self.written and k not in seen)
            seen.add(k)
        if not all(fresh):  # a retried task re-emitted rows: keep each key once
            batch = batch.filter(pa.array(fresh))
            keys = [k for k, f in zip(keys, fresh) if f]
        if not keys:
            return
        self.written.update(keys)
        self.errors.update(self._error_kind(e) for e in batch.column("error").drop_null().to_pylist())
        labels = pc.struct_field(pc.list_flatten(batch.column("detections")), "label")
        self.per_class.update(dict(zip(*[c.to_pylist() for c in pc.value_counts(labels).flatten()])))
        self._buffer.append(batch.cast(OUTPUT_SCHEMA))
        self._buffered += batch.num_rows
        if self._since is None:
            self._since = time.monotonic()
        if self._buffered >= self.rows:
            self.flush()

    def wait_s(self) -> float | None:
        """Seconds until the buffered rows are due on disk (None when nothing is buffered)."""
        if self._since is None:
            return None
        return max(0.0, self._since + self.seconds - time.monotonic())

    def flush(self) -> None:
        if not self._buffered:
            return
        table = pa.concat_tables(self._buffer)
        t0 = time.perf_counter()
        write_parquet_atomic(table, f"{self.root}/part-{self.run_id}-{self.parts:05d}.parquet", filesystem=self.fs)
        self.write_s += time.perf_counter() - t0
        self.parts += 1
        self._buffer, self._buffered, self._since = [], 0, None


def batches_or_ticks(batches: Iterable[pa.Table], wait_s: Callable[[], float | None]) -> Iterator[pa.Table | None]:
    """The batches (iterated in a thread), and None each time `wait_s()` seconds pass without one."""
    q: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def produce():
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer
            q.put(e)

    threading.Thread(target=produce, name="yoloray-results", daemon=True).start()
    try:
        while True:
            try:
                item = q.get(timeout=wait_s())
            except queue.Empty:
                yield None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
