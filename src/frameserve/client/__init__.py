"""frameserve's Python client for its HTTP API (Open Inference Protocol v2, binary tensors).

::

    import skimage.data
    from frameserve.client import Client

    with Client("http://127.0.0.1:8000") as client:
        frame = skimage.data.astronaut()          # (512, 512, 3) uint8, sent as UINT8
        result = client.infer("blur", frame, knobs={"size": 4.0})
        result.frames["image"]                    # (512, 512, 3) float32 in 0-1
        client.training.jobs()                    # training jobs (frameserve.client._training)

Only the standard library and numpy are needed. Errors form one tree under
:class:`ClientError` (itself a :class:`frameserve.errors.FrameServeError`), drawn in
``frameserve.client._exceptions``.
"""

from __future__ import annotations

from frameserve.client._client import Client, Frames, KnobValue
from frameserve.client._exceptions import (
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    ConnectError,
    HTTPStatusError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ProtocolViolation,
    RequestTimeout,
    ServerError,
    ServiceUnavailableError,
    TransportError,
)
from frameserve.client._models import InferResult, ModelInfo
from frameserve.client._training import Training, TrainingJob, Upload

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ClientError",
    "ConflictError",
    "ConnectError",
    "Frames",
    "HTTPStatusError",
    "InferResult",
    "KnobValue",
    "ModelInfo",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProtocolViolation",
    "RequestTimeout",
    "ServerError",
    "ServiceUnavailableError",
    "Training",
    "TrainingJob",
    "TransportError",
    "Upload",
]
