"""`yoloray demo` (what `make demo` runs): generate sample footage, run the batch job on a local Ray with the
demo detector (GPU when present, else CPU), print the summary, and write a contact sheet of annotated frames
(stills from the tar shards and frames of the H.264 clip)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

COLORS = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72)]


def draw(image: np.ndarray, detections: list[dict]) -> np.ndarray:
    out = image.copy()
    thick = max(2, round(out.shape[1] / 640))
    for d in detections:
        color = COLORS[d["class_id"] % len(COLORS)]
        p1, p2 = (int(d["x1"]), int(d["y1"])), (int(d["x2"]), int(d["y2"]))
        cv2.rectangle(out, p1, p2, color, thick)
        cv2.putText(
            out, f"{d['label']} {d['score']:.2f}", (p1[0], max(p1[1] - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX,
            0.4 * thick, color, max(1, thick // 2), cv2.LINE_AA,
        )
    return out


def contact_sheet(rows: list[dict], images: dict[str, np.ndarray], path: Path, cols: int = 3, width: int = 640) -> Path:
    tiles = []
    for row in rows:
        im = draw(images[row["key"]], row["detections"] or [])
        h = round(im.shape[0] * width / im.shape[1])
        tiles.append(cv2.resize(im, (width, h), interpolation=cv2.INTER_AREA))
    h = max(t.shape[0] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, 0, cv2.BORDER_CONSTANT) for t in tiles]
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)])
    cv2.imwrite(str(path), grid)
    return path


def run_demo(out: Path, frames: int = 48, device: str = "auto") -> int:
    from yoloray.assets import demo_weights
    from yoloray.batch import run_job
    from yoloray.cluster import connect
    from yoloray.config import Profile
    from yoloray.data.synthetic import generate
    from yoloray.observe.quiet import quiet_ray_data, quiet_ray_startup

    out = Path(out)
    data_dir, results = out / "sample_footage", out / "detections"
    if not (data_dir / "dataset.yaml").is_file():
        print(f"generating {frames} frames of sample footage in {data_dir} ...")
        generate(data_dir, frames=frames, seed=7, formats=("folder", "tar", "video"), video_frames=24)
    shutil.rmtree(results, ignore_errors=True)
    weights = demo_weights()
    if weights is None:
        print("note: no bundled demo detector in this install; using random YOLOv8n weights (detects nothing)")
    # backend auto: on a CPU the fastest engine that keeps exact-mode fidelity, ONNX Runtime's CPU provider at
    # fp32 (profile.auto_backend; benchmarks/engines.py --mode cpu measures it against torch)
    config = Profile(
        device=device, imgsz=(384, 640), batch_size=16,
        **({"model": str(weights)} if weights else {"model": "yolov8n.yaml"}),
    )
    quiet_ray_startup(verbose=False)  # the console keeps the demo's own lines, as `yoloray infer` does
    connect(None, log_to_driver=False, configure_logging=False)  # a new local Ray unless one is up in-process
    quiet_ray_data(verbose=False)
    summary = run_job([str(data_dir / "shards"), str(data_dir / "clip.mp4")], str(results), config)
    print(summary.text())
    table = pq.read_table(results).to_pylist()
    stills = sorted((r for r in table if r["frame"] is None and r["error"] is None), key=lambda r: r["key"])[:3]
    frames = sorted((r for r in table if r["frame"] is not None and r["error"] is None), key=lambda r: r["frame"])
    rows = stills + frames[:: max(1, len(frames) // 3)][:3]
    images = {r["key"]: cv2.imread(str(data_dir / "images" / _split(data_dir, r["key"]) / r["key"].split("::")[1])) for r in stills}
    images.update(_video_frames(data_dir / "clip.mp4", rows))
    sheet = contact_sheet(rows, images, out / "contact_sheet.png")
    print(f"contact sheet  {sheet}")
    return 0


def _video_frames(path: Path, rows: list[dict]) -> dict[str, np.ndarray]:
    """The clip's frames that `rows` name (PyAV, presentation order)."""
    import av

    wanted = {r["frame"]: r["key"] for r in rows if r["frame"] is not None}
    with av.open(str(path)) as container:
        return {wanted[i]: f.to_ndarray(format="bgr24") for i, f in enumerate(container.decode(video=0)) if i in wanted}


def _split(data_dir: Path, key: str) -> str:
    name = key.split("::")[1]
    return "train" if (data_dir / "images" / "train" / name).is_file() else "val"
