"""NVDEC's NV12 surfaces -> letterboxed model input in one GPU pass (a Triton kernel).

The reference path is two steps over full-size frames: `yuv_to_rgb` (vision/decoders/nvdec.py: FFmpeg's
conversion, chroma repeated, each channel truncated to uint8) makes a 1080p RGB frame, then `letterbox_gpu`
(vision/letterbox.py) resizes it bilinearly (half-pixel centres, like cv2 INTER_LINEAR) into the model input.
That is ~20 full-size float passes per frame, which on the H200 cost about as much GPU time as the model.

`nv12_letterbox` computes the same numbers for the input pixels only: each output pixel reads the 2x2 source
pixels the resize would blend (luma, and the chroma sample each of them repeats), converts each one exactly as
`yuv_to_rgb` does (truncated to a uint8 value), and blends them with the resize's weights; pad pixels get 114.
It reads the NV12 bytes once and writes the input once. Only the order of float operations differs from the
reference (fused multiply-adds), so a channel may differ by one level where a value sits on a truncation step;
tests/unit/test_video_decoders.py checks it against the reference with Triton's interpreter on the CPU, and
tests/gpu/test_video_gpu.py on the GPU.
"""

from __future__ import annotations

import os

from yoloray.vision.letterbox import PAD_VALUE, placement

try:  # Triton comes with torch's CUDA builds; without it NVDEC frames take the reference path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the project's torch pins bring Triton
    triton = None

BLOCK = 256
# Kr, Kb of the YCbCr matrices (ITU-R BT.601 / BT.709 / BT.2020)
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}


if triton is not None:
    @triton.jit
    def nv12_letterbox_kernel(src, out, h, w, src_frame, src_row, out_h, out_w, new_h, new_w, top, left,
                              scale_y, scale_x, kr, kb, pad, FULL: tl.constexpr, BLOCK: tl.constexpr):
        n = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        total = out_h * out_w
        valid = offs < total
        oy = offs // out_w
        ox = offs % out_w
        iy = oy - top
        ix = ox - left
        inside = valid & (iy >= 0) & (iy < new_h) & (ix >= 0) & (ix < new_w)
        # source coordinates as torch's upsample_bilinear2d (align_corners=False): half-pixel centres, >= 0
        sy = tl.maximum(scale_y * (iy.to(tl.float32) + 0.5) - 0.5, 0.0)
        sx = tl.maximum(scale_x * (ix.to(tl.float32) + 0.5) - 0.5, 0.0)
        y0 = sy.to(tl.int32)
        x0 = sx.to(tl.int32)
        ly = sy - y0.to(tl.float32)
        lx = sx - x0.to(tl.float32)
        y1 = tl.where(y0 < h - 1, y0 + 1, y0)
        x1 = tl.where(x0 < w - 1, x0 + 1, x0)
        base = src + n.to(tl.int64) * src_frame
        chroma = base + h * src_row
        kg = 1.0 - kr - kb
        top_r = tl.zeros([BLOCK], tl.float32)  # torch's order: (1-ly) * (row y0 blend) + ly * (row y1 blend)
        top_g = tl.zeros([BLOCK], tl.float32)
        top_b = tl.zeros([BLOCK], tl.float32)
        bot_r = tl.zeros([BLOCK], tl.float32)
        bot_g = tl.zeros([BLOCK], tl.float32)
        bot_b = tl.zeros([BLOCK], tl.float32)
        for corner in tl.static_range(4):
            yy = y0 if corner < 2 else y1
            xx = x0 if corner % 2 == 0 else x1
            wx = (1.0 - lx) if corner % 2 == 0 else lx
            lum = tl.load(base + yy * src_row + xx, mask=inside, other=0).to(tl.float32)
            c = chroma + (yy // 2) * src_row + (xx // 2) * 2
            u = tl.load(c, mask=inside, other=128).to(tl.float32)
            v = tl.load(c + 1, mask=inside, other=128).to(tl.float32)
            if FULL:
                u = u - 128.0
                v = v - 128.0
            else:
                lum = (lum - 16.0) * (255.0 / 219.0)
                u = (u - 128.0) * (255.0 / 224.0)
                v = (v - 128.0) * (255.0 / 224.0)
            r = tl.minimum(tl.maximum(tl.floor(lum + 2 * (1 - kr) * v), 0.0), 255.0)
            g = tl.minimum(tl.maximum(tl.floor(lum - (2 * kb * (1 - kb) / kg) * u - (2 * kr * (1 - kr) / kg) * v),
                                      0.0), 255.0)
            b = tl.minimum(tl.maximum(tl.floor(lum + 2 * (1 - kb) * u), 0.0), 255.0)
            if corner < 2:
                top_r += wx * r
                top_g += wx * g
                top_b += wx * b
            else:
                bot_r += wx * r
                bot_g += wx * g
                bot_b += wx * b
        acc_r = (1.0 - ly) * top_r + ly * bot_r
        acc_g = (1.0 - ly) * top_g + ly * bot_g
        acc_b = (1.0 - ly) * top_b + ly * bot_b
        o = out + n.to(tl.int64) * 3 * total + offs
        dtype = out.dtype.element_ty
        padv = pad / 255.0
        tl.store(o, tl.where(inside, acc_r.to(dtype).to(tl.float32) / 255.0, padv).to(dtype), mask=valid)
        tl.store(o + total, tl.where(inside, acc_g.to(dtype).to(tl.float32) / 255.0, padv).to(dtype), mask=valid)
        tl.store(o + 2 * total, tl.where(inside, acc_b.to(dtype).to(tl.float32) / 255.0, padv).to(dtype), mask=valid)


def is_nv12(yuv, height: int) -> bool:
    """Whether decoded surfaces (N, rows, width[, 1]) are 8-bit NV12 of frames `height` rows high (not 4:4:4,
    not 16-bit words): what the fused kernel takes."""
    import torch

    return yuv.dtype == torch.uint8 and yuv.shape[1] * 2 == 3 * height


def nv12_letterbox(yuv, height: int, width: int, dst_hw: tuple[int, int], out, matrix: str = "bt601",
                   full_range: bool = False) -> None:
    """NV12 uint8 surfaces (N, height * 3/2, width[, 1]) -> `out` (N, 3, H, W) RGB in [0, 1] (out's dtype,
    fp16 or fp32), letterboxed as `letterbox_gpu(yuv_to_rgb(...))` would make it."""

    if yuv.dim() == 4 and yuv.shape[-1] == 1:
        yuv = yuv[..., 0]
    if not is_nv12(yuv, height) or yuv.stride(2) != 1:
        raise ValueError(f"not 8-bit NV12 rows of {width}x{height}: {tuple(yuv.shape)} {yuv.dtype}")
    if not out.is_contiguous() or tuple(out.shape[1:]) != (3, *dst_hw):
        raise ValueError(f"out must be a contiguous (N, 3, {dst_hw[0]}, {dst_hw[1]}) tensor")
    p = placement((height, width), dst_hw)
    kr, kb = MATRICES[matrix]
    n = yuv.shape[0]
    total = dst_hw[0] * dst_hw[1]
    grid = (n, (total + BLOCK - 1) // BLOCK)
    nv12_letterbox_kernel[grid](yuv, out, height, width, yuv.stride(0), yuv.stride(1), dst_hw[0], dst_hw[1], p.new_h, p.new_w,
                    p.top, p.left, height / p.new_h, width / p.new_w, kr, kb, float(PAD_VALUE),
                    FULL=bool(full_range), BLOCK=BLOCK)


def fused_enabled() -> bool:
    """The fused path is on unless YOLORAY_NV12_FUSED=0 (the reference path, for comparisons) or Triton is
    missing."""
    return os.environ.get("YOLORAY_NV12_FUSED", "1") != "0" and triton is not None
