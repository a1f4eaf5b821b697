"""yoloray.finetune on a local Ray (CPU smoke), plus evaluate() against ultralytics' val on the same weights."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import yaml

os.environ.setdefault("YOLO_OFFLINE", "true")

ray = pytest.importorskip("ray")
cv2 = pytest.importorskip("cv2")

from yoloray.finetune import finetune, main, no_downloads  # noqa: E402

COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]  # BGR per class
NAMES = {0: "red", 1: "green", 2: "blue"}


def make_dataset(root, n_train=8, n_val=4, size=128, seed=0):
    """Tiny YOLO dataset: grey images with 1-3 filled rectangles, class = colour."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img = np.full((size, size, 3), 114, np.uint8)
            lines = []
            for _ in range(int(rng.integers(1, 4))):
                c = int(rng.integers(0, 3))
                w, h = rng.integers(size // 5, size // 2, 2)
                x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
                cv2.rectangle(img, (int(x1), int(y1)), (int(x1 + w - 1), int(y1 + h - 1)), COLOURS[c], -1)
                lines.append(f"{c} {(x1 + w / 2) / size:.6f} {(y1 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            stem = f"frame_{i:06d}"
            cv2.imwrite(str(root / "images" / split / f"{stem}.jpg"), img)
            (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    data = root / "dataset.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": NAMES}))
    return data


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, local_ray):
    root = tmp_path_factory.mktemp("finetune")
    data = make_dataset(root / "data")
    res = finetune(data, root / "out", model="yolov8n.yaml", epochs=1, imgsz=64, batch=4, gpus=0, workers=0,
                   use_ray=True)
    return data, res


@pytest.mark.slow
def test_finetune_smoke_on_local_ray(trained):
    from ultralytics import YOLO

    data, res = trained
    assert res.weights.is_file() and res.weights.parent.name == "weights"
    assert YOLO(str(res.weights)).names == NAMES

    metrics = json.loads(res.metrics_path.read_text())
    for k in ("map50_95", "map50", "precision", "recall", "epochs", "imgsz", "time"):
        assert k in metrics
    assert set(res.metrics) == {"map50_95", "map50", "precision", "recall"}
    assert all(math.isfinite(v) for v in res.metrics.values())
    assert (metrics["epochs"], metrics["imgsz"]) == (1, 64)

    args = yaml.safe_load(res.args_path.read_text())
    assert args["finetune"]["epochs"] == 1 and args["finetune"]["model"] == "yolov8n.yaml"
    assert args["train_args"]["device"] == "cpu" and args["train_args"]["amp"] is False
    assert args["train_args"]["plots"] is False
    assert "ultralytics" in args["versions"] and "torch" in args["versions"]
    assert (res.metrics_path.parent / "results.csv").is_file()
    assert res.run_dir == res.metrics_path.parent / "train" and (res.run_dir / "weights").is_dir()
    assert ray.is_initialized()  # finetune() must not shut down a Ray it did not start


def test_missing_data_yaml_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="dataset YAML not found.*--data"):
        finetune(tmp_path / "nope.yaml", tmp_path / "out", use_ray=False)
    with pytest.raises(ValueError, match="weights file not found.*yolov8n.yaml"):
        finetune(make_dataset(tmp_path / "d", 1, 1), tmp_path / "out", model="missing.pt", use_ray=False)

    assert main(["--data", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"), "--no-ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset YAML not found" in err[0]


def test_gpus_requested_without_gpus(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("machine has a GPU")
    data = make_dataset(tmp_path / "d", 1, 1)
    with pytest.raises(ValueError, match="--gpus 1 requested"):
        finetune(data, tmp_path / "out", gpus=1, use_ray=False)
    assert main(["--data", str(data), "--out", str(tmp_path / "out"), "--gpus", "1", "--no-ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gpus 0" in err[0]


def test_amp_check_cannot_download(tmp_path):
    """check_amp on a non-CPU model would fetch yolo26n.pt; under no_downloads() it skips and keeps AMP on."""
    import torch
    from ultralytics.utils import WEIGHTS_DIR
    from ultralytics.utils.checks import check_amp

    if (WEIGHTS_DIR / "yolo26n.pt").exists():
        pytest.skip("yolo26n.pt present: the real AMP check would run")
    model = torch.nn.Linear(1, 1, device="meta")  # neither cpu nor cuda: check_amp goes straight to the download
    with no_downloads():
        assert check_amp(model) is True
    assert not (WEIGHTS_DIR / "yolo26n.pt").exists()


def _predictions_table(rows):
    """[(key, width, height, [(x1, y1, x2, y2, score, class_id, label), ...])] -> the DESIGN.md predictions schema."""
    import pyarrow as pa

    det = pa.struct([(k, pa.float32()) for k in ("x1", "y1", "x2", "y2", "score")]
                    + [("class_id", pa.int16()), ("label", pa.string())])
    schema = pa.schema([("key", pa.string()), ("source", pa.string()), ("frame", pa.int64()),
                        ("ts", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
                        ("detections", pa.list_(det)), ("error", pa.string()), ("engine", pa.string())])
    fields = ("x1", "y1", "x2", "y2", "score", "class_id", "label")
    return pa.Table.from_pylist([
        {"key": key, "source": "test", "frame": None, "ts": None, "width": w, "height": h,
         "detections": [dict(zip(fields, d, strict=True)) for d in dets], "error": None, "engine": "ultralytics"}
        for key, w, h, dets in rows
    ], schema=schema)


def compare_with_ultralytics_val(weights, data, imgsz, tmp_path):
    """ultralytics val vs evaluate() on the val split of `data` (conf=0.001, iou=0.7, max_det=300).

    Returns {"val": (mAP50-95, mAP50) from ultralytics' val, "same_preds": evaluate() on the very predictions val
    made (its predictions.json: isolates the metric), "predict": evaluate() on `YOLO.predict` output (adds the
    preprocessing difference: val letterboxes into rect batch shapes padded by half a stride, predict does not)}.
    """
    import pyarrow.parquet as pq
    from ultralytics import YOLO

    from yoloray.evaluate import evaluate

    spec = yaml.safe_load(data.read_text())
    val_dir = os.path.join(spec["path"], spec["val"])
    label_dir = os.path.join(spec["path"], spec["val"].replace("images", "labels"))
    images = sorted(os.path.join(val_dir, f) for f in os.listdir(val_dir))
    sizes = {os.path.basename(p): cv2.imread(p).shape[:2] for p in images}
    model = YOLO(str(weights))
    kw = {"imgsz": imgsz, "conf": 0.001, "iou": 0.7, "max_det": 300, "device": "cpu", "verbose": False, "batch": 4}
    with no_downloads():
        m = model.val(data=str(data), split="val", plots=False, workers=0, save_json=True,
                      project=str(tmp_path), name="val", exist_ok=True, **kw)
        results = model.predict(images, **kw)
    out = {"val": (float(m.box.map), float(m.box.map50))}

    by_file: dict[str, list] = {f: [] for f in sizes}
    for d in json.loads((tmp_path / "val" / "predictions.json").read_text()):
        x, y, w, h = d["bbox"]
        c = int(d["category_id"]) - 1  # class_map is 1-based for non-COCO data
        by_file[d["file_name"]].append((x, y, x + w, y + h, d["score"], c, model.names[c]))
    rows = [(f"images/val/{f}", hw[1], hw[0], by_file[f]) for f, hw in sizes.items()]
    pq.write_table(_predictions_table(rows), tmp_path / "val_preds.parquet")
    r = evaluate(tmp_path / "val_preds.parquet", label_dir, names=model.names)
    out["same_preds"] = (r["map50_95"], r["map50"])
    out["images"] = r["images"]

    rows = []
    for p, res in zip(images, results, strict=True):
        b = res.boxes
        dets = [(*xyxy, s, int(c), res.names[int(c)]) for xyxy, s, c in
                zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist(), strict=True)]
        rows.append((f"images/val/{os.path.basename(p)}", res.orig_shape[1], res.orig_shape[0], dets))
    pq.write_table(_predictions_table(rows), tmp_path / "predict_preds.parquet")
    r = evaluate(tmp_path / "predict_preds.parquet", label_dir, names=model.names)
    out["predict"] = (r["map50_95"], r["map50"])
    return out


@pytest.mark.slow
def test_evaluate_agrees_with_ultralytics_val(trained, tmp_path):
    data, res = trained
    cmp = compare_with_ultralytics_val(res.weights, data, 64, tmp_path)
    print(f"agreement: {cmp}")
    assert cmp["images"] == 4
    (u95, u50), (o95, o50) = cmp["val"], cmp["same_preds"]
    if max(u95, o95) < 0.05:
        pytest.skip(f"1-epoch model has mAP ~0 (ultralytics {u95:.4f}, ours {o95:.4f}): comparison meaningless")
    assert abs(u95 - o95) <= 0.005 and abs(u50 - o50) <= 0.005
