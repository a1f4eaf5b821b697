"""HTTP plumbing of the detection service, free of Ray: request bodies, multipart, image checks, the
status code of each client mistake, and the per-request filters (conf, iou, max_det) over engine results.

Every client mistake is an `ApiError(status, message)`; the route turns it into
`{"error": message, "status": status}` with that status. Nothing a client sends becomes a 500.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from yoloray.config import format_validation_error
from yoloray.vision.decode import ImageError, probe

RAW_TYPES = ("application/octet-stream",)  # besides image/*
MULTIPART = "multipart/form-data"
MAX_DET_LIMIT = 1000

# Formats a client may send by mistake, recognized by their first bytes (PIL does not open them).
_MAGIC = (
    (b"%PDF", "a PDF document"),
    (b"GIF8", "a GIF image (GIF is not supported)"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x00\x00\x01\xba", "an MPEG video"),
    (b"ID3", "an MP3 file"),
    (b"OggS", "an Ogg file"),
)


class ApiError(Exception):
    """A request that cannot be answered as asked; `status` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_body(status: int, message: str) -> dict:
    return {"error": message, "status": status}


# ------------------------------------------------------------------------------------ parameters
class DetectParams(BaseModel):
    """Query parameters of POST /detect. They can only narrow what the engine returns (see `narrow`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    conf: float | None = Field(None, ge=0.0, le=1.0)
    iou: float | None = Field(None, ge=0.0, le=1.0)
    max_det: int | None = Field(None, ge=1, le=MAX_DET_LIMIT)

    @classmethod
    def from_query(cls, items: list[tuple[str, str]]) -> DetectParams:
        seen: dict[str, str] = {}
        for k, v in items:
            if k in seen:
                raise ApiError(422, f"query parameter {k!r} is given more than once")
            seen[k] = v
        try:
            return cls.model_validate(seen)
        except ValidationError as e:
            msg = format_validation_error(e).replace("Extra inputs are not permitted", "unknown parameter")
            raise ApiError(
                422, f"bad query parameters: {msg} (allowed: conf 0..1, iou 0..1, max_det 1..{MAX_DET_LIMIT})"
            ) from None


# ------------------------------------------------------------------------------------ bodies
def media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """'multipart/form-data; boundary="x"' -> ('multipart/form-data', {'boundary': 'x'})."""
    if not header:
        return "", {}
    main, *rest = header.split(";")
    params = {}
    for p in rest:
        k, sep, v = p.strip().partition("=")
        if sep:
            params[k.strip().lower()] = v.strip().strip('"')
    return main.strip().lower(), params


def check_content_type(mtype: str) -> None:
    if mtype == "" or mtype == MULTIPART or mtype.startswith("image/") or mtype in RAW_TYPES:
        return
    raise ApiError(
        415,
        f"Content-Type {mtype!r} is not accepted; send the image bytes as image/jpeg, image/png, ... or "
        f"application/octet-stream, or several images as {MULTIPART}",
    )


def check_content_length(header: str | None, limit: int) -> None:
    if header is None:
        return
    try:
        n = int(header)
    except ValueError:
        raise ApiError(400, f"Content-Length {header!r} is not a number") from None
    if n > limit:
        raise ApiError(413, f"request body of {n:,} bytes is over the limit of {limit:,} bytes")


async def read_body(chunks, limit: int, timeout_s: float | None = None) -> bytes:
    """Read an async iterator of chunks, refusing (413) as soon as it passes `limit` bytes, and (408) when
    the whole body has not arrived within `timeout_s` (a client that stalls mid-upload)."""
    buf = bytearray()

    async def read():
        async for chunk in chunks:
            buf.extend(chunk)
            if len(buf) > limit:
                raise ApiError(413, f"request body is over the limit of {limit:,} bytes")

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within {timeout_s:g} s ({len(buf):,} bytes came); "
            "send it whole and promptly",
            {"Connection": "close"},
        ) from None
    return bytes(buf)


@dataclass
class Part:
    name: str | None
    filename: str | None
    content_type: str
    data: bytes

    @property
    def label(self) -> str:
        return self.filename or self.name or "?"


def parse_multipart(body: bytes, boundary: str | None) -> list[Part]:
    """Split a multipart/form-data body into its parts (RFC 7578), bytes untouched."""
    if not boundary:
        raise ApiError(400, f"{MULTIPART} without a boundary parameter")
    try:
        delim = b"--" + boundary.encode("latin-1")
    except UnicodeEncodeError:
        raise ApiError(400, f"multipart boundary {boundary!r} is not latin-1 text") from None
    start = body.find(delim)
    if start < 0:
        raise ApiError(400, "malformed multipart body: the boundary does not occur in it")
    parts = []
    pos = start + len(delim)
    while True:
        if body[pos : pos + 2] == b"--":  # closing delimiter
            break
        nl = body.find(b"\r\n", pos)
        if nl < 0:
            raise ApiError(400, "malformed multipart body: unterminated part")
        head_end = body.find(b"\r\n\r\n", nl)
        if head_end < 0:
            raise ApiError(400, "malformed multipart body: part without a blank line after its headers")
        end = body.find(b"\r\n" + delim, head_end + 4)
        if end < 0:
            raise ApiError(400, "malformed multipart body: missing closing boundary")
        parts.append(_part(body[nl + 2 : head_end], body[head_end + 4 : end]))
        pos = end + 2 + len(delim)
    return parts


def _part(head: bytes, data: bytes) -> Part:
    headers = {}
    for line in head.decode("utf-8", "replace").split("\r\n"):
        k, sep, v = line.partition(":")
        if sep:
            headers[k.strip().lower()] = v.strip()
    _, disp = media_type(headers.get("content-disposition", "form-data"))
    ctype, _ = media_type(headers.get("content-type"))
    return Part(disp.get("name"), disp.get("filename"), ctype, data)


def images_from_parts(parts: list[Part]) -> tuple[list[bytes], list[str], list[ApiError | None]]:
    """File parts are the images (in order); plain form fields are refused (422). A part that declares
    a non-image Content-Type gets a 415 for that image."""
    datas, labels, errors = [], [], []
    for p in parts:
        is_file = p.filename is not None or p.content_type.startswith("image/") or p.content_type in RAW_TYPES
        if not is_file:
            raise ApiError(
                422,
                f"form field {p.name!r} is not a file; send each image as a file part "
                "(conf, iou and max_det go in the query string)",
            )
        err = None
        if p.content_type and not (p.content_type.startswith("image/") or p.content_type in RAW_TYPES):
            err = ApiError(415, f"part {p.label!r} has Content-Type {p.content_type!r}, not an image")
        datas.append(p.data)
        labels.append(p.label)
        errors.append(err)
    if not datas:
        raise ApiError(400, "the multipart body holds no image file")
    return datas, labels, errors


# ------------------------------------------------------------------------------------ images
def check_image(data: bytes, max_bytes: int, max_pixels: int) -> ApiError | None:
    """The header-level checks, before an image takes a batch slot: size, format, pixel count."""
    if len(data) == 0:
        return ApiError(400, "empty image (0 bytes)")
    if len(data) > max_bytes:
        return ApiError(
            413, f"image of {len(data):,} bytes is over the limit of {max_bytes:,} bytes (max_image_bytes)"
        )
    try:
        probe(data, max_pixels)
    except ImageError as e:
        return image_error(str(e), data)
    return None


def image_error(message: str, data: bytes | None = None) -> ApiError:
    """Status of an image the Detector (or probe) refused."""
    if message.startswith("unsupported image format"):
        return ApiError(415, message)
    if "over the limit" in message:
        return ApiError(413, message)
    if data is not None:
        kind = sniff_non_image(data)
        if kind:
            return ApiError(415, f"the data is {kind}, not an image; supported: JPEG, PNG, BMP, WebP, TIFF")
    return ApiError(400, message)


def sniff_non_image(data: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "an AVI video"
    head = data[:64].lstrip()
    if head[:1] in (b"{", b"[") or head[:5].lower() in (b"<?xml", b"<html", b"<!doc", b"<svg ", b"<svg>"):
        return "text (JSON, HTML or XML)"
    return None


# ------------------------------------------------------------------------------------ results
@dataclass
class ImageResult:
    """One image's engine output (boxes in original pixels), or why it has none."""

    width: int = 0
    height: int = 0
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    error: str | None = None


def effective_params(params: DetectParams, conf: float, iou: float, max_det: int) -> dict:
    """What a request's parameters mean for an engine that already ran at (conf, iou, max_det): a request
    can only narrow. conf below the engine's, iou above it, or max_det above it change nothing."""
    return {
        "conf": conf if params.conf is None else max(conf, params.conf),
        "iou": iou if params.iou is None else min(iou, params.iou),
        "max_det": max_det if params.max_det is None else min(max_det, params.max_det),
    }


def narrow(r: ImageResult, eff: dict, engine: dict, agnostic: bool) -> ImageResult:
    """Apply the request's conf (a filter), iou (a further NMS, only when stricter than the engine's) and
    max_det (keep the highest scores). Unchanged when the request narrows nothing, so the boxes are then
    exactly the Detector's, in its order."""
    narrows = eff["conf"] > engine["conf"] or eff["iou"] < engine["iou"] or len(r.scores) > eff["max_det"]
    if r.error is not None or len(r.scores) == 0 or not narrows:
        return r
    boxes, scores, cls = r.boxes, r.scores, r.class_ids
    if eff["conf"] > engine["conf"]:
        keep = np.flatnonzero(scores >= eff["conf"])
        boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
    if eff["iou"] < engine["iou"] and len(scores) > 1:
        import torch
        from torchvision.ops import batched_nms

        idx = (
            torch.zeros(len(scores), dtype=torch.int64)
            if agnostic
            else torch.from_numpy(cls.astype(np.int64))
        )
        keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), idx, eff["iou"]).numpy()
        boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
    if len(scores) > eff["max_det"]:
        keep = np.sort(np.argsort(-scores, kind="stable")[: eff["max_det"]])
        boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
    return ImageResult(r.width, r.height, boxes, scores, cls, None)


def to_row(r: ImageResult, names: dict[int, str]) -> dict:
    """The Parquet output schema of one image (without key/source/frame/ts/engine)."""
    dets = [
        {
            "x1": float(b[0]),
            "y1": float(b[1]),
            "x2": float(b[2]),
            "y2": float(b[3]),
            "score": float(s),
            "class_id": int(c),
            "label": names.get(int(c), str(int(c))),
        }
        for b, s, c in zip(r.boxes.tolist(), r.scores.tolist(), r.class_ids.tolist())
    ]
    return {"width": int(r.width), "height": int(r.height), "detections": dets, "error": r.error}
