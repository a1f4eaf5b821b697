"""One short check of the NVDEC path on a GPU machine without Ray or ultralytics (imports only the decoder
modules, torch and PyAV): PyNvVideoCodec's SimpleDecoder reading segments as the batch job does, DLPack
surfaces, the colour conversion against FFmpeg's, timestamps against the container index, H.264 and HEVC, the
CPU fallback. Writes $OUT/nvdec_smoke.json and prints a short table last.

    python3 benchmarks/nvdec_smoke.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import torch  # noqa: E402

from yoloray.data.inputs import SourceOptions  # noqa: E402
from yoloray.data.scene import render_video_frame  # noqa: E402
from yoloray.data.synthetic import write_clip  # noqa: E402
from yoloray.data.video_index import video_units  # noqa: E402
from yoloray.vision.decoders.nvdec import NvdecDecoder, nvdec_missing  # noqa: E402
from yoloray.vision.decoders.pyav import decode_segment  # noqa: E402


def check(path: Path, stride: int) -> dict:
    base = {"kind": "video", "root": str(path.parent), "source": str(path), "prefix": path.name}
    units = video_units(base, SourceOptions(video_stride=stride), min_frames=1)
    dec = NvdecDecoder(torch.device("cuda"), (384, 640), 16)
    worst, mean, frames, on_gpu, t = 0, [], 0, 0, time.perf_counter()
    for unit in units:
        cpu = {i: im[..., ::-1] for i, im, err in decode_segment(unit) if err is None}
        for batch in dec.batches(unit):
            frames += len(batch)
            if not batch.device_groups:
                continue
            on_gpu += len(batch)
            rgb = batch.device_groups[0].permute(0, 2, 3, 1).cpu().numpy().astype(int)
            for j, i in enumerate(batch.frame_index.tolist()):
                d = np.abs(rgb[j] - cpu[i])
                worst, mean = max(worst, int(d.max())), mean + [float(d.mean())]
    return {"clip": path.name, "segments": len(units), "frames": frames, "on_gpu": on_gpu,
            "max_diff_vs_ffmpeg": worst, "mean_diff": float(np.mean(mean)) if mean else None,
            "seconds": round(time.perf_counter() - t, 3)}


def probe(path: Path) -> dict:
    """PyNvVideoCodec called directly: what its frames look like (metadata, DLPack shape, timestamps by index
    against the container index), so a mismatch shows here rather than as a silent CPU fallback."""
    import PyNvVideoCodec as nvc

    base = {"kind": "video", "root": str(path.parent), "source": str(path), "prefix": path.name}
    (unit,) = video_units(base, SourceOptions(), min_frames=10**6)
    info: dict = {"clip": path.name}
    stream = torch.cuda.current_stream().cuda_stream
    try:
        dec = nvc.SimpleDecoder(str(path), gpu_id=0, cuda_stream=stream, use_device_memory=True,
                                output_color_type=nvc.OutputColorType.NATIVE)
        info["created_with_stream"] = True
    except Exception as e:  # noqa: BLE001
        info["stream_error"] = repr(e)
        dec = nvc.SimpleDecoder(str(path), gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.NATIVE)
    meta = dec.get_stream_metadata()
    info["metadata"] = {k: str(getattr(meta, k)) for k in dir(meta) if not k.startswith("_")}
    info["len"] = len(dec)
    idx = [0, 1, 2, 3, 17, 16, 40]
    frames = dec.get_batch_frames_by_index(idx)
    info["pts_by_index"] = [(i, f.getPTS(), unit["pts"][i]) for i, f in zip(idx, frames)]
    t = torch.from_dlpack(frames[0])
    info["dlpack"] = {"shape": list(t.shape), "dtype": str(t.dtype), "stride": list(t.stride()), "device": str(t.device)}
    info["frame_attrs"] = [a for a in dir(frames[0]) if not a.startswith("__")]
    return info


def main() -> int:
    out = Path(os.environ.get("OUT", "."))
    report: dict = {"nvdec_missing": nvdec_missing(), "results": [], "errors": []}
    if report["nvdec_missing"] is None:
        import PyNvVideoCodec as nvc

        report["pynvvideocodec"] = nvc.__version__
        d = Path(tempfile.mkdtemp())
        w, h, n = 1280, 720, 60
        frames = [render_video_frame(2, i, w, h, n)[0] for i in range(n)]
        for codec in ("h264", "hevc"):
            path = d / f"{codec}.mp4"
            write_clip(path, frames, w, h, 30, codec, gop=15)
            try:
                report.setdefault("probe", []).append(probe(path))
            except Exception:  # noqa: BLE001
                report["errors"].append(traceback.format_exc())
            for stride in (1, 4):
                try:
                    report["results"].append({"stride": stride, **check(path, stride)})
                except Exception:  # noqa: BLE001 - the report says what failed
                    report["errors"].append(traceback.format_exc())
    (out / "nvdec_smoke.json").write_text(json.dumps(report, indent=1, default=str))
    for p in report.get("probe", []):
        print(json.dumps({k: v for k, v in p.items() if k != "frame_attrs"}, default=str)[:1500])
    for e in report["errors"]:
        print(e[-2500:])
    print(f"{'clip':<10}{'stride':>7}{'segments':>9}{'frames':>8}{'on GPU':>8}{'max diff':>9}{'mean':>7}{'s':>7}")
    for r in report["results"]:
        print(f"{r['clip']:<10}{r['stride']:>7}{r['segments']:>9}{r['frames']:>8}{r['on_gpu']:>8}"
              f"{r['max_diff_vs_ffmpeg']:>9}{r['mean_diff'] or 0:>7.2f}{r['seconds']:>7.2f}")
    if report["nvdec_missing"]:
        print("NVDEC missing:", report["nvdec_missing"])
    return 0 if report["results"] and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
