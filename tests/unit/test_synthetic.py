"""Synthetic inspection-line footage: determinism, label validity and tightness, every output format."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from yoloray.data import scene as R
from yoloray.data import synthetic as S

W, H = 640, 360


def _boxes_px(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    _, cx, cy, w, h = labels.T
    return np.round(np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                              (cy + h / 2) * height], 1)).astype(int)


def _plain_scene(seed: int, index: int):
    """A still's scene without shadows and blur, so every changed pixel belongs to an object."""
    scene = R._make_scene(np.random.default_rng([seed, 0, index]), W, H)
    scene.shadow, scene.blur = 0.0, ("none", 0)
    return scene


def _render(scene, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return R._draw(scene, W, H, 0, np.random.default_rng(seed))


def _changed(scene) -> np.ndarray:
    img, _ = _render(scene)
    empty = R._Scene(**{**scene.__dict__, "parts": [], "cracks": []})
    bg, labels = _render(empty)
    assert len(labels) == 0
    return np.abs(img.astype(int) - bg.astype(int)).max(-1) > 12


def test_render_frame_is_deterministic():
    img, labels = R.render_frame(3, 5, 320, 180)
    img2, labels2 = R.render_frame(3, 5, 320, 180)
    assert img.shape == (180, 320, 3) and img.dtype == np.uint8
    assert labels.dtype == np.float32 and labels.shape[1] == 5
    assert np.array_equal(img, img2) and np.array_equal(labels, labels2)
    assert not np.array_equal(img, R.render_frame(4, 5, 320, 180)[0])
    assert not np.array_equal(img, R.render_frame(3, 6, 320, 180)[0])


def test_labels_are_valid_and_cover_every_class():
    seen = set()
    for i in range(30):
        img, labels = R.render_frame(1, i, W, H)
        cls = labels[:, 0]
        assert np.array_equal(cls, np.round(cls)) and ((cls >= 0) & (cls < len(R.CLASS_NAMES))).all()
        assert ((labels[:, 1:] >= 0) & (labels[:, 1:] <= 1)).all()
        assert (labels[:, 3] * W >= R.MIN_BOX_PX - 1e-3).all() and (labels[:, 4] * H >= R.MIN_BOX_PX - 1e-3).all()
        x1, y1, x2, y2 = _boxes_px(labels, W, H).T
        assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= W).all() and (y2 <= H).all()
        seen.update(int(c) for c in cls)
    assert seen == set(range(len(R.CLASS_NAMES)))
    assert R.CLASS_NAMES == ("bolt", "nut", "washer", "gear", "bracket", "crack")


@pytest.mark.parametrize("cls", range(6))
def test_single_object_box_matches_drawn_pixels(cls):
    scene = _plain_scene(7, cls)
    if cls == 5:  # a crack on the bare belt
        crack = scene.cracks[0] if scene.cracks else R._make_scene(np.random.default_rng(99), W, H).cracks[0]
        crack.host, crack.x, crack.y = -1, W / 2, H / 2
        scene.parts, scene.cracks = [], [crack]
    else:
        part = scene.parts[0]
        part.cls, part.x, part.y, part.size = cls, W / 2, H / 2, float(np.mean(R._SIZES[cls])) * H / 1080
        scene.parts, scene.cracks = [part], []
    _, labels = _render(scene)
    assert len(labels) == 1 and int(labels[0, 0]) == cls
    ys, xs = np.nonzero(_changed(scene))
    drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert np.abs(_boxes_px(labels, W, H)[0] - drawn).max() <= 2, (labels, drawn)


def test_boxes_are_tight_in_busy_frames():
    """Each box edge touches drawn pixels, and (nearly) every drawn pixel lies in some box."""
    covered = total = 0
    for i in range(8):
        scene = _plain_scene(11, i)
        _, labels = _render(scene)
        changed = _changed(scene)
        in_box = np.zeros_like(changed)
        for x1, y1, x2, y2 in _boxes_px(labels, W, H):
            box = changed[y1:y2, x1:x2]
            assert box[:2].any() and box[-2:].any() and box[:, :2].any() and box[:, -2:].any()
            in_box[y1:y2, x1:x2] = True
        covered += int((changed & in_box).sum())
        total += int(changed.sum())
    assert covered >= 0.97 * total


def test_video_frames_form_a_continuous_scene():
    a, la = R.render_video_frame(2, 10, W, H, 20)
    b, lb = R.render_video_frame(2, 11, W, H, 20)
    speed = R._video_scene(2, W, H, 20).speed
    assert speed > 0 and len(la) and len(lb)
    moved = np.abs(b[:, speed:].astype(int) - a[:, : W - speed].astype(int)).mean()
    still = np.abs(b.astype(int) - a.astype(int)).mean()
    assert moved < 0.6 * still


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_writes_every_format_consistently(tmp_path):
    out = S.generate(tmp_path / "d", frames=7, seed=5, width=320, height=180, shard_size=3, video_frames=5,
                     workers=1)
    assert out.frames == 7 and out.root == (tmp_path / "d").resolve()
    train, val = sorted(out.images_train.glob("*.jpg")), sorted(out.images_val.glob("*.jpg"))
    assert [p.name for p in val] == ["frame_000004.jpg"] and len(train) == 6
    assert len(list(out.labels_train.glob("*.txt"))) == 6 and len(list(out.labels_val.glob("*.txt"))) == 1
    jpgs = {p.name: p.read_bytes() for p in train + val}
    txts = {p.name: p.read_text() for p in [*out.labels_train.glob("*.txt"), *out.labels_val.glob("*.txt")]}
    img = cv2.imdecode(np.frombuffer(jpgs["frame_000000.jpg"], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (180, 320, 3)

    spec = yaml.safe_load(out.dataset_yaml.read_text())
    assert spec["path"] == str(out.root) and spec["train"] == "images/train" and spec["val"] == "images/val"
    assert spec["names"] == dict(enumerate(R.CLASS_NAMES))

    assert [p.name for p in out.tar_shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    members = []
    for shard in out.tar_shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                data = tar.extractfile(m).read()
                members.append(m.name)
                if m.name.endswith(".jpg"):
                    assert data == jpgs[m.name]
                else:
                    assert data.decode() == txts[m.name]
    expected = [f"frame_{i:06d}{ext}" for i in range(7) for ext in (".jpg", ".txt")]
    assert members == expected

    with zipfile.ZipFile(out.zip_path) as zf:
        assert sorted(zf.namelist()) == sorted(jpgs)
        assert all(zf.read(n) == jpgs[n] for n in jpgs)

    table = pq.read_table(out.parquet_path)
    assert table.num_rows == 7 and table.column_names == ["key", "image", "labels"]
    for key, image, labels in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        assert image == jpgs[key] and labels == txts[key.replace(".jpg", ".txt")]

    cap = cv2.VideoCapture(str(out.video_path))
    shapes = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        shapes.append(frame.shape)
    cap.release()
    assert shapes == [(180, 320, 3)] * 5
    assert sorted(p.name for p in out.video_labels.glob("*.txt")) == [f"frame_{t:06d}.txt" for t in range(5)]


def test_worker_count_does_not_change_output(tmp_path):
    kw = {"frames": 6, "seed": 9, "width": 320, "height": 180, "formats": ("folder", "tar", "video"),
          "shard_size": 4, "video_frames": 3}
    one = S.generate(tmp_path / "one", workers=1, **kw)
    two = S.generate(tmp_path / "two", workers=2, **kw)
    tree_one, tree_two = _read_tree(one.root), _read_tree(two.root)
    tree_one.pop("dataset.yaml"), tree_two.pop("dataset.yaml")
    for clip in ("clip.mp4", "clip_hevc.mp4"):  # the container may embed a timestamp
        tree_one.pop(clip), tree_two.pop(clip)
    assert tree_one == tree_two and len(tree_one) > 12
    assert one.zip_path is None and one.parquet_path is None
    assert R.render_frame(9, 2, 320, 180)[1].tobytes() == R.render_frame(9, 2, 320, 180)[1].tobytes()


def test_generated_labels_match_render_frame(tmp_path):
    out = S.generate(tmp_path, frames=3, seed=4, width=320, height=180, formats=("folder",), workers=1)
    for i in range(3):
        text = (out.labels_train / f"frame_{i:06d}.txt").read_text()
        assert text == S.labels_text(R.render_frame(4, i, 320, 180)[1])
        jpg = (out.images_train / f"frame_{i:06d}.jpg").read_bytes()
        decoded = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
        assert np.abs(decoded.astype(int) - R.render_frame(4, i, 320, 180)[0].astype(int)).mean() < 6
    assert np.loadtxt(io.StringIO(text), ndmin=2).shape[1] == 5


def test_unknown_format_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown formats"):
        S.generate(tmp_path, frames=1, formats=("folder", "hdf5"))


def test_hidden_objects_lose_their_labels():
    scene = _plain_scene(3, 0)
    below, above = scene.parts[0], scene.parts[1 if len(scene.parts) > 1 else 0]
    below.cls, below.x, below.y, below.size = 1, W / 2 + 32, H / 2, 40.0  # a nut, ~75% hidden ...
    above.cls, above.x, above.y, above.size = 2, W / 2, H / 2, 80.0  # ... under a big washer
    above.params.update(hole=0.36, tilt=1.0)
    scene.parts, scene.cracks = [below, above], []
    _, labels = _render(scene)
    assert labels[:, 0].tolist() == [2.0]
    scene.parts[1].x = W / 2 + 200  # uncovered again: both labelled
    assert sorted(_render(scene)[1][:, 0].tolist()) == [1.0, 2.0]
