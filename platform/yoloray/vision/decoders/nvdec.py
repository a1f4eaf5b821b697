"""Video decoder `nvdec`: the GPU's hardware video decoders (NVDEC) through PyNvVideoCodec 2.x (NVIDIA's
bindings, `pip install pynvvideocodec`), frames staying in GPU memory from the decoder to the letterbox.

NOT RUN ON THE DEVELOPMENT MACHINES (no GPU there): covered by tests/gpu/test_video_gpu.py on a CUDA machine;
the colour conversion (`yuv_to_rgb`) is also tested on the CPU against FFmpeg's.

One `SimpleDecoder` per calling thread (several per actor when the actor runs several calls at once, so the
GPU's NVDEC engines are all busy), reused across segments and files (`reconfigure_decoder` keeps a cache of
decoder sessions: a new session per clip halved the measured rate, GPU.md). A segment that keeps at least half
its frames is read through from its keyframe (`read="sequential"`, the default; a thread that goes on with the
next segment of the same file does not seek), a sparser one by index (`get_batch_frames_by_index`): in a batch
job the decoders are the limit (busy 97-100% of the steady state on the H200, benchmarks/README.md), so what
counts is the decoding each kept frame costs. Frames come in batches, NV12 (or 4:4:4, or 10-bit in 16-bit words)
as CUDA memory through DLPack, converted to RGB on the device with the stream's own matrix (BT.709 when tagged,
else BT.601; full range only when tagged, as FFmpeg does: vision/decoders/pyav.py) and, for 8-bit NV12 (H.264,
8-bit HEVC), letterboxed into model input in the same pass (vision/decoders/nv12.py), then handed to
`Detector.run` as device groups. Each delivered frame's presentation time is checked against the container
index: a frame read through that is not the one the index names turns this decoder to index reads (said once in
the log) and the segment goes on from where it was; a segment the decoder refuses (a codec or profile this GPU's
NVDEC lacks, corrupt data, a timestamp mismatch when read by index) is decoded by PyAV on the CPU instead, so
every kept frame still gets its row or its error. Open-GOP streams (HEVC from x265's defaults: leading frames
after a CRA keyframe) go to PyAV whole: on the H200, NVDEC's frames of such a stream, read by index, had the
right timestamps but some differed from FFmpeg's by up to 211 levels (tests/gpu/test_video_gpu.py), while
closed-GOP H.264 matched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from functools import cache

import numpy as np
import torch

from yoloray.data.video_index import ContentCache
from yoloray.vision.decoders.frames import FrameBatch
from yoloray.vision.decoders.nv12 import MATRICES, is_nv12, nv12_letterbox
from yoloray.vision.decoders.pyav import PyAVDecoder, set_video_meta

log = logging.getLogger(__name__)

_AVCOL_SPC = {1: "bt709", 9: "bt2020", 10: "bt2020"}  # FFmpeg's AVColorSpace values; anything else: BT.601
_PTS_SHIFTS = ContentCache(limit=4096)  # file content -> PyNvVideoCodec's pts of its first frame


class FrameMismatch(RuntimeError):
    """A decoded frame's presentation time is not the one the container index names for it."""


READS = ("sequential", "index")


def _first_pts(decoder) -> int:
    first = decoder.get_batch_frames_by_index([0])
    if len(first) != 1:
        raise RuntimeError("the decoder did not return the file's first frame")
    return first[0].getPTS()


@cache
def nvdec_missing() -> str | None:
    """Why NVDEC cannot be used here (None when it can)."""
    if not torch.cuda.is_available():
        return "NVDEC needs a CUDA GPU"
    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception as e:  # ImportError, or the driver's video libraries are missing
        return f"PyNvVideoCodec is not importable ({e}); pip install pynvvideocodec"
    return None


def matrix_of(unit: dict) -> tuple[str, bool]:
    """(matrix name, full range) from the stream's tags recorded at listing."""
    return _AVCOL_SPC.get(unit.get("colorspace", 2), "bt601"), unit.get("color_range") == 2


def yuv_to_rgb(yuv: torch.Tensor, height: int, width: int, matrix: str = "bt601", full_range: bool = False) -> torch.Tensor:
    """NVDEC's native output (N, rows, width) -> RGB uint8 (N, 3, height, width) on its device.

    Each surface is NV12 (rows = height * 3/2: the Y plane, then U/V interleaved at half resolution), planar
    4:4:4 (rows = 3 * height), or either in 16-bit words (10/12-bit streams, the value in the high bits).
    Chroma is upsampled by repetition, as swscale's unscaled yuv420p -> RGB converter does."""
    if yuv.dim() == 4 and yuv.shape[-1] == 1:  # (N, rows, width, 1) views
        yuv = yuv[..., 0]
    if yuv.dtype != torch.uint8:
        yuv = (yuv.to(torch.int32) >> 8).to(torch.uint8)
    n, rows = yuv.shape[0], yuv.shape[1]
    y = yuv[:, :height].float()
    if rows == 3 * height:
        u, v = yuv[:, height : 2 * height].float(), yuv[:, 2 * height :].float()
    elif rows * 2 == 3 * height:
        uv = yuv[:, height:].reshape(n, height // 2, width // 2, 2).float()
        u = uv[..., 0].repeat_interleave(2, 1).repeat_interleave(2, 2)
        v = uv[..., 1].repeat_interleave(2, 1).repeat_interleave(2, 2)
    else:
        raise ValueError(f"decoded surface of {tuple(yuv.shape[1:])} is neither NV12 nor 4:4:4 for {width}x{height}")
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    if full_range:
        u, v = u - 128.0, v - 128.0
    else:
        y, u, v = (y - 16.0) * (255.0 / 219.0), (u - 128.0) * (255.0 / 224.0), (v - 128.0) * (255.0 / 224.0)
    r = y + 2 * (1 - kr) * v
    g = y - (2 * kb * (1 - kb) / kg) * u - (2 * kr * (1 - kr) / kg) * v
    b = y + 2 * (1 - kb) * u
    return torch.stack([r, g, b], 1).floor_().clamp_(0, 255).to(torch.uint8)  # swscale truncates too


class NvdecDecoder:
    """A segment -> FrameBatches of at most `batch_size` kept frames, as device groups (full-size RGB)."""

    name = "nvdec"

    def __init__(self, device: torch.device, imgsz: tuple[int, int], batch_size: int,
                 input_dtype: torch.dtype | None = None, read: str = "sequential"):
        """`input_dtype` (the engine's): deliver 8-bit NV12 frames already letterboxed into model input of that
        dtype, in one fused pass (vision/decoders/nv12.py); None: full-size RGB frames (any surface format).
        `read`: `sequential` (segments keeping at least half their frames read through from their keyframe) or
        `index` (every segment by frame index), see the module doc."""
        from yoloray.vision.decoders.nv12 import fused_enabled
        from yoloray.vision.decoders.stills import GPU_LETTERBOX_GROUP

        if read not in READS:
            raise ValueError(f"read must be one of {', '.join(READS)}, got {read!r}")
        self.device, self.imgsz, self.batch_size, self.read = device, imgsz, batch_size, read
        self.input_dtype = input_dtype if fused_enabled() else None
        if self.input_dtype is not None:
            self._compile_fused()
        self.group = GPU_LETTERBOX_GROUP  # frames fetched, converted and letterboxed at a time
        self.gpu_id = device.index if device.index is not None else torch.cuda.current_device()
        self.cpu = PyAVDecoder(imgsz, batch_size)
        self._open_gop_said = False
        self._local = threading.local()

    def _compile_fused(self) -> None:
        """Compile the fused kernel now for 1080p (other sizes compile on first use), so no segment pays for it;
        where it cannot run, say so once and deliver RGB frames instead."""
        try:
            yuv = torch.zeros((1, 1620, 1920), dtype=torch.uint8, device=self.device)
            out = torch.empty((1, 3, *self.imgsz), dtype=self.input_dtype, device=self.device)
            nv12_letterbox(yuv, 1080, 1920, self.imgsz, out)
            torch.cuda.synchronize(self.device)
        except Exception as e:  # noqa: BLE001 - e.g. no C compiler for Triton's launcher
            log.warning("the fused NV12 kernel cannot run here (%s); converting NVDEC frames in two steps", e)
            self.input_dtype = None

    def batches(self, unit: dict) -> Iterator[FrameBatch]:
        from yoloray.data.inputs import locate

        fs, path = locate(unit)
        if type(fs).__name__ != "LocalFileSystem":  # SimpleDecoder reads a local path
            yield from self.cpu.batches(unit)
            return
        if unit.get("open_gop"):
            if not self._open_gop_said:
                self._open_gop_said = True
                log.warning("%s is an open-GOP stream (frames decoded after a keyframe are shown before it): its "
                            "frames are decoded with PyAV on the CPU, as are other such streams (NVDEC's leading "
                            "frames differed from FFmpeg's on the H200)", unit["source"])
            yield from self.cpu.batches(unit)
            return
        keep, done = unit["keep"], 0
        while True:
            through = self.read == "sequential" and 2 * len(keep) >= unit["stop"] - unit["start"]
            try:
                decoder = self._decoder(path)
                if through and self._local.next != unit["start"]:
                    decoder.seek_to_index(unit["start"])
                    self._local.next = unit["start"]
                while done < len(keep):
                    yield self._fetch(decoder, unit, keep[done : done + self.batch_size], through)
                    done += self.batch_size
                return
            except Exception as e:  # noqa: BLE001 - any refusal of the hardware path falls back to FFmpeg
                if not (through and isinstance(e, FrameMismatch)):
                    why = e
                    break
                log.warning("NVDEC read through %s gave a frame the container index does not name there (%s); "
                            "this decoder reads frames by index from now on", unit["source"], e)
                self.read = "index"
                self._local.path = None  # the decoder's position is unknown: open the file again
        log.warning("NVDEC could not decode %s frames %s-%s (%s); decoding the rest with PyAV on the CPU",
                    unit["source"], unit["start"], unit["stop"], why)
        yield from self.cpu.batches({**unit, "keep": keep[done:]})

    def _decoder(self, path: str):
        import PyNvVideoCodec as nvc

        current = getattr(self._local, "decoder", None)
        if current is not None and self._local.path == path:
            return current
        self._local.next = None  # where a read through would go on: unknown until a seek
        if current is None:
            stream = torch.cuda.current_stream(self.device).cuda_stream
            current = nvc.SimpleDecoder(path, gpu_id=self.gpu_id, cuda_stream=stream, use_device_memory=True,
                                        output_color_type=nvc.OutputColorType.NATIVE)
            self._local.decoder = current
        else:
            current.reconfigure_decoder(path)
        self._local.path = path
        # PyNvVideoCodec's pts are the stream's own, before the container's edit list (H.264/HEVC with B-frames
        # start at -2 frames, seen on the H200); the index holds the demuxer's. The file's first frame gives the
        # shift, once per file content (hard-linked repeats share it), so every later frame is still checked
        # against the index.
        self._local.pts_shift = _PTS_SHIFTS.get(path, lambda: _first_pts(current))
        return current

    def _read(self, decoder, wanted: list[int], through: bool) -> tuple[torch.Tensor, list[int]]:
        """The `wanted` frames (ascending) as stacked surfaces (a copy: the decoder reuses its buffers) and the
        decoder's pts of each: by index, or read through from the decoder's position (`_local.next`)."""
        if not through:
            decoded = decoder.get_batch_frames_by_index(wanted)
            if len(decoded) != len(wanted):
                raise RuntimeError(f"asked for {len(wanted)} frames, got {len(decoded)}")
            return torch.stack([torch.from_dlpack(f) for f in decoded]), [f.getPTS() for f in decoded]
        pieces, pts, want = [], [], set(wanted)
        while self._local.next <= wanted[-1]:
            got = decoder.get_batch_frames(min(self.group, wanted[-1] + 1 - self._local.next))
            if not got:
                raise FrameMismatch(f"the stream ended at frame {self._local.next}")
            kept = [f for j, f in enumerate(got) if self._local.next + j in want]
            self._local.next += len(got)
            if kept:
                pieces.append(torch.stack([torch.from_dlpack(f) for f in kept]))
                pts.extend(f.getPTS() for f in kept)
        if len(pts) != len(wanted):
            raise FrameMismatch(f"read through to frame {self._local.next - 1}, got {len(pts)} of {len(wanted)} frames")
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), pts

    def _fetch(self, decoder, unit: dict, frames: list[int], through: bool = False) -> FrameBatch:
        """Kept frames -> one FrameBatch (device groups of `group` frames, so an engine batch is full);
        FrameMismatch when a frame is not the one the container index names."""
        h, w = unit["height"], unit["width"]
        matrix, full = matrix_of(unit)
        batch = FrameBatch.empty(len(frames))
        ready = None  # model input for the whole batch when the fused NV12 path runs
        for k in range(0, len(frames), self.group):
            wanted = frames[k : k + self.group]
            surfaces, decoded_pts = self._read(decoder, wanted, through)
            for i, got_pts in zip(wanted, decoded_pts):
                expected = unit["pts"][i - unit["start"]]
                got = got_pts - self._local.pts_shift + unit["first_pts"]
                if got != expected:
                    raise FrameMismatch(f"frame {i} has pts {got}, the container index says {expected}")
            if self.input_dtype is not None and is_nv12(surfaces, h):
                if ready is None:
                    ready = torch.empty((len(frames), 3, *self.imgsz), dtype=self.input_dtype, device=surfaces.device)
                    batch.device_groups.append(ready)
                nv12_letterbox(surfaces, h, w, self.imgsz, ready[k : k + len(wanted)], matrix, full)
            else:
                batch.device_groups.append(yuv_to_rgb(surfaces, h, w, matrix, full))
        for j in range(len(frames)):
            batch.geom.set(j, (h, w), self.imgsz, (h, w))
        batch.slots = np.arange(len(frames), dtype=np.int64)
        from yoloray.data.video_index import frame_ts

        set_video_meta(batch, unit, frames, frame_ts)
        return batch
