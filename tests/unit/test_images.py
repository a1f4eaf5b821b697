"""Decode of every supported kind, and bad images: each yields an error for that image only."""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from yoloray.config import Profile
from yoloray.detector import Detector
from yoloray.vision.decode import ImageError, decode_cpu, probe, reduction_factor
from yoloray.vision.decoders.stills import open_gpu_decoder


@pytest.fixture(scope="module")
def detector(checkpoints):
    return Detector(Profile(device="cpu", model=str(checkpoints["v8"]), imgsz=256, conf=0.3, batch_size=4, max_pixels=40_000_000)).warmup()


def huge_png_header(w=50000, h=50000) -> bytes:
    """A tiny PNG whose header claims w x h pixels."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["bmp", "webp", "tiff", "gray_png", "alpha_png", "png16", "cmyk", "exif6"])
def test_every_kind_decodes_to_bgr_like_cv2(photos, kind):
    data = photos[kind].read_bytes()
    info = probe(data, 10**9)
    im = decode_cpu(data, info)
    assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
    assert (im.shape[0], im.shape[1]) == (info.height, info.width)
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # what ultralytics reads
    assert np.array_equal(im, ref)


def test_exif_orientation_is_applied(photos):
    data = photos["exif6"].read_bytes()
    raw = Image.open(io.BytesIO(data))
    assert raw.size == (1280, 720)  # stored sideways
    info = probe(data, 10**9)
    assert (info.width, info.height) == (720, 1280)  # displayed upright, as ultralytics reads it


@pytest.mark.parametrize("src, dst, factor", [((1080, 1920), (640, 640), 2), ((1080, 1920), (384, 640), 2),
                                              ((2160, 3840), (384, 640), 4), ((600, 800), (640, 640), 1),
                                              ((4320, 7680), (320, 320), 8)])
def test_reduction_factor_only_when_target_at_most_half(src, dst, factor):
    assert reduction_factor(src, dst) == factor


def test_reduced_decode_boxes_stay_in_original_pixels(photos, checkpoints):
    data = photos["fullhd"].read_bytes()
    exact = Detector(Profile(device="cpu", model=str(checkpoints["v8"]), imgsz=(384, 640), conf=0.3))
    fast = Detector(Profile(device="cpu", model=str(checkpoints["v8"]), imgsz=(384, 640), conf=0.3, reduced_decode=True))
    a, b = exact.detect([data]), fast.detect([data])
    assert (b.widths[0], b.heights[0]) == (1920, 1080)
    assert b.boxes[:, [0, 2]].max() <= 1920 and b.boxes[:, [1, 3]].max() <= 1080
    from yoloray.fidelity import compare

    assert compare(a, b, iou=0.9, score_tol=0.05).rate >= 0.9


def test_bad_images_in_a_batch_with_good_ones(detector, photos):
    good = photos["bus"].read_bytes()
    jpeg = photos["zidane"].read_bytes()
    inputs = [
        good,
        b"",  # zero bytes
        jpeg[: len(jpeg) // 2],  # truncated
        b"this is a text file named .jpg\n",  # not an image
        huge_png_header(),  # claims 50000x50000
        b"\xff\xd8\xff\xe0" + b"\x00" * 300 + b"\xff\xd9",  # JPEG magic, garbage body
        np.zeros((0, 5, 3), np.uint8),  # empty array
        "a string",  # wrong type
        jpeg,
    ]
    dets = detector.detect(inputs)
    assert len(dets) == len(inputs)
    errors = dets.errors
    assert errors[0] is None and errors[-1] is None
    assert "0 bytes" in errors[1]
    assert "truncated JPEG" in errors[2]
    assert "not a decodable image" in errors[3]
    assert "over the limit" in errors[4] and "50000x50000" in errors[4]
    assert errors[5] is not None
    assert "empty" in errors[6]
    assert "expected encoded image bytes" in errors[7] or "str" in errors[7]
    assert dets.counts[0] > 0 and dets.counts[-1] > 0
    assert all(dets.counts[i] == 0 for i in range(1, 8))
    # the good images' results are what they are alone
    alone = detector.detect([good, jpeg])
    np.testing.assert_allclose(alone.boxes, dets.boxes, atol=1e-3)  # batch size may change float rounding


def test_arrays_are_accepted(detector, photos):
    data = photos["bus"].read_bytes()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    a, b = detector.detect([data]), detector.detect([arr])
    np.testing.assert_array_equal(a.boxes, b.boxes)
    gray = detector.detect([cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)])
    assert gray.errors == [None]


def test_probe_rejects_unsupported_format():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    with pytest.raises(ImageError, match="unsupported image format GIF"):
        probe(buf.getvalue(), 10**6)


def test_mixed_decode_routes_keep_each_image_its_own_boxes(held_out):
    """Rows decoded by different routes (nvJPEG / CPU threads / arrays) are regrouped by input image. The
    nvJPEG route is exercised with torchvision's decoder on the CPU device."""
    from pathlib import Path

    from yoloray.fidelity import compare

    files = sorted(Path(held_out.images_val).glob("*.jpg"))[:8]
    datas = [f.read_bytes() for f in files]
    mixed = [datas[0], cv2.imdecode(np.frombuffer(datas[1], np.uint8), cv2.IMREAD_COLOR), *datas[2:]]
    base = Profile(device="cpu", imgsz=(384, 640), batch_size=8)
    reference = Detector(base).detect(datas)
    det = Detector(base)
    det.config = base.model_copy(update={  # bypasses the CUDA check
        "decoding": base.decoding.model_copy(update={"decode": "hybrid"}),
        "layout": base.layout.model_copy(update={"hybrid_cpu_share": 0.5})})
    got = det.detect(mixed)
    assert got.offsets[-1] > 20
    assert compare(reference, got, iou=0.99, score_tol=1e-3).rate == 1.0


def test_fast_jpeg_probe_agrees_with_pil(photos, held_out):
    from pathlib import Path

    from yoloray.vision.decode import _probe_jpeg

    files = [photos[k] for k in ("bus", "zidane", "exif6", "cmyk", "fullhd")] + sorted(Path(held_out.images_val).glob("*.jpg"))[:3]
    for f in files:
        data = f.read_bytes()
        fast = _probe_jpeg(data)
        im = Image.open(io.BytesIO(data))
        o = im.getexif().get(0x0112, 1)
        w, h = im.size if o not in (5, 6, 7, 8) else im.size[::-1]
        assert fast is not None and (fast.width, fast.height, fast.orientation) == (w, h, o), f


def test_arrow_views_are_zero_copy_and_decode():
    import pyarrow as pa

    from yoloray.data.inputs import encoded_views

    payloads = [b"\xff\xd8abc\xff\xd9", None, b"xyz"]
    for typ in (pa.binary(), pa.large_binary()):
        arr = pa.array(payloads, typ).slice(0, 3)
        views = encoded_views(pa.chunked_array([arr]))
        assert [bytes(v) for v in views] == [b"\xff\xd8abc\xff\xd9", b"", b"xyz"]
        # a batch put together from several blocks: sliced chunks, an empty one; views point into each chunk
        chunked = pa.chunked_array([arr.slice(1, 2), pa.array([], typ), arr.slice(0, 1)], typ)
        views = encoded_views(chunked)
        assert [bytes(v) for v in views] == [b"", b"xyz", b"\xff\xd8abc\xff\xd9"]
        assert views[1].obj.address == chunked.chunk(0).buffers()[2].address  # no copy
        assert encoded_views(pa.chunked_array([], typ)) == []
    with pytest.raises(TypeError, match="encoded bytes"):
        encoded_views(pa.array([1, 2]))


def test_gpu_decoder_choice_and_refusals(photos):
    """The GPU decoders' interface, run where it can be here: torchvision's decode_jpeg on a CPU device gives
    RGB (3, H, W) like libjpeg and None for a stream it refuses; nvImageCodec asked for without CUDA, or an
    unknown decoder, is a clear error."""
    import torch

    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="gpu_decoder nvimgcodec needs a CUDA device"):
        open_gpu_decoder("nvimgcodec", cpu)
    with pytest.raises(ValueError, match="'nvdec' is not one of torchvision, nvimgcodec"):
        open_gpu_decoder("nvdec", cpu)
    data = photos["bus"].read_bytes()
    ok, bad = open_gpu_decoder("torchvision", cpu).decode([data, b"\xff\xd8not a jpeg\xff\xd9"])
    assert bad is None
    ref = decode_cpu(data, probe(data, 10**9))[..., ::-1]
    assert tuple(ok.shape) == (3, *ref.shape[:2])
    assert np.abs(ok.permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).mean() < 2.0


def test_jpeg_with_bytes_after_the_end_marker_is_not_truncated(photos):
    """Decoders accept bytes after EOI (padding, appended data); only a missing EOI is truncation."""
    jpeg = photos["zidane"].read_bytes()
    reference = decode_cpu(jpeg, probe(jpeg, 1 << 30))
    for tail in (b"\x00" * 2048, bytes(range(256)) * 8):
        padded = jpeg + tail
        assert cv2.imdecode(np.frombuffer(padded, np.uint8), cv2.IMREAD_COLOR) is not None  # what decoders do
        np.testing.assert_array_equal(decode_cpu(padded, probe(padded, 1 << 30)), reference)
    for cut in (jpeg[: len(jpeg) // 2], jpeg[: len(jpeg) // 2] + b"\x00" * 2048):
        with pytest.raises(ImageError, match="truncated JPEG"):
            probe(cut, 1 << 30)
    # a truncated photo whose EXIF thumbnail has its own end marker (before the photo's scan) is still truncated
    exif = photos["exif6"].read_bytes()
    thumb = Image.new("RGB", (16, 16))
    buf = io.BytesIO()
    thumb.save(buf, "JPEG")
    app1 = b"Exif\x00\x00" + buf.getvalue()
    with_thumb = exif[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + exif[2:]
    probe(with_thumb, 1 << 30)
    with pytest.raises(ImageError, match="truncated JPEG"):
        probe(with_thumb[: len(with_thumb) // 2], 1 << 30)
