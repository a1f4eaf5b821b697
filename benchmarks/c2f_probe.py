"""Eager torch's channels_last copies in C2f blocks (issue 17's engines run found half of the fp16 graph's GPU time
in `direct_copy` kernels): YOLOv8s fused, fp16, channels_last, batch 128 at 384x640 replayed as a CUDA graph, as
ultralytics writes C2f (`cv1(x).chunk(2, 1)`: the halves are strided NHWC views, and the first bottleneck's
convolution copies its input) against C2f with `cv1` split into two convolutions (two contiguous halves, the same
weights). Prints images/s of both (interleaved replays), their outputs' largest difference, and the GPU time of
copy kernels per batch.

    python benchmarks/c2f_probe.py      # a CUDA GPU; ultralytics importable
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import types

import torch

os.environ.setdefault("YOLO_OFFLINE", "true")


def split_c2f(model: torch.nn.Module) -> int:
    """Give every C2f-forward block of a fused model two half convolutions in place of `cv1` + chunk."""
    from ultralytics.nn.modules.block import C2f

    n = 0
    for m in model.modules():
        if not isinstance(m, C2f) or type(m).forward is not C2f.forward or not hasattr(m.cv1, "conv"):
            continue
        conv, c = m.cv1.conv, m.c
        halves = []
        for part in (slice(0, c), slice(c, 2 * c)):
            h = torch.nn.Conv2d(conv.in_channels, c, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                                conv.groups, bias=conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
            h.weight.data.copy_(conv.weight.data[part])
            if conv.bias is not None:
                h.bias.data.copy_(conv.bias.data[part])
            halves.append(h.to(memory_format=torch.channels_last))
        m.cv1a, m.cv1b = halves

        def forward(self, x):
            y = [self.cv1.act(self.cv1a(x)), self.cv1.act(self.cv1b(x))]
            y.extend(b(y[-1]) for b in self.m)
            return self.cv2(torch.cat(y, 1))

        m.forward = types.MethodType(forward, m)
        n += 1
    return n


def graphed(model, x):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            model(x)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = model(x)
    torch.cuda.current_stream().wait_stream(s)
    return g, out


def copy_ms(g, calls=5) -> tuple[float, float]:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            g.replay()
        torch.cuda.synchronize()
    k = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    total = sum(e.time_range.elapsed_us() for e in k) / calls / 1e3
    copies = sum(e.time_range.elapsed_us() for e in k if "copy" in e.name.lower()) / calls / 1e3
    return total, copies


def main() -> int:
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    base = DetectionModel("yolov8s.yaml", verbose=False).fuse(verbose=False).eval().cuda().half()
    base = base.to(memory_format=torch.channels_last)
    for p in base.parameters():
        p.requires_grad_(False)
    import copy

    split = copy.deepcopy(base)
    n = split_c2f(split)
    x = torch.rand(128, 3, 384, 640, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        a = base(x)[0].float()
        b = split(x)[0].float()
    diff = (a - b).abs().max().item()
    rel = diff / a.abs().max().item()
    graphs = {}
    with torch.inference_mode():
        for name, m in (("ultralytics C2f", base), ("C2f with cv1 split", split)):
            graphs[name] = graphed(m, x)
    times = {k: [] for k in graphs}
    for _ in range(60):
        for k, (g, _) in graphs.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            g.replay()
            torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; YOLOv8s fp16 channels_last, batch 128, 384x640, "
          f"CUDA graph; {n} C2f blocks split; largest output difference {diff:.4g} ({rel:.2e} of the largest value)")
    print(f"{'model':<22} {'images/s (median replay)':>25} {'GPU ms/batch':>13} {'copy kernels ms':>16}")
    for k, (g, _) in graphs.items():
        total, copies = copy_ms(g)
        print(f"{k:<22} {128 / statistics.median(times[k]):>25,.0f} {total:>13.2f} {copies:>16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
