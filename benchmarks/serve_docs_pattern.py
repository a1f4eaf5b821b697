"""The Ray Serve object-detection tutorial's pattern, for benchmarks/serve_load.py to measure yoloray against:
a FastAPI ingress deployment that hands each request to an `ObjectDetection` deployment holding an
ultralytics `YOLO(weights)`, one `predict` per request, no batching."""

import numpy as np


def docs_app(
    weights: str, imgsz: list[int], half: bool, conf: float, iou: float, max_det: int, options: dict
):
    """The Ray Serve tutorial's structure (APIIngress -> ObjectDetection), with ultralytics YOLO on our weights
    and image bytes in the POST body instead of an image URL."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve
    from ray.serve.handle import DeploymentHandle

    app = FastAPI()

    # one ingress replica as in the tutorial; no CPU reserved so it never blocks the ObjectDetection scale-up,
    # and no request cap of its own so the ingress is not what limits the pattern
    @serve.deployment(num_replicas=1, max_ongoing_requests=100_000, ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class APIIngress:
        def __init__(self, object_detection_handle: DeploymentHandle):
            self.handle = object_detection_handle

        @app.post("/detect")
        async def detect(self, request: Request):
            return JSONResponse(await self.handle.detect.remote(await request.body()))

    @serve.deployment(**options)
    class ObjectDetection:
        def __init__(self):
            import cv2
            import torch
            from ultralytics import YOLO

            self.cv2 = cv2
            self.model = YOLO(weights)
            device = 0 if torch.cuda.is_available() else "cpu"
            self.kw = dict(
                imgsz=imgsz, half=half, conf=conf, iou=iou, max_det=max_det, device=device, verbose=False
            )
            self.model.predict(np.zeros((1080, 1920, 3), np.uint8), **self.kw)  # load onto the device, warm

        def detect(self, data: bytes) -> dict:
            im = self.cv2.imdecode(np.frombuffer(data, np.uint8), self.cv2.IMREAD_COLOR)
            r = self.model.predict(im, **self.kw)[0]
            b = r.boxes
            dets = [
                {
                    "x1": x1,
                    "y1": y1,
                    "x2": x2,
                    "y2": y2,
                    "score": s,
                    "class_id": int(c),
                    "label": r.names[int(c)],
                }
                for (x1, y1, x2, y2), s, c in zip(b.xyxy.tolist(), b.conf.tolist(), b.cls.tolist())
            ]
            return {
                "results": [{"width": im.shape[1], "height": im.shape[0], "detections": dets, "error": None}]
            }

    return APIIngress.bind(ObjectDetection.bind())
