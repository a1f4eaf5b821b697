"""COCO-style mAP of a yoloray predictions Parquet against YOLO-format label files.

`evaluate(predictions, labels)` reads the platform's output Parquet (DESIGN.md schema: one row per image,
boxes in original-image pixels), pairs every row with `labels/<stem>.txt` and lets faster-coco-eval do the
matching and the AP (we do not match boxes by hand).

Conventions chosen to agree with ultralytics' own `YOLO(w).val(...)` to within 0.005 mAP:

- Produce the predictions the way ultralytics' val does: `conf=0.001, iou=0.7, max_det=300`. A higher
  confidence threshold cuts the precision/recall curve short and lowers mAP.
- maxDets is [1, 10, 300] and AP is read at 300 detections per image; the COCO area ranges are not used
  (the "all" range only).
- Boxes are compared in original-image pixels; YOLO labels (`class cx cy w h`, normalized, or polygons) are
  scaled with the row's width/height.
- mAP is the mean over classes that have at least one ground-truth box (ultralytics does the same).

What remains is standard COCO vs ultralytics: both match greedily by confidence to the best unmatched box,
but ultralytics integrates AP as a trapezoid over np.interp of the PR envelope at 101 recall points, COCO
averages the envelope sampled at 101 recall thresholds. The integration alone makes COCO - ultralytics about
0.005 - 0.01 * AP, so COCO reads slightly lower for AP > 0.5. Measured: -0.001 to -0.003 on synthetic
detectors; -0.0002 mAP50-95 and -0.0013 mAP50 on val's own predictions of a trained yolov8n. Inverted boxes
(x2 < x1) are ignored by COCO and counted as false positives by ultralytics.
`YOLO.predict` output is not what val scores: val letterboxes into rect batch shapes padded by half a stride,
so its detections differ slightly (0.005-0.008 mAP50-95 measured on 160 px images).

Key -> label stem: `images/val/frame_000123.jpg` -> `frame_000123`, `shard-000000.tar::frame_000123.jpg` ->
`frame_000123`, `clip.mp4#frame=12` -> `frame_000012`. Rows without a label file are skipped and counted
(ultralytics would treat them as background images); rows with `error` set are counted and left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAX_DETS = [1, 10, 300]
_VIDEO_FRAME = re.compile(r"#frame=(\d+)$")


def key_to_stem(key: str) -> str:
    """Label-file stem for a prediction key (see module docstring for the three key styles)."""
    m = _VIDEO_FRAME.search(key)
    if m:
        return f"frame_{int(m.group(1)):06d}"
    member = key.rsplit("::", 1)[-1]  # tar / zip member
    name = member.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def read_yolo_labels(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(class ids (N,), xyxy pixel boxes (N, 4)) of one YOLO label file; polygons become their bounding box."""
    classes, boxes = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, vals = int(float(parts[0])), [float(v) for v in parts[1:]]
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: not a YOLO label line: {line!r}") from e
        if len(vals) == 4:
            cx, cy, w, h = vals
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(vals) >= 6 and len(vals) % 2 == 0:  # segment polygon x1 y1 x2 y2 ...
            xs, ys = vals[0::2], vals[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        else:
            raise ValueError(f"{path}:{lineno}: expected 'class cx cy w h' (normalized), got {line!r}")
        classes.append(cls)
        boxes.append((x1 * width, y1 * height, x2 * width, y2 * height))
    return np.asarray(classes, np.int64), np.asarray(boxes, np.float64).reshape(-1, 4)


def _read_predictions(path: Path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not path.exists():
        raise ValueError(f"predictions not found: {path} (pass the Parquet file or folder the batch job wrote)")
    table = pq.read_table(path, columns=["key", "width", "height", "detections", "error"])
    dets = table.column("detections").combine_chunks()
    flat = pc.list_flatten(dets)
    parent = np.asarray(pc.list_parent_indices(dets), np.int64)
    boxes = np.stack([np.asarray(flat.field(c), np.float64) for c in ("x1", "y1", "x2", "y2")], 1).reshape(-1, 4)
    rows = {
        "key": table.column("key").to_pylist(),
        "width": np.asarray(table.column("width").fill_null(0), np.int64),
        "height": np.asarray(table.column("height").fill_null(0), np.int64),
        "error": table.column("error").to_pylist(),
    }
    det = {
        "row": parent,
        "boxes": boxes,
        "score": np.asarray(flat.field("score"), np.float64),
        "class_id": np.asarray(flat.field("class_id"), np.int64),
        "label": flat.field("label").to_pylist(),
    }
    return rows, det


def evaluate(predictions: str | Path, labels: str | Path, names: dict[int, str] | None = None) -> dict:
    """COCO mAP50-95 / mAP50 / per-class AP50-95 of a predictions Parquet against a folder of YOLO labels.

    Args:
        predictions: Parquet file (or folder of Parquet files) in the DESIGN.md output schema, made with
            conf=0.001, iou=0.7, max_det=300 to be comparable with ultralytics' val.
        labels: folder holding `<stem>.txt` YOLO label files (not searched recursively).
        names: class id -> name; defaults to the `label` strings found in the predictions, else the id.

    Returns:
        {"map50_95", "map50", "per_class": {name: AP50-95}, "images": evaluated images,
         "skipped": rows without a label file, "errors": rows with `error` set, "gt_boxes", "predictions"}
    """
    from faster_coco_eval import COCO, COCOeval_faster

    predictions, labels = Path(predictions), Path(labels)
    if not labels.is_dir():
        raise ValueError(f"labels folder not found: {labels} (pass the folder with the YOLO <stem>.txt files)")
    rows, det = _read_predictions(predictions)
    label_files = {p.stem: p for p in labels.glob("*.txt")}

    images, gt_anns, row_to_img, seen = [], [], {}, {}
    skipped = errors = 0
    for i, key in enumerate(rows["key"]):
        if rows["error"][i] is not None:
            errors += 1
            continue
        stem = key_to_stem(key)
        lab = label_files.get(stem)
        if lab is None:
            skipped += 1
            continue
        if stem in seen:
            raise ValueError(
                f"keys {seen[stem]!r} and {key!r} both map to label {lab.name}; evaluate one split at a time"
            )
        seen[stem] = key
        w, h = int(rows["width"][i]), int(rows["height"][i])
        img_id = len(images) + 1
        images.append({"id": img_id, "width": w, "height": h, "file_name": key})
        row_to_img[i] = img_id
        for c, (x1, y1, x2, y2) in zip(*read_yolo_labels(lab, w, h), strict=True):
            bw, bh = x2 - x1, y2 - y1
            gt_anns.append({
                "id": len(gt_anns) + 1,  # ids must be > 0: COCO marks "unmatched" with 0
                "image_id": img_id,
                "category_id": int(c) + 1,
                "bbox": [x1, y1, bw, bh],
                "area": bw * bh,
                "iscrowd": 0,
            })
    if not images:
        sample = rows["key"][:3]
        raise ValueError(
            f"no prediction row matched a label file in {labels} ({len(rows['key'])} rows, {skipped} without "
            f"labels, {errors} errors); keys {sample} map to stems {[key_to_stem(k) for k in sample]}"
        )

    # Detections of evaluated rows as an (N, 7) array: image_id, x, y, w, h, score, category_id.
    img_of_row = np.zeros(len(rows["key"]), np.int64)
    for i, img_id in row_to_img.items():
        img_of_row[i] = img_id
    img_ids = img_of_row[det["row"]]
    keep = img_ids > 0
    b = det["boxes"][keep]
    dt = np.column_stack([
        img_ids[keep], b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1], det["score"][keep],
        det["class_id"][keep] + 1,
    ]).astype(np.float64)

    # Categories: every class seen in labels, predictions or `names`, so no detection has an unknown category.
    found = dict(zip(det["class_id"].tolist(), det["label"], strict=True))
    class_ids = sorted(
        set(found) | {a["category_id"] - 1 for a in gt_anns} | set(names or {})
    )
    cname = {c: str((names or {}).get(c) or found.get(c) or c) for c in class_ids}
    gt = COCO({
        "images": images,
        "annotations": gt_anns,
        "categories": [{"id": c + 1, "name": cname[c]} for c in class_ids],
    })
    result = {"images": len(images), "skipped": skipped, "errors": errors, "gt_boxes": len(gt_anns),
              "predictions": len(dt)}
    if not gt_anns:
        return {"map50_95": 0.0, "map50": 0.0, "per_class": {}, **result}

    dt_coco = gt.loadRes(dt) if len(dt) else gt.loadRes([])
    ev = COCOeval_faster(gt, dt_coco, iouType="bbox", print_function=log.debug)
    ev.params.maxDets = list(MAX_DETS)
    ev.evaluate()
    ev.accumulate()
    prec = np.asarray(ev.eval["precision"])[:, :, :, 0, -1]  # (T iou, R recall, K class) at area "all", 300 dets
    cat_ids = list(ev.params.catIds)
    per_class, ap50 = {}, []
    for k, cat in enumerate(cat_ids):
        p = prec[:, :, k]
        if (p > -1).any():  # the class has ground truth
            per_class[cname[cat - 1]] = float(p[p > -1].mean())
            ap50.append(float(p[0][p[0] > -1].mean()))
    return {
        "map50_95": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "map50": float(np.mean(ap50)) if ap50 else 0.0,
        "per_class": per_class,
        **result,
    }


def format_table(res: dict) -> str:
    lines = [f"{'class':<20} {'AP50-95':>8}"]
    lines += [f"{name:<20} {ap:>8.4f}" for name, ap in sorted(res["per_class"].items())]
    lines.append(f"{'all':<20} {res['map50_95']:>8.4f}   mAP50 {res['map50']:.4f}")
    lines.append(
        f"images {res['images']}  gt boxes {res['gt_boxes']}  predictions {res['predictions']}  "
        f"skipped (no label file) {res['skipped']}  errors {res['errors']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`yoloray eval PREDICTIONS.parquet LABELS [--json]`."""
    ap = argparse.ArgumentParser(
        prog="yoloray eval",
        description="COCO mAP of a predictions Parquet (made with conf=0.001 iou=0.7 max_det=300) against "
        "a folder of YOLO label files.",
    )
    ap.add_argument("predictions", help="predictions Parquet file or folder")
    ap.add_argument("labels", help="folder of YOLO <stem>.txt label files")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    try:
        res = evaluate(args.predictions, args.labels)
    except (ValueError, OSError) as e:
        print(f"yoloray eval: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
