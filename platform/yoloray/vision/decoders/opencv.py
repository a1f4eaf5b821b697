"""CPU still-image decoder: OpenCV (with JPEG DCT-reduced decode where allowed), decode and letterbox of each
image in one worker thread (`vision/prepare.py`, shared with the batch job's upstream decode tasks)."""

from __future__ import annotations

from concurrent.futures import Executor, Future

import numpy as np

from yoloray.vision.decoders.frames import FrameBatch
from yoloray.vision.letterbox import Geometry
from yoloray.vision.prepare import Prepared, prepare_cpu


class OpenCVDecoder:
    """Submits images to a thread pool; each job letterboxes to `imgsz` and records the item's geometry."""

    name = "opencv"

    def __init__(self, imgsz: tuple[int, int], max_pixels: int, reduced_decode: bool, pool: Executor):
        self.imgsz, self.max_pixels, self.reduced_decode, self.pool = imgsz, max_pixels, reduced_decode, pool

    def submit(self, item, i: int, geom: Geometry) -> Future:
        """A future of image i's letterboxed pixels (ImageError when it cannot be decoded). Items already
        letterboxed upstream (Prepared) are only recorded."""
        if isinstance(item, Prepared):
            done: Future = Future()
            done.set_result(self.record(item, i, geom))
            return done
        return self.pool.submit(self._prepare, item, i, geom)

    def decode(self, items) -> FrameBatch:
        frames = FrameBatch.empty(len(items))
        jobs = {i: self.submit(item, i, frames.geom) for i, item in enumerate(items)}
        collect_host(jobs, frames)
        return frames

    def record(self, prepared: Prepared, i: int, geom: Geometry) -> np.ndarray:
        """Record where image i sits in the input; its letterboxed pixels."""
        if prepared.pixels.shape != (*self.imgsz, 3):
            raise ValueError(f"prepared image of shape {prepared.pixels.shape} does not fit imgsz {self.imgsz}")
        geom.set(i, prepared.decoded_hw, self.imgsz, prepared.orig_hw)
        return prepared.pixels

    def _prepare(self, item, i: int, geom: Geometry) -> np.ndarray:
        return self.record(prepare_cpu(item, self.imgsz, self.max_pixels, self.reduced_decode), i, geom)


def collect_host(jobs: dict[int, Future], frames: FrameBatch) -> None:
    """Wait for the CPU jobs in item order: their pixels become host frames (after any device groups), their
    ImageErrors the items' errors."""
    from yoloray.vision.decode import ImageError

    slots = frames.slots.tolist()
    for i, job in sorted(jobs.items()):
        try:
            frames.host_frames.append(job.result())
            slots.append(i)
        except ImageError as e:
            frames.errors[i] = str(e)
    frames.slots = np.asarray(slots, np.int64)
