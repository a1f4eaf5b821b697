"""The gRPC face of the detection service (proto/detect.proto), free of Ray: request parameters, the
response message (the same fields as POST /detect's JSON), the status code of each client mistake, and the
way back to the JSON form (`to_dict`, what yoloray.client returns for both transports).

Serve's gRPC ingress needs the servicer registered where it starts its gRPC servers: the serve config's
`grpc_options: {port: 9000, grpc_servicer_functions: [yoloray.serve.grpc_api.SERVICER]}`.
"""

from __future__ import annotations

import grpc

from yoloray.serve.http import ApiError, DetectParams
from yoloray.serve.proto import detect_pb2 as pb

SERVICER = "yoloray.serve.proto.detect_pb2_grpc.add_DetectorServicer_to_server"
METHOD = "/yoloray.v1.Detector/Detect"

# HTTP status of a refused request -> gRPC status (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
# RESOURCE_EXHAUSTED is left to Serve's own back-pressure (past max_queued_requests): it and UNAVAILABLE
# are the two "overloaded, retry later" answers.
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 408,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
}


def grpc_status(http_status: int) -> grpc.StatusCode:
    return _STATUS.get(http_status, grpc.StatusCode.INTERNAL)


def http_status(code: grpc.StatusCode, details: str = "") -> int:
    """The HTTP status a gRPC status stands for (clients and the benchmark count both alike). gRPC's own
    message size limit (4 MiB by default) is RESOURCE_EXHAUSTED too, but no retry helps it: 413."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or ""):
        return 413
    return _HTTP.get(code, 500)


def request_params(request: pb.DetectRequest) -> DetectParams:
    """The optional conf / iou / max_det of a request, validated as the HTTP query parameters are."""
    items = [(k, str(getattr(request, k))) for k in ("conf", "iou", "max_det") if request.HasField(k)]
    try:
        return DetectParams.from_query(items)
    except ApiError as e:
        raise ApiError(e.status, e.message.replace("bad query parameters", "bad parameters")) from None


def response(results: list[dict], engine: str, params: dict) -> pb.DetectResponse:
    """The JSON answer's parts (rows of http.to_row, engine key, applied params) -> DetectResponse."""
    return pb.DetectResponse(
        results=[
            pb.ImageResult(
                width=r["width"],
                height=r["height"],
                detections=[pb.Detection(**d) for d in r["detections"]],
                error=r["error"],
            )
            for r in results
        ],
        engine=engine,
        params=pb.Params(**params),
    )


def to_dict(msg: pb.DetectResponse) -> dict:
    """DetectResponse -> the JSON answer's form (floats as float32 values, as the message holds them)."""
    return {
        "results": [
            {
                "width": r.width,
                "height": r.height,
                "detections": [
                    {
                        "x1": d.x1,
                        "y1": d.y1,
                        "x2": d.x2,
                        "y2": d.y2,
                        "score": d.score,
                        "class_id": d.class_id,
                        "label": d.label,
                    }
                    for d in r.detections
                ],
                "error": r.error if r.HasField("error") else None,
            }
            for r in msg.results
        ],
        "engine": msg.engine,
        "params": {"conf": msg.params.conf, "iou": msg.params.iou, "max_det": msg.params.max_det},
    }


def refuse(context, error: ApiError) -> pb.DetectResponse:
    """Set the status of a refused call on Serve's gRPC context; the (empty) answer to return with it."""
    context.set_code(grpc_status(error.status))
    context.set_details(error.message)
    return pb.DetectResponse()
