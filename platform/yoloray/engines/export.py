"""ONNX export of the fused detection model, with the metadata that lets the file describe itself.

The graph is traced by ultralytics' own exporter helper (`torch2onnx`, TorchScript-based, the opset ultralytics
picks for ONNX Runtime) from the same fused model the torch backend runs (`torch_backend.load_model`), with the
head in export mode (raw head output only; DFL's softmax over the last axis, `LastAxisDFL`). The input is
`images` (B, 3, H, W) float in [0, 1] at the engine's imgsz; the batch axis is dynamic (`batch=None`) or fixed.
The output `output0` keeps the torch backend's layout: (B, 4 + nc, N) or, for end-to-end heads, (B, K, 6).

Metadata (ONNX `metadata_props`, the keys and value forms ultralytics writes, so its own loader reads them too):
names, stride, imgsz, task, batch, end2end, plus `precision` and `yoloray` (the build key it came from).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import torch

from yoloray.engines.base import EngineError

INPUT, OUTPUT = "images", "output0"
GRAPH_FORM = 2  # in the export's cache key: 2 = DFL as LastAxisDFL (1: ultralytics' middle-axis softmax)


@dataclass(frozen=True)
class OnnxMeta:
    names: dict[int, str]
    stride: int
    imgsz: tuple[int, int]
    task: str
    batch: int | None  # None: dynamic batch axis
    end2end: bool
    precision: str  # fp32 | fp16 | int8 (the weights/activations the graph computes in)
    build_key: str = ""

    def props(self) -> dict[str, str]:
        return {"names": str(self.names), "stride": str(self.stride), "imgsz": str(list(self.imgsz)),
                "task": self.task, "batch": str(self.batch if self.batch is not None else -1),
                "end2end": str(self.end2end), "precision": self.precision, "yoloray": self.build_key,
                "author": "yoloray", "description": "yoloray export of an ultralytics detection model"}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> OnnxMeta:
        try:
            batch = int(props["batch"])
            return cls(names={int(k): str(v) for k, v in ast.literal_eval(props["names"]).items()},
                       stride=int(props["stride"]), imgsz=tuple(ast.literal_eval(props["imgsz"])),
                       task=props["task"], batch=None if batch < 1 else batch,
                       end2end=props.get("end2end", "False") == "True",
                       precision=props.get("precision", "fp32"), build_key=props.get("yoloray", ""))
        except (KeyError, ValueError, SyntaxError) as e:
            raise EngineError(f"{source} is not a yoloray/ultralytics ONNX export (metadata: {e})") from None


def read_metadata(path: str | Path) -> OnnxMeta:
    """The metadata of an exported file (reads only the model header, not the weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return OnnxMeta.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))


def write_metadata(model, meta: OnnxMeta) -> None:
    del model.metadata_props[:]
    for k, v in meta.props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


class LastAxisDFL(torch.nn.Module):
    """ultralytics' DFL (the expected distance over `c1` bins of each box side) with its softmax over the last
    axis and the bins as a MatMul: the same values, but ONNX Runtime's CPU softmax over DFL's middle axis was
    a tenth of the int8 graph's time (2-core machine, YOLOv8n at 640; benchmarks/README.md)."""

    def __init__(self, dfl: torch.nn.Module):
        super().__init__()
        self.c1 = dfl.c1
        self.register_buffer("bins", dfl.conv.weight.detach().reshape(dfl.c1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape  # (B, 4 * c1, A) -> (B, 4, A)
        return (x.view(b, 4, self.c1, a).transpose(2, 3).softmax(-1) @ self.bins).view(b, 4, a)


def _prepare_head(net: torch.nn.Module, imgsz: tuple[int, int]) -> None:
    """The detection head in export mode (raw output only), as ultralytics' exporter sets it, with DFL's
    softmax on the last axis (LastAxisDFL)."""
    from ultralytics.nn.modules import Detect
    from ultralytics.nn.modules.block import DFL

    for m in net.modules():
        if isinstance(m, Detect):
            m.export, m.format, m.dynamic, m.shape = True, "onnx", False, None
            if isinstance(getattr(m, "dfl", None), DFL):
                m.dfl = LastAxisDFL(m.dfl)
            if getattr(net, "end2end", False):  # top-k cannot keep more candidates than there are anchors
                anchors = sum((imgsz[0] // int(s)) * (imgsz[1] // int(s)) for s in net.stride.tolist())
                m.max_det = min(m.max_det, anchors)


def export_onnx(net: torch.nn.Module, path: str | Path, imgsz: tuple[int, int], batch: int | None,
                build_key: str = "") -> OnnxMeta:
    """Write `net` (a fused fp32 DetectionModel from load_model, on the CPU) as ONNX at `path`."""
    import onnx
    from ultralytics.utils.export.engine import best_onnx_opset, torch2onnx

    path = Path(path)
    _prepare_head(net, imgsz)
    example = torch.zeros((batch or 1, 3, *imgsz))
    dynamic = None if batch else {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}
    with torch.inference_mode():
        out = net(example)
    out_shape = tuple((out[0] if isinstance(out, (tuple, list)) else out).shape)
    try:
        torch2onnx(net, example, str(path), opset=best_onnx_opset(onnx), input_names=[INPUT],
                   output_names=[OUTPUT], dynamic=dynamic)
    except Exception as e:
        raise EngineError(f"ONNX export failed: {type(e).__name__}: {e}") from None
    model = onnx.load(str(path))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for d, n in zip(list(dims)[1:], out_shape[1:]):  # only the batch axis varies: the rest is fixed by imgsz
        d.ClearField("dim_param")
        d.dim_value = n
    meta = OnnxMeta(names={int(k): str(v) for k, v in net.names.items()}, stride=max(int(net.stride.max()), 32),
                    imgsz=tuple(imgsz), task="detect", batch=batch, end2end=bool(getattr(net, "end2end", False)),
                    precision="fp32", build_key=build_key)
    write_metadata(model, meta)
    onnx.save(model, str(path))
    return meta


def head_nodes(model) -> tuple[list[str], list[str]]:
    """(decode, output_convs) of the detection head: `decode` are its nodes outside the conv branches (DFL,
    anchors, strides, sigmoid, concat), `output_convs` each branch's last convolution (box distances and class
    logits). Reduced precision stops before both: fp16 keeps the decode in fp32; int8 quantizes neither."""
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    if not convs or convs[-1].count("/") < 2:
        return [], []
    prefix = "/" + convs[-1].split("/")[1] + "/"  # the head is the last module with convolutions
    branches = ("cv2", "cv3", "cv4", "one2one_cv2", "one2one_cv3")
    decode, outputs = [], []
    for n in model.graph.node:
        inner = n.name[len(prefix):] if n.name.startswith(prefix) else None
        if inner is None:
            continue
        if not inner.startswith(branches):
            decode.append(n.name)
        elif n.op_type == "Conv" and inner.split("/")[-2] != "conv":  # a bare nn.Conv2d, not a Conv block's
            outputs.append(n.name)
    return decode, outputs


def to_fp16(src: str | Path, dst: str | Path) -> OnnxMeta:
    """fp16 weights and activations with an fp16 input; the head's box decode and the output stay fp32
    (as the torch backend does: coordinates near 640 px need more than fp16's 11-bit mantissa)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    meta = OnnxMeta.from_props({p.key: p.value for p in model.metadata_props}, source=str(src))
    keep = head_nodes(model)[0]
    half = convert_float_to_float16(model, keep_io_types=[OUTPUT], node_block_list=keep)
    _drop_repeated_casts(half)
    meta = OnnxMeta(**{**meta.__dict__, "precision": "fp16"})
    write_metadata(half, meta)
    onnx.save(half, str(dst))
    return meta


def _drop_repeated_casts(model) -> None:
    """The float16 converter inserts one Cast per (tensor, blocked consumer), all named after the tensor, so a
    tensor feeding two kept-fp32 nodes gets two identical Cast nodes of one name and one output: ONNX Runtime
    refuses such a graph ("two nodes with same node name", seen on the H200). The repeats compute the same
    tensor, so only the first is kept; a different node that merely shares a name is renamed."""
    seen: dict[str, object] = {}
    nodes = []
    for n in model.graph.node:
        first = seen.setdefault(n.name, n)
        if first is not n:
            if list(first.output) == list(n.output) and list(first.input) == list(n.input):
                continue
            n.name = f"{n.name}_{len(nodes)}"
        nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
