"""Test models: ultralytics detection checkpoints with random weights whose class scores are spread over
(0, 1), so that confidence filtering, NMS and box mapping have real, varied work to do (a freshly built
random model scores every box alike). Written once per session into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import torch

WEIGHT_STD = 10.0
BIAS_MEAN = -4.0


def make_checkpoint(path: Path, yaml: str = "yolov8n.yaml", seed: int = 0, end2end: bool | None = None) -> Path:
    from ultralytics.nn.tasks import DetectionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DetectionModel(yaml, verbose=False)
        for m in model.modules():  # keep activations O(1) through depth, so outputs depend on the image
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        head = model.model[-1]
        branches = [head.cv3] + ([head.one2one_cv3] if getattr(head, "one2one_cv3", None) is not None else [])
        for branch in branches:
            for seq in branch:
                last = seq[-1]
                torch.nn.init.normal_(last.weight, 0.0, WEIGHT_STD)
                torch.nn.init.normal_(last.bias, BIAS_MEAN, 1.0)
    if end2end is not None:
        model.end2end = end2end
    model.names = {i: f"class{i}" for i in range(head.nc)}
    torch.save({"model": model.eval(), "train_args": {}, "date": "test"}, path)
    return path
