"""The `map_batches` class around Detector: built and warmed once per actor, then one call per batch."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from yoloray.config import EngineConfig
from yoloray.data.sink import OUTPUT_SCHEMA, detections_to_table, error_table


def encoded_views(column: pa.ChunkedArray | pa.Array) -> list:
    """Zero-copy memoryviews of an Arrow binary column's values (no bytes object per image); null -> b""."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        raise TypeError(f"the image column must hold encoded bytes (binary), not {arr.type}")
    width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, width)[arr.offset : arr.offset + len(arr) + 1]
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    valid = np.asarray(arr.is_valid())
    return [data[offsets[i] : offsets[i + 1]] if valid[i] else b"" for i in range(len(arr))]


class Predictor:
    """Input rows (data/inputs.py contract) -> output rows (data/sink.py OUTPUT_SCHEMA)."""

    def __init__(self, config: dict, decode_threads: int | None = None, predecoded: bool = False):
        """`predecoded`: a `decode: hybrid` job whose CPU share was decoded upstream (batch/predecode.py); the
        actor's Detector nvJPEG-decodes the rest. Rows keep the engine key of the configuration as given."""
        from yoloray.detector import Detector

        engine = EngineConfig.model_validate(config)
        self.engine = engine.key()
        if predecoded:
            engine = engine.model_copy(update={"decode": "gpu"})
        self.detector = Detector(engine, decode_threads=decode_threads).warmup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from yoloray.observe.metrics import record_batch

        t0 = time.perf_counter()
        read_error = batch.column("error")
        unreadable = np.asarray(read_error.is_valid())
        parts = []
        if unreadable.any():
            bad = batch.filter(pa.array(unreadable))
            parts.append(
                error_table(bad["key"], bad["source"], bad["frame"], bad["ts"], bad["error"], self.engine)
            )
            batch = batch.filter(pa.array(~unreadable))
        timings: dict[str, float] = {}
        errors = int(unreadable.sum())
        if batch.num_rows:
            from yoloray.batch.predecode import prepared_inputs

            images = prepared_inputs(batch, self.detector.imgsz)
            dets = self.detector.detect(images)
            timings = dets.timings
            errors += sum(e is not None for e in dets.errors)
            parts.append(
                detections_to_table(dets, batch["key"], batch["source"], batch["frame"], batch["ts"], self.engine)
            )
        out = pa.concat_tables(parts) if parts else OUTPUT_SCHEMA.empty_table()
        record_batch(self.engine, out.num_rows, errors, time.perf_counter() - t0, timings)
        return out
