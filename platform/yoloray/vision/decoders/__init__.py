"""Decoders: inputs -> `FrameBatch` (frames on the CPU or already on the GPU, per-item geometry, errors and
video metadata). One decoder per file; the Detector never parses a file format (DESIGN.md "Decoders").

Stills: `opencv` (CPU threads), `nvjpeg` (torchvision's nvJPEG), `nvimgcodec`, routed by `stills.StillDecoder`.
Video: `pyav` (FFmpeg on the CPU), `nvdec` (PyNvVideoCodec on the GPU's video decoders).

This package imports neither Ray nor ultralytics (the GPU smoke run imports it alone).
"""

from yoloray.vision.decoders.frames import FrameBatch

__all__ = ["FrameBatch"]
