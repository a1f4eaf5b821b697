"""The torch engine's micro-batches: a batch runs as several forwards of micro_batch images, with the same
output as one forward of the whole batch."""

import torch

from yoloray.config import Profile
from yoloray.detector import Detector
from yoloray.engines import build_engine
from yoloray.profile import resolve_here


def test_micro_batches_give_the_output_of_one_forward(checkpoints):
    cfg = resolve_here(Profile(model=str(checkpoints["v8"]), imgsz=64, batch_size=6, device="cpu"))
    whole = build_engine(cfg, torch.device("cpu"))
    chunked = build_engine(cfg.replace(micro_batch=2), torch.device("cpu"))
    assert (whole.forward_batch, chunked.forward_batch) == (6, 2)
    x = torch.rand((6, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    a, b = whole(x), chunked(x)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunked(x[:3]), a[:3], rtol=1e-4, atol=1e-4)  # a short batch, the last chunk short


def test_detector_pads_to_a_multiple_of_the_static_micro_batch(checkpoints):
    """An engine with a static batch (CUDA graph or compiled) takes multiples of it: the Detector pads a short
    batch only up to the next multiple of micro_batch, and returns one row per real image."""
    det = Detector(Profile(model=str(checkpoints["v8"]), imgsz=64, batch_size=8, micro_batch=4, device="cpu"))
    engine, seen = det.engine, []

    class StaticBatchEngine:  # the CPU engine runs any batch; a CUDA-graph engine has static_batch = micro_batch
        static_batch = 4

        def __call__(self, x):
            seen.append(x.shape[0])
            return engine(x)

    det.engine = StaticBatchEngine()
    x = torch.rand((5, 3, 64, 64))
    assert det.infer(x).shape[0] == 5 and seen == [8]
    torch.testing.assert_close(det.infer(x[:3]), engine(x[:3]), rtol=1e-4, atol=1e-4)
    assert seen == [8, 4]
