"""NvdecDecoder's reading logic (read through vs by index, the decoder's position across segments, a wrong frame
turning the decoder to index reads) over a stand-in for PyNvVideoCodec's SimpleDecoder: NVDEC cannot run on these
machines. Each stand-in frame is an NV12 surface whose luma is 16 + its index, so every delivered frame's pixels
say which frame it is. The real decoder runs the same paths in tests/gpu/test_video_gpu.py."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest
import torch

from yoloray.vision.decoders import nvdec

W, H, N = 64, 32, 24  # one file: 24 frames, keyframes every 12 (two segments)


class Frame:
    def __init__(self, i: int, pts: int):
        self.surface = torch.full((H * 3 // 2, W), 128, dtype=torch.uint8)
        self.surface[:H] = 16 + i
        self.pts = pts

    def getPTS(self) -> int:  # noqa: N802 - PyNvVideoCodec's name
        return self.pts

    def __dlpack__(self, **kwargs):
        return self.surface.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.surface.__dlpack_device__()


class FakeSimpleDecoder:
    """What NvdecDecoder uses of SimpleDecoder; `wrong_at`: read through, that frame comes with its successor's pts."""

    made: list[FakeSimpleDecoder] = []
    wrong_at: int | None = None

    def __init__(self, path, **kwargs):
        self.pos, self.seeks, self.through, self.by_index = 0, 0, 0, 0
        FakeSimpleDecoder.made.append(self)

    def reconfigure_decoder(self, path):
        self.pos = 0

    def seek_to_index(self, i):
        self.pos, self.seeks = i, self.seeks + 1

    def get_batch_frames(self, n):
        got = [Frame(i, 1000 + 10 * (i + (i == self.wrong_at))) for i in range(self.pos, min(self.pos + n, N))]
        self.pos += len(got)
        self.through += len(got)
        return got

    def get_batch_frames_by_index(self, indices):
        self.by_index += 1
        return [Frame(i, 1000 + 10 * i) for i in indices]


@pytest.fixture
def decoder(monkeypatch, tmp_path):
    fake = types.SimpleNamespace(SimpleDecoder=FakeSimpleDecoder, OutputColorType=types.SimpleNamespace(NATIVE=0))
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", fake)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(FakeSimpleDecoder, "made", [])
    monkeypatch.setattr(FakeSimpleDecoder, "wrong_at", None)
    dec = nvdec.NvdecDecoder(torch.device("cuda", 0), (32, 64), batch_size=8)
    dec.group = 4  # several reads per batch
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"a file of its own: the pts-shift cache is per file content")
    return dec, path


def _segment(path, start: int, stop: int, keep: list[int]) -> dict:
    return {"kind": "video", "root": str(path.parent), "source": str(path), "prefix": path.name, "start": start,
            "stop": stop, "keep": keep, "pts": [1000 + 10 * i for i in range(start, stop)], "first_pts": 1000,
            "time_base": [1, 300], "width": W, "height": H, "colorspace": 2, "color_range": 1, "open_gop": False}


def _frames(dec, unit) -> list[int]:
    """Every delivered frame's index, checked against its pixels (luma 16 + i -> RGB floor(i * 255 / 219))."""
    out = []
    for batch in dec.batches(unit):
        rgb = torch.cat(batch.device_groups)  # RGB frames come in groups of `dec.group`
        for i, img in zip(batch.frame_index.tolist(), rgb):
            assert int(img[0, 0, 0]) == int(i * 255 / 219), (i, int(img[0, 0, 0]))
            out.append(i)
    return out


def test_consecutive_segments_are_read_through_with_one_seek(decoder):
    dec, path = decoder
    assert _frames(dec, _segment(path, 0, 12, list(range(12)))) + _frames(dec, _segment(path, 12, 24, list(range(12, 24)))) \
        == list(range(24))
    (made,) = FakeSimpleDecoder.made
    assert made.seeks == 1 and made.through == 24  # the second segment went on where the first ended
    assert made.by_index == 1  # the file's first frame, once, for the pts shift


def test_a_backward_segment_seeks_and_stride_two_reads_through(decoder):
    dec, path = decoder
    assert _frames(dec, _segment(path, 12, 24, list(range(12, 24, 2)))) == list(range(12, 24, 2))
    assert _frames(dec, _segment(path, 0, 12, list(range(0, 12, 2)))) == list(range(0, 12, 2))
    (made,) = FakeSimpleDecoder.made
    assert made.seeks == 2 and made.through == 22  # up to the last kept frame of each (22, 10), nothing after


def test_sparse_segments_are_read_by_index(decoder):
    dec, path = decoder
    assert _frames(dec, _segment(path, 0, 12, [0, 3, 6, 9])) == [0, 3, 6, 9]
    (made,) = FakeSimpleDecoder.made
    assert made.through == 0 and made.by_index == 2  # the pts-shift probe, then one group of 4


def test_a_wrong_frame_read_through_turns_the_decoder_to_index_reads(decoder, caplog):
    dec, path = decoder
    FakeSimpleDecoder.wrong_at = 9
    with caplog.at_level(logging.WARNING):
        got = _frames(dec, _segment(path, 0, 12, list(range(12)))) + _frames(dec, _segment(path, 12, 24, list(range(12, 24))))
    assert got == list(range(24))  # each frame once: the batch with the wrong frame was read again by index
    assert dec.read == "index" and "reads frames by index from now on" in caplog.text
    assert "could not decode" not in caplog.text  # no frame went to the CPU
    assert np.sum([d.through for d in FakeSimpleDecoder.made]) == 12  # frames 0-11 read through, then by index


def test_unknown_read_mode_is_refused():
    with pytest.raises(ValueError, match="read must be one of sequential, index"):
        nvdec.NvdecDecoder(torch.device("cuda", 0), (32, 64), 8, read="fast")
