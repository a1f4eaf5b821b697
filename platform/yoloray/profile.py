"""Resolve a profile: every `auto` becomes a concrete value, once, for the hardware found and a sample of the inputs.

    resolve(profile, hardware, sample) -> Profile      (no field left `auto`; what is printed, saved and run)

The defaults are the fastest settings measured that pass the fidelity checks (benchmarks/README.md):

- CUDA: fp16, channels_last, CUDA graphs, batch 128 run as forwards of `micro_batch` 32, the frames'
  stride-aligned rectangle, nvJPEG with 15% of the JPEGs decoded by CPU tasks upstream (`decode: hybrid`;
  all on the GPU when there are fewer than 8 cores per GPU), 3 actors per GPU x 2 concurrent calls, 4 engine
  batches per call; fewer actors per GPU when a GPU memory budget measured earlier for the same profile on the
  same GPU model says fewer fit (observe/budgets.py; an explicit actors_per_gpu is kept, with a warning).
  (One H200, 16 cores, YOLOv8s, 1080p JPEGs: 1,676 images/s end to end over 40,000 images, 3,315 over
  300,000; the same configuration led at both job sizes.)
- CPU: backend onnxruntime (CPU provider) at fp32, batch 16, OpenCV decode at full size, 1 actor x 1 call.
  ONNX Runtime fp32 keeps the exact path's detections (ultralytics predict's) and ran the demo YOLOv8n at 640
  1.67x torch fp32 on the 2-core machine; int8 (2.25x) is a fast mode, used only when asked for.
- Input size: ultralytics' rect letterbox for the sampled frames (the long side at 640, the short side
  rounded up to the stride: 1920x1080 -> 384x640); frames of different sizes, or no sample, get square 640.
- The sample (`Sample.of_units`): a few stills read on the driver, and video frames by the size and codec the
  index of the first video files records (a few files indexed on the driver, nothing decoded). JPEG only: the
  JPEG defaults; video only: NVDEC where it runs; anything else, videos and stills together included: decode
  on the CPU with the stills' layout (3 x 2).

The speed knobs (CUDA graphs, channels_last, micro_batch) were measured with the torch backend; with another
backend `auto` leaves them off (give them to use them), and picks fp16 only where the backend offers it.
A value the user gave is never changed; one that cannot run here fails with the reason (`ConfigError`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from yoloray.config import AUTO, MAX_STRIDE, ConfigError, Profile
from yoloray.engines.capabilities import KNOB_DEFAULTS, capability, unhonoured

LONG_SIDE = 640  # ultralytics' default imgsz
# every speed knob off: the exact path, which reproduces ultralytics predict (the fidelity reference; also what
# benchmarks and tests pin when they mean the settings that were the defaults before profiles)
EXACT_PATH = {"backend": "torch", "precision": "fp32", "cuda_graph": False, "micro_batch": None, "channels_last": False,
              "decode": "cpu", "reduced_decode": False}
# Hardware JPEG / video decode engines per GPU model (NVIDIA data sheets); None where not known.
ENGINES = {"H200": (7, 7), "H100": (7, 7), "A100": (1, 5), "L4": (4, 4)}  # (JPEG, NVDEC)
HYBRID_MIN_CPUS_PER_GPU = 8  # the hybrid rows were measured with 16 cores per GPU
JPEG_CODECS = ("jpeg",)
VIDEO = "video"  # a video frame's codec in a Sample: "video:" and the stream's FFmpeg codec name


@dataclass(frozen=True)
class Hardware:
    gpus: int = 0
    gpu_name: str | None = None
    gpu_mem_gib: float | None = None
    cpus: int = 1
    jpeg_engines: int | None = None
    nvdec_engines: int | None = None
    nvdec: bool = False  # PyNvVideoCodec can decode video on these GPUs here (vision/decoders/nvdec.py)

    @property
    def cuda(self) -> bool:
        return self.gpus > 0

    @classmethod
    def local(cls) -> Hardware:
        """This process's view: the GPUs torch sees and the cores of this machine."""
        import torch

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if not torch.cuda.is_available():
            return cls(cpus=cpus)
        from yoloray.vision.decoders.nvdec import nvdec_missing

        props = torch.cuda.get_device_properties(0)
        gpu = cls.of_gpu(torch.cuda.device_count(), props.name, props.total_memory / 2**30, cpus)
        return replace(gpu, nvdec=nvdec_missing() is None)

    @classmethod
    def cluster(cls) -> Hardware:
        """The Ray cluster's view (GPUs and CPUs in all; the GPU model from Ray's accelerator_type resource),
        with this machine's GPU memory when it has the same GPUs."""
        import ray

        res = ray.cluster_resources()
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
        if not gpus:
            return cls(cpus=cpus)
        names = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
        here = cls.local()
        name = names[0] if names else here.gpu_name
        same = bool(here.gpu_name and name and _model(name) == _model(here.gpu_name))
        return replace(cls.of_gpu(gpus, name, here.gpu_mem_gib if same else None, cpus), nvdec=here.nvdec)

    @classmethod
    def of_gpu(cls, gpus: int, name: str | None, mem_gib: float | None, cpus: int) -> Hardware:
        jpeg, nvdec = ENGINES.get(_model(name or ""), (None, None))
        return cls(gpus, name, mem_gib, cpus, jpeg, nvdec)

    def describe(self) -> str:
        if not self.cuda:
            return f"no GPU, {self.cpus} CPUs"
        engines = "" if self.jpeg_engines is None else f", {self.jpeg_engines} JPEG / {self.nvdec_engines} NVDEC engines"
        mem = "" if self.gpu_mem_gib is None else f" {self.gpu_mem_gib:.0f} GiB"
        return f"{self.gpus} x {self.gpu_name or 'GPU'}{mem}{engines}, {self.cpus} CPUs"


def _model(name: str) -> str:
    """'NVIDIA H200' / 'H200' / 'NVIDIA-H100-80GB-HBM3' -> the model key of ENGINES (or '')."""
    upper = name.upper().replace("-", " ").replace("_", " ")
    return next((m for m in ENGINES if m in upper.split() or f" {m} " in f" {upper} "), "")


@dataclass(frozen=True)
class Sample:
    """What a few inputs look like: frame sizes (width, height) and codecs ('jpeg', 'other' for other stills,
    'video:h264', 'video:hevc', ... for video frames). Samples add up (`a + b`: both inputs' frames)."""

    frame_sizes: tuple[tuple[int, int], ...] = ()
    codecs: tuple[str, ...] = ()

    def __add__(self, other: Sample) -> Sample:
        return Sample(self.frame_sizes + other.frame_sizes, self.codecs + other.codecs)

    @classmethod
    def of_images(cls, images: Sequence[bytes]) -> Sample:
        from yoloray.vision.decode import ImageError, probe

        sizes, codecs = [], []
        for data in images:
            try:
                info = probe(data, 2**62)
            except ImageError:
                continue
            sizes.append((info.width, info.height))
            codecs.append("jpeg" if info.is_jpeg else "other")
        return cls(tuple(sizes), tuple(codecs))

    @classmethod
    def of_units(cls, units: Sequence[dict], options=None, images: int = 8) -> Sample:
        """Up to `images` frames of each kind of input among a job's units, in the units' order. Stills are
        read here on the driver (a few members of the first archives or files, not whole archives); the first
        video files (at most SAMPLE_FILES) are indexed here, never decoded: a segment's kept frames count with
        the size and codec its index records (data/video_index.py). A job of videos and stills samples both."""
        from itertools import islice

        from yoloray.data.inputs import SourceOptions
        from yoloray.data.readers import read_unit
        from yoloray.data.video_index import SAMPLE_FILES, is_video_file, segments_of

        options = options or SourceOptions()
        videos, stills = cls(), cls()
        files = 0  # video files indexed here
        for unit in units:
            if len(videos.frame_sizes) >= images and len(stills.frame_sizes) >= images:
                break  # both kinds sampled: a job of a million units is not walked to its end
            if unit.get("kind") == VIDEO:
                if len(videos.frame_sizes) >= images or files >= SAMPLE_FILES:
                    continue
                files += is_video_file(unit)
                for segment in segments_of([unit], options):
                    n = min(len(segment.get("keep") or ()), images - len(videos.frame_sizes))
                    if n > 0 and segment.get("error") is None and segment.get("width") and segment.get("height"):
                        size, codec = (segment["width"], segment["height"]), f"{VIDEO}:{segment.get('codec')}"
                        videos += cls((size,) * n, (codec,) * n)
            elif len(stills.frame_sizes) < images:
                rows = islice(read_unit(unit, options), images - len(stills.frame_sizes))
                stills += cls.of_images([r["image"] for r in rows if r.get("image") is not None and not r.get("error")])
        return videos + stills

    @property
    def jpeg(self) -> bool:
        return bool(self.codecs) and all(c in JPEG_CODECS for c in self.codecs)

    @property
    def video(self) -> bool:
        """Every sampled frame is a video frame (codec 'video' or 'video:NAME')."""
        return bool(self.codecs) and all(c.split(":", 1)[0] == VIDEO for c in self.codecs)

    def describe(self) -> str:
        if not self.frame_sizes:
            return "no sample"
        sizes = sorted(set(self.frame_sizes))
        return f"{len(self.frame_sizes)} inputs, {', '.join(f'{w}x{h}' for w, h in sizes[:3])}, {'/'.join(sorted(set(self.codecs)))}"


def rect_imgsz(frame_size: tuple[int, int], long_side: int = LONG_SIDE) -> tuple[int, int]:
    """ultralytics' rect letterbox shape for frames of `frame_size` (width, height): the frame scaled so its
    long side is `long_side`, each side rounded, then padded up to the stride. 1920x1080 -> (384, 640)."""
    w, h = frame_size
    r = long_side / max(w, h)
    return tuple(math.ceil(round(side * r) / MAX_STRIDE) * MAX_STRIDE for side in (h, w))  # type: ignore[return-value]


def auto_imgsz(sample: Sample | None) -> tuple[int, int]:
    """One rectangle when every sampled frame has the same size (as ultralytics predicts a batch of same-shaped
    frames); square LONG_SIDE otherwise."""
    sizes = set(sample.frame_sizes) if sample else set()
    return rect_imgsz(sizes.pop()) if len(sizes) == 1 else (LONG_SIDE, LONG_SIDE)


def defaults(hardware: Hardware, sample: Sample | None) -> dict:
    """The concrete value of every `auto` field, by flat name, for this hardware and sample."""
    jpeg = sample is None or not sample.codecs or sample.jpeg
    video = bool(sample and sample.video)
    if not hardware.cuda:
        return {"precision": "fp32", "batch_size": 16, "imgsz": auto_imgsz(sample), "cuda_graph": False,
                "micro_batch": None, "channels_last": False, "decode": "cpu", "actors_per_gpu": 1,
                "calls_per_actor": 1, "batches_per_call": 4, "hybrid_cpu_share": 0.15}
    hybrid = jpeg and hardware.cpus / hardware.gpus >= HYBRID_MIN_CPUS_PER_GPU
    nvdec = not jpeg and video and hardware.nvdec
    # NVDEC: two actors, each with two concurrent calls (each its own decoder session) per NVDEC engine. H200,
    # 1080p H.264 (benchmarks/README.md): 1 x 14 calls 3,566 steady, 1 x 8 3,107, 2 actors x 4 3,037; then, in
    # one call on 100,320 frames, 2 actors x 14 calls 3,734 steady (2,680 end to end, start-up 10.6 s) against
    # 1 x 28 3,513 (2,381, 13.6 s), with NVDEC's engines ~100% busy in both.
    layout = {"actors_per_gpu": 2, "calls_per_actor": 2 * (hardware.nvdec_engines or 4)} if nvdec else \
        {"actors_per_gpu": 3, "calls_per_actor": 2}
    return {"precision": "fp16", "batch_size": 128, "imgsz": auto_imgsz(sample), "cuda_graph": True,
            "micro_batch": 32, "channels_last": True,
            # JPEG: nvJPEG (with a CPU share); video: NVDEC where PyNvVideoCodec runs (GPU.md: 4,158-4,703 frames/s
            # vs 1,567 for PyAV on 16 cores); anything else: the CPU
            "decode": ("hybrid" if hybrid else "gpu") if jpeg else "gpu" if nvdec else "cpu",
            **layout, "batches_per_call": 4,
            "hybrid_cpu_share": 0.15}  # the share only matters with decode: hybrid


def auto_backend(fields: dict, on_cuda: bool) -> str:
    """backend auto: on CUDA torch (the measured defaults above); on a CPU device ONNX Runtime's CPU provider,
    exact at fp32 and faster than torch fp32 (benchmarks/README.md), unless a value given needs torch
    (bf16, channels_last). A provider given means onnxruntime anywhere."""
    if fields["provider"] is not None:
        return "onnxruntime"
    if on_cuda:
        return "torch"
    given = {k: (KNOB_DEFAULTS.get(k) if v == AUTO else v) for k, v in fields.items()}
    given["precision"] = "fp32" if fields["precision"] == AUTO else fields["precision"]
    return "torch" if unhonoured(given, "onnxruntime", "cpu") else "onnxruntime"


def resolve(profile: Profile, hardware: Hardware, sample: Sample | None = None) -> Profile:
    """`profile` with every `auto` made concrete; explicit values kept (ConfigError if they cannot run)."""
    fields = profile.flat()
    device = fields["device"]
    if device == AUTO:
        device = "cuda" if hardware.cuda else "cpu"
    elif device.startswith("cuda") and not hardware.cuda:
        raise ConfigError(f"device {device!r} asked for, but no CUDA GPU was found ({hardware.describe()}); "
                          "use device: auto or cpu")
    on_cuda = device.startswith("cuda")
    chosen = defaults(hardware if on_cuda else Hardware(cpus=hardware.cpus), sample)
    backend = chosen["backend"] = profile.backend if profile.backend != AUTO else auto_backend(fields, on_cuda)
    if profile.backend == AUTO and backend == "onnxruntime" and fields["provider"] is None and not on_cuda:
        fields["provider"] = "cpu"  # recorded in the profile, as the engine would pick it
    cap = capability(backend, profile.provider)  # auto picks only what the backend honours
    if chosen["precision"] not in cap.precisions:
        chosen["precision"] = "fp32" if "fp32" in cap.precisions else cap.precisions[0]
    for knob in ("cuda_graph", "channels_last"):  # measured on the torch backend; elsewhere off unless given
        chosen[knob] = chosen[knob] and cap.honours(knob) and backend in ("torch", "torch-compile")
    for name, value in fields.items():
        if value != AUTO or name == "device":
            continue
        value = chosen[name]
        if name == "micro_batch":  # measured with the torch backend's CUDA graphs: forwards of 32 graph replays
            graphs = fields["cuda_graph"] if fields["cuda_graph"] != AUTO else chosen["cuda_graph"]
            batch = fields["batch_size"] if fields["batch_size"] != AUTO else chosen["batch_size"]
            value = value if backend == "torch" and graphs is True and batch % value == 0 else None
        fields[name] = value
    try:
        resolved = Profile.parse({**fields, "device": device}, source="profile")
    except ConfigError as e:
        if profile.device == AUTO and not on_cuda:  # a CUDA-only value given, and no GPU to run it on
            raise ConfigError(f"{e} (device auto is the CPU here: {hardware.describe()})") from None
        raise
    from yoloray.observe.budgets import pack  # auto actors_per_gpu capped by a stored GPU memory budget

    return pack(resolved, hardware, auto=profile.layout.actors_per_gpu == AUTO)


def resolve_here(profile: Profile, sample: Sample | None = None) -> Profile:
    """Resolve for this process's hardware (a Detector, a Serve replica, a tune trial)."""
    return profile if profile.is_resolved() else resolve(profile, Hardware.local(), sample)


def summary(profile: Profile, hardware: Hardware, sample: Sample | None, chosen: set[str]) -> str:
    """Lines printed at the start of a job: hardware, sample and each section; values that `auto` chose (the
    flat names in `chosen`) are marked with *."""
    lines = [f"profile for {hardware.describe()}; sample: {sample.describe() if sample else 'none'}"]
    for section in ("engine", "decoding", "post", "layout"):
        values = getattr(profile, section).model_dump(mode="json")
        shown = [f"{k}={v}{'*' if k in chosen else ''}" for k, v in values.items() if v is not None]
        lines.append(f"  {section:<9} " + " ".join(shown))
    lines.append(f"  device    {profile.device}{'*' if 'device' in chosen else ''}   (* = chosen by auto)")
    from yoloray.observe.budgets import packing  # the GPU memory budget stored for this profile, if any

    packed = packing(profile, hardware, auto="actors_per_gpu" in chosen)
    return "\n".join(lines + (packed.lines() if packed else []))
