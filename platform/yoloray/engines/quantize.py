"""INT8: static QDQ quantization (ONNX Runtime's `quantize_static`) calibrated on the user's own frames.

Calibration: `CALIBRATION_FRAMES` (32) frames drawn evenly across the inputs `calibration` names (a folder,
glob, tar/zip/Parquet archive or video, anything `yoloray infer` reads), letterboxed exactly as the Detector
letterboxes them; activation ranges by min/max over those frames. Weights int8 per output channel (symmetric),
activations uint8 per tensor (int8 with zero point 0 for TensorRT) (min/max
calibration keeps only each tensor's running range, so memory does not grow with the frame count). The head's box decode and its output convolutions stay fp32
(`export.head_nodes`): quantizing the class logits moves scores by several hundredths.

The QDQ graph runs on ONNX Runtime's CPU provider (int8 kernels) and on the TensorRT provider (explicit
quantization); whether a model keeps its detections at int8 is measured, never assumed: `yoloray tune` checks
fidelity per trial, and the tests hold int8 to the fast-mode tolerance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from yoloray.engines.base import EngineError

CALIBRATION_FRAMES = 32


def _as_tensor(pixels: np.ndarray) -> np.ndarray:
    """Letterboxed BGR uint8 HWC -> (1, 3, H, W) RGB float32 in [0, 1], as the Detector feeds the engine."""
    return np.ascontiguousarray(pixels[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255


def images_digest(images: Sequence[bytes]) -> str:
    """A short digest of encoded images' content (what a calibration is keyed by)."""
    return hashlib.sha256(b"".join(hashlib.sha256(bytes(i)).digest() for i in images)).hexdigest()[:16]


def frames_from_images(images: Sequence[bytes | np.ndarray], imgsz: tuple[int, int]) -> list[np.ndarray]:
    """Calibration tensors from encoded images or BGR arrays; undecodable ones are skipped."""
    from yoloray.vision.decode import ImageError
    from yoloray.vision.prepare import prepare_cpu

    frames = []
    for item in images:
        try:
            frames.append(_as_tensor(prepare_cpu(item, imgsz, 10**9, False).pixels))
        except ImageError:
            continue  # an unreadable input is no calibration frame; the job reports it in its own row
    if not frames:
        raise EngineError("none of the calibration inputs could be decoded as an image; point calibration at "
                          "a folder or archive of your own frames")
    return frames


def sample_inputs(source: str, count: int = CALIBRATION_FRAMES) -> list[bytes]:
    """`count` encoded frames spread evenly over the units (files, archive parts, clips) of `source`."""
    from yoloray.data.inputs import SourceError, SourceOptions
    from yoloray.data.readers import read_unit
    from yoloray.data.units import list_units

    options = SourceOptions()
    try:
        units = list_units([source], options)
    except SourceError as e:
        raise EngineError(f"calibration inputs: {e}") from None
    units = [u for u in units if u["kind"] != "video"]  # a video reads as segment references: no encoded frames
    step = max(1, len(units) // count)
    per_unit = max(1, -(-count // max(1, len(units[::step]))))
    out: list[bytes] = []
    for unit in units[::step]:
        taken = 0
        for row in read_unit(unit, options):
            if row.get("image") and not row.get("error"):
                out.append(bytes(row["image"]))
                taken += 1
            if taken == per_unit or len(out) == count:
                break
        if len(out) == count:
            break
    if not out:
        raise EngineError(f"calibration inputs {source!r} hold no readable images")
    return out


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of (1, 3, H, W) tensors."""

    def __init__(self, name: str, frames: list[np.ndarray]):
        self.name, self.frames = name, iter(frames)

    def get_next(self):
        x = next(self.frames, None)
        return None if x is None else {self.name: x}

    def rewind(self):  # pragma: no cover - not used by min/max calibration
        raise NotImplementedError


def quantize_int8(src: str | Path, dst: str | Path, frames: list[np.ndarray], symmetric: bool = False) -> None:
    """Write the QDQ int8 version of the fp32 ONNX file `src` to `dst`, calibrated on `frames`. `symmetric`:
    int8 activations with zero point 0, the form TensorRT's explicit quantization takes (ONNX Runtime's
    quantization guide for TensorRT); otherwise uint8 activations, the CPU provider's fast form (U8S8)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from yoloray.engines.export import INPUT, OnnxMeta, head_nodes, write_metadata

    dst = Path(dst)
    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # shapes + graph clean-up for the quantizer
    model = onnx.load(str(pre))
    decode, output_convs = head_nodes(model)
    quantize_static(
        str(pre), str(dst), _Reader(INPUT, frames), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
        per_channel=True, calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=decode + output_convs,
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
    )
    pre.unlink(missing_ok=True)
    quantized = onnx.load(str(dst))
    meta = OnnxMeta.from_props({p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props})
    write_metadata(quantized, OnnxMeta(**{**meta.__dict__, "precision": "int8"}))
    onnx.save(quantized, str(dst))
