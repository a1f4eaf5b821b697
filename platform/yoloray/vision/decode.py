"""Image probe and CPU decode through OpenCV (with JPEG DCT-domain reduced decode); GPU decoders are in vision/decoders/.

CPU decode follows ultralytics exactly (`cv2.imdecode(bytes, cv2.IMREAD_COLOR)`): BGR uint8, grayscale /
CMYK / 16-bit / alpha converted to 3-channel 8-bit, EXIF orientation applied. Every failure is an
`ImageError` whose message says what is wrong with the image; the caller turns it into an error row.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# EXIF orientations that swap width and height (transpose, rotate 90 / 270, transverse).
_SWAPS_AXES = {5, 6, 7, 8}
_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
SUPPORTED_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "MPO"}
_EXIF_IN_HEADER = {"JPEG", "MPO", "TIFF", "WEBP"}

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit before decoding, with a clear message


class ImageError(ValueError):
    """This image cannot be used; the message says why (it becomes the row's `error`)."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding pixels."""

    format: str
    width: int  # after EXIF orientation
    height: int
    orientation: int

    @property
    def is_jpeg(self) -> bool:
        return self.format in ("JPEG", "MPO")


def probe(data: bytes, max_pixels: int) -> ImageInfo:
    """Read the header: format, size after EXIF orientation. Rejects empty, non-image, truncated-JPEG and
    over-limit inputs before any pixel is decoded."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("empty input (0 bytes)")
    if data[:2] == b"\xff\xd8":
        info = _probe_jpeg(data)
        if info is not None:
            return _checked(info, data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            fmt = im.format or "?"
            w, h = im.size
            if fmt not in SUPPORTED_FORMATS:
                raise ImageError(f"unsupported image format {fmt}; supported: JPEG, PNG, BMP, WebP, TIFF")
            _checked(ImageInfo(fmt, w, h, 1), data, max_pixels)  # before anything reads further
            orientation = 1
            if fmt in _EXIF_IN_HEADER:  # elsewhere (PNG) PIL would decode the whole image to find it
                orientation = int(im.getexif().get(0x0112, 1) or 1)
    except ImageError:
        raise
    except Exception:
        raise ImageError(
            f"not a decodable image ({len(data)} bytes, starts with {bytes(data[:8])!r}); "
            "supported: JPEG, PNG, BMP, WebP, TIFF"
        ) from None
    if orientation in _SWAPS_AXES:
        w, h = h, w
    return _checked(ImageInfo(fmt, w, h, orientation), data, max_pixels)


def _checked(info: ImageInfo, data, max_pixels: int) -> ImageInfo:
    if info.width * info.height > max_pixels:
        raise ImageError(
            f"image is {info.width}x{info.height} = {info.width * info.height:,} pixels, over the limit of "
            f"{max_pixels:,} (max_pixels)"
        )
    if info.is_jpeg and not _has_end_marker(data):
        raise ImageError("truncated JPEG (no end-of-image marker); the file is incomplete")
    return info


def _has_end_marker(data) -> bool:
    """An end-of-image marker after the start of the image's scan, like decoders want: bytes after it (padding,
    appended data) are fine. The last 1 KB is looked at first (the usual case), then the whole image."""
    if b"\xff\xd9" in bytes(data[-1024:]):
        return True
    whole = bytes(data)
    return whole.rfind(b"\xff\xd9") > _scan_start(whole)


def _scan_start(data: bytes) -> int:
    """Offset of the first start-of-scan marker, found by walking the marker segments (so markers inside an
    EXIF thumbnail are skipped); 2 when the walk cannot tell."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return 2
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xDA:
            return pos
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2:
            return 2
        pos += 2 + length
    return 2


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _probe_jpeg(data) -> ImageInfo | None:
    """Size and EXIF orientation from JPEG markers without PIL (the hot path probes thousands a second).
    None when the stream is unusual; the caller then asks PIL."""
    mv = memoryview(data)
    n, pos, orientation = len(mv), 2, 1
    while pos + 4 <= n:
        if mv[pos] != 0xFF:
            return None
        marker = mv[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (mv[pos + 2] << 8) | mv[pos + 3]
        if marker in _SOF:
            if pos + 9 > n:
                return None
            h, w = (mv[pos + 5] << 8) | mv[pos + 6], (mv[pos + 7] << 8) | mv[pos + 8]
            if w == 0 or h == 0:
                return None
            if orientation in _SWAPS_AXES:
                w, h = h, w
            return ImageInfo("JPEG", w, h, orientation)
        if marker == 0xE1 and bytes(mv[pos + 4 : pos + 10]) == b"Exif\x00\x00":
            orientation = _exif_orientation(bytes(mv[pos + 10 : pos + 2 + length])) or orientation
        if marker == 0xDA or length < 2:  # scan data before any frame header
            return None
        pos += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int | None:
    """Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for k in range(count):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            return None
        tag, typ, _, value = struct.unpack_from(order + "HHIH", tiff, entry)
        if tag == 0x0112 and typ == 3:
            return int(value) if 1 <= value <= 8 else None
    return None


def reduction_factor(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int:
    """Largest JPEG DCT scale (1, 2, 4, 8) that still leaves the image at least as large as the letterbox
    needs: reduced decode only where the target is at most half the source."""
    r = min(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
    for f in (8, 4, 2):
        if r * f <= 1.0:
            return f
    return 1


def decode_cpu(data: bytes, info: ImageInfo, factor: int = 1) -> np.ndarray:
    """Decode to BGR uint8 (H, W, 3) like ultralytics; factor 2/4/8 uses libjpeg's scaled decode (JPEG only)."""
    flag = _REDUCED_FLAGS[factor] if info.is_jpeg else cv2.IMREAD_COLOR
    buf = np.frombuffer(data, np.uint8)
    try:
        im = cv2.imdecode(buf, flag)
    except cv2.error as e:
        raise ImageError(f"{info.format} data is corrupt: {str(e).strip().splitlines()[-1]}") from None
    if im is None or im.size == 0:
        raise ImageError(f"{info.format} data is corrupt and could not be decoded")
    if im.ndim == 2:
        im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGR)
    elif im.shape[2] == 4:
        im = cv2.cvtColor(im, cv2.COLOR_BGRA2BGR)
    return im


def check_array(im: np.ndarray, max_pixels: int) -> np.ndarray:
    """Validate a decoded array given by a caller: HxW or HxWx{1,3,4}, uint8 (BGR, as OpenCV gives)."""
    if not isinstance(im, np.ndarray):
        raise ImageError(f"expected bytes or a numpy array, got {type(im).__name__}")
    if im.ndim == 3 and im.shape[2] in (1, 3, 4):
        pass
    elif im.ndim != 2:
        raise ImageError(f"array of shape {im.shape} is not an image (expected HxW or HxWx3)")
    if im.shape[0] == 0 or im.shape[1] == 0:
        raise ImageError(f"array of shape {im.shape} is empty")
    if im.shape[0] * im.shape[1] > max_pixels:
        raise ImageError(f"image is {im.shape[1]}x{im.shape[0]} pixels, over the limit of {max_pixels:,} (max_pixels)")
    if im.dtype != np.uint8:
        if im.dtype == np.uint16:
            im = (im >> 8).astype(np.uint8)
        else:
            raise ImageError(f"array dtype {im.dtype} is not supported; pass uint8 (or uint16) BGR pixels")
    if im.ndim == 2 or im.shape[2] == 1:
        im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGR)
    elif im.shape[2] == 4:
        im = cv2.cvtColor(im, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(im)

