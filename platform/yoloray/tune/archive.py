"""The user's archive (`yoloray tune --archive`) as the sweep's inputs: its first still images, or, when every
unit it lists is video (mp4, mkv, ... as `yoloray infer` accepts them), frames of its videos and a sample of
its video files.

Video:
- Engine level: `n_images` kept frames taken evenly over the first keyframe segments (data/video_index.py:
  the archive lists each video as one file unit; only the first files are indexed, here on the driver)
  and decoded with PyAV (vision/decoders/pyav.py, the CPU decoder), stored as lossless PNG in RUN/inputs so a
  resumed sweep measures the same pixels. A trial decodes them once into BGR arrays and times
  `Detector.detect` on the arrays (letterbox, engine, NMS): the video decode is not timed in-process (NVDEC
  decodes a segment inside a batch actor, PyAV in upstream Ray tasks; the layout level's real jobs measure it).
  The trial's `decode` knob is the one a batch job uses for these videos (the default profile's: `gpu` = NVDEC
  where PyNvVideoCodec runs, else `cpu` = PyAV), so the winning profile decodes as measured there.
- The default space's input shape (`rect_imgsz`) takes the frame size of the first videos (SAMPLE_FILES of
  them; square 640 when they differ), and the default profile is resolved from the videos' listing
  (`Sample.of_units`), as `yoloray infer` does.
- Layout level: the archive's video files in listing order (indexed one after another until there are enough
  kept frames), linked into RUN/sample (hard links; a copy where a link cannot be made, e.g. another
  filesystem or object storage) and repeated under new names until `layout_images` kept frames
  (layout.repeat_links), each run as a real batch job.
An archive of stills, or of stills and videos, is measured on its first still images as before.
"""

from __future__ import annotations

import os
import shutil
from itertools import groupby, islice
from pathlib import Path

from yoloray.errors import UserError
from yoloray.tune.settings import TuneConfig


def list_archive(settings: TuneConfig) -> list[dict] | None:
    """The archive's units as `yoloray infer` lists them (SourceError for missing inputs); None without one."""
    from yoloray.data.inputs import SourceOptions
    from yoloray.data.units import list_units

    return list_units(settings.archive, SourceOptions()) if settings.archive else None


def is_video(units: list[dict] | None) -> bool:
    return bool(units) and all(u.get("kind") == "video" for u in units)


def frame_size_of(sizes: set[tuple[int, int]]) -> tuple[int, int]:
    """The frames' one (width, height), or square 640 when they differ (as `auto` resolves the input shape)."""
    from yoloray.profile import LONG_SIDE

    return next(iter(sizes)) if len(sizes) == 1 else (LONG_SIDE, LONG_SIDE)


def with_archive(settings: TuneConfig, units: list[dict] | None) -> TuneConfig:
    """`settings` with `video` set for an all-video archive, and the frame size of its first readable videos."""
    if not is_video(units):
        return settings
    from yoloray.data.inputs import SourceOptions
    from yoloray.data.video_index import SAMPLE_FILES, segments_of

    segments = segments_of(units, SourceOptions(), files=SAMPLE_FILES)
    sizes = {(u["width"], u["height"]) for u in segments if u.get("error") is None and u.get("width")}
    return settings.model_copy(update={"video": True, "frame_size": frame_size_of(sizes)})


def with_input_size(settings: TuneConfig, images: list[bytes]) -> TuneConfig:
    """`settings` with the frame size of the user's own stills (`--archive`, `--images`), which the default
    space's input shape follows; generated frames keep `--frame-size`, videos their own (`with_archive`)."""
    if settings.video or not (settings.archive or settings.images):
        return settings
    from yoloray.profile import Sample

    sizes = set(Sample.of_images(images).frame_sizes)
    return settings.model_copy(update={"frame_size": frame_size_of(sizes)}) if sizes else settings


def archive_images(settings: TuneConfig, units: list[dict]) -> list[tuple[str, bytes]]:
    """The first n_images readable images of the archive (read here, a unit at a time)."""
    from yoloray.data.inputs import SourceOptions
    from yoloray.data.readers import read_unit

    found: list[bytes] = []
    for unit in units:
        rows = islice(read_unit(unit, SourceOptions()), settings.n_images - len(found))
        found += [r["image"] for r in rows if r.get("image") is not None and r.get("error") is None]
        if len(found) >= settings.n_images:
            break
    if not found:
        raise UserError(f"--archive {' '.join(settings.archive)}: no readable images")
    return [(f"{i:04d}.jpg", data) for i, data in enumerate(found)]


def video_frames(settings: TuneConfig, units: list[dict]) -> list[tuple[str, bytes]]:
    """n_images decoded frames (lossless PNG), an even share from each of the first segments, in their order
    (the segments of the first n_images video files at most)."""
    import cv2

    from yoloray.data.inputs import SourceOptions
    from yoloray.data.video_index import segments_of
    from yoloray.vision.decoders.pyav import decode_segment

    n = settings.n_images
    segments = segments_of(units, SourceOptions(), files=n)
    readable = list(islice((u for u in segments if u.get("error") is None and u.get("keep")), n))
    per = -(-n // max(1, len(readable)))
    found = []
    for unit in readable:
        frames = (image for _, image, error in decode_segment(unit) if image is not None)
        found += islice(frames, min(per, n - len(found)))
        if len(found) >= n:
            break
    if not found:
        raise UserError(f"--archive {' '.join(settings.archive)}: no decodable video frames")
    return [(f"{i:04d}.png", cv2.imencode(".png", image)[1].tobytes()) for i, image in enumerate(found)]


def decoded(images: list[bytes]) -> list:
    """The PNG frames as BGR arrays (what a video trial times `detect` on)."""
    import cv2
    import numpy as np

    return [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in images]


def video_sample(units: list[dict], folder: Path, total: int) -> list[str]:
    """The archive's video files linked into `folder` as unique-NNNNN.ext, then repeated under new names until
    `total` kept frames; returns the file paths (a second call reuses what is there). The files are indexed in
    order until they hold `total` kept frames."""
    from yoloray.data.inputs import SourceOptions, locate
    from yoloray.data.video_index import segments_of
    from yoloray.tune.layout import repeat_links

    folder.mkdir(parents=True, exist_ok=True)
    unique, count = [], 0
    for _, segments in groupby(segments_of(units, SourceOptions()), key=lambda u: u["source"]):
        segments = [u for u in segments if u.get("error") is None]
        n = sum(len(u.get("keep") or ()) for u in segments)
        if not n:
            continue
        path = folder / f"unique-{len(unique):05d}{Path(segments[0]['rel']).suffix.lower()}"
        if not path.is_file():
            fs, src = locate(segments[0])
            _link_or_copy(fs, src, path)
        unique.append((path, n))
        count += n
        if count >= total:
            break
    return repeat_links(unique, folder, total)


def _link_or_copy(fs, src: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if type(fs).__name__ != "LocalFileSystem":
            raise OSError("not a local file")
        os.link(src, tmp)
    except OSError:
        with fs.open_input_stream(src) as f, tmp.open("wb") as g:
            shutil.copyfileobj(f, g)
    os.replace(tmp, path)
