from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectRequest(_message.Message):
    __slots__ = ("images", "conf", "iou", "max_det")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CONF_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    MAX_DET_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    conf: float
    iou: float
    max_det: int
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., conf: _Optional[float] = ..., iou: _Optional[float] = ..., max_det: _Optional[int] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2", "score", "class_id", "label")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int
    label: str
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ..., score: _Optional[float] = ..., class_id: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class ImageResult(_message.Message):
    __slots__ = ("width", "height", "detections", "error")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    error: str
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class Params(_message.Message):
    __slots__ = ("conf", "iou", "max_det")
    CONF_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    MAX_DET_FIELD_NUMBER: _ClassVar[int]
    conf: float
    iou: float
    max_det: int
    def __init__(self, conf: _Optional[float] = ..., iou: _Optional[float] = ..., max_det: _Optional[int] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("results", "engine", "params")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImageResult]
    engine: str
    params: Params
    def __init__(self, results: _Optional[_Iterable[_Union[ImageResult, _Mapping]]] = ..., engine: _Optional[str] = ..., params: _Optional[_Union[Params, _Mapping]] = ...) -> None: ...
