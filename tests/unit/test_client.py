"""yoloray.client and yoloray.serve.grpc_api without a service: backoff, URLs, the gRPC message round trip.
Against the real service (HTTP, gRPC, retries under overload): tests/integration/test_serve*.py."""

from __future__ import annotations

import grpc
import pytest

from yoloray.client import AsyncClient, backoff_s
from yoloray.serve import grpc_api
from yoloray.serve.http import ApiError
from yoloray.serve.proto import detect_pb2 as pb


def test_backoff_grows_is_capped_and_honours_retry_after():
    for attempt in range(8):
        d = backoff_s(attempt, 0.05, 2.0)
        assert 0 <= d <= min(2.0, 0.05 * 2**attempt)
    assert backoff_s(0, 0.05, 2.0, retry_after_s=1.0) == 1.0
    assert backoff_s(0, 0.05, 0.5, retry_after_s=30.0) == 0.5


def test_urls_and_options():
    assert AsyncClient("http://h:1").url == "http://h:1/detect"
    assert AsyncClient("http://h:1/app/detect").url == "http://h:1/app/detect"
    assert AsyncClient("grpc://h:9000").url == "h:9000" and AsyncClient("grpc://h:9000").grpc
    with pytest.raises(ValueError, match="must start with"):
        AsyncClient("h:8000")
    with pytest.raises(ValueError, match="max_in_flight"):
        AsyncClient("http://h:1", max_in_flight=0)


def test_grpc_message_round_trip_and_statuses():
    rows = [
        {
            "width": 640,
            "height": 480,
            "detections": [
                {"x1": 1.5, "y1": 2.0, "x2": 30.25, "y2": 40.0, "score": 0.5, "class_id": 3, "label": "car"}
            ],
            "error": None,
        },
        {"width": 0, "height": 0, "detections": [], "error": "not a decodable image"},
    ]
    answer = {"results": rows, "engine": "abc", "params": {"conf": 0.25, "iou": 0.7, "max_det": 300}}
    msg = pb.DetectResponse.FromString(grpc_api.response(**answer).SerializeToString())
    assert grpc_api.to_dict(msg) == answer
    req = pb.DetectRequest(images=[b"x"], conf=0.4)
    assert grpc_api.request_params(req).model_dump() == {"conf": 0.4, "iou": None, "max_det": None}
    with pytest.raises(ApiError, match="bad parameters: max_det"):
        grpc_api.request_params(pb.DetectRequest(max_det=0))
    for http in (400, 413, 415, 422, 503):
        assert grpc_api.http_status(grpc_api.grpc_status(http)) == (503 if http == 503 else 400)
    assert grpc_api.http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 503  # Serve's back-pressure
    too_big = "Received message larger than max (5242880 vs. 4194304)"
    assert grpc_api.http_status(grpc.StatusCode.RESOURCE_EXHAUSTED, too_big) == 413  # not worth a retry
    assert grpc_api.grpc_status(500) == grpc.StatusCode.INTERNAL
