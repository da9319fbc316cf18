"""The one exception family of frameserve.

Every error frameserve raises on purpose derives from :class:`FrameServeError`, and every
message says what was wrong and what is allowed. Code raises the most specific class; each
front door maps the tree onto its protocol in one place (the MLClient door answers an
``Error`` message, the HTTP door a status from :mod:`frameserve.serve.http.status`).

::

    FrameServeError
    ├── ConfigError              settings, flags or a model declaration that cannot work
    ├── RequestError             the client asked for something invalid (its fault)
    │   ├── ProtocolError        bytes that do not follow the wire protocol
    │   │   └── RequestTooLargeError
    │   ├── ModelNotFoundError   no model has that id
    │   ├── KnobError            unknown knob, wrong type, out of range
    │   ├── FrameError           wrong number of frames, bad size, channels or byte count
    │   ├── ColourError          an unknown colourspace, or a conversion that cannot be made
    │   ├── DeadlineExceededError  the request's deadline passed before it could run
    │   ├── JobNotFoundError     no training job has that name
    │   ├── JobConflictError     the job's state forbids the action (a name in use, resuming
    │   │                        a running job)
    │   ├── UploadError          an uploaded file that cannot be used (name, bytes, format)
    │   ├── UploadNotFoundError  no upload has that id (never sent, deleted or aged out)
    │   └── PermissionDeniedError  the user may not do this (their role, or not their job)
    ├── ModelError               the model failed (the server's or the plug-in's fault)
    │   ├── ModelLoadError       a plug-in could not be imported or declares itself wrongly
    │   ├── ModelSetupError      its setup step (loading weights) raised
    │   ├── ModelRunError        predict raised or returned something other than declared
    │   ├── ModelTimeoutError    it ran past its timeout or the request's deadline (its worker
    │   │                        was stopped)
    │   └── ModelCrashedError    its worker process died (a signal, an exit, its memory cap)
    ├── ImageIOError             an image file could not be read or written
    ├── UserExistsError          token add: the token file has a user of that name already
    ├── UnknownUserError         token remove: the token file has no user of that name
    ├── ServerBusyError          too many connections or requests right now
    │   └── StorageFullError     the server keeps no more of what was sent (uploads)
    └── RequestCancelledError    the client went away, or the server is shutting down
"""

from __future__ import annotations

__all__ = [
    "ColourError",
    "ConfigError",
    "DeadlineExceededError",
    "FrameError",
    "FrameServeError",
    "ImageIOError",
    "JobConflictError",
    "JobNotFoundError",
    "KnobError",
    "ModelCrashedError",
    "ModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRunError",
    "ModelSetupError",
    "ModelTimeoutError",
    "PermissionDeniedError",
    "ProtocolError",
    "RequestCancelledError",
    "RequestError",
    "RequestTooLargeError",
    "ServerBusyError",
    "StorageFullError",
    "UnknownUserError",
    "UploadError",
    "UploadNotFoundError",
    "UserExistsError",
]


class FrameServeError(Exception):
    """Root of every error frameserve raises on purpose.

    ``worker`` is the process id of the model worker process the error came from (set by the
    engine for errors of models run in worker processes, for the request logs), else ``None``.
    """

    worker: int | None = None


class ConfigError(FrameServeError):
    """Settings, command-line flags or a model declaration that cannot work."""


class RequestError(FrameServeError):
    """The client sent a request that cannot be served as it stands."""


class ProtocolError(RequestError):
    """The bytes on the wire do not follow the protocol."""


class RequestTooLargeError(ProtocolError):
    """A request announced more bytes than the server accepts."""


class ModelNotFoundError(RequestError):
    """No model is registered under the requested id."""


class KnobError(RequestError):
    """A knob value is unknown, of the wrong type or out of range."""


class FrameError(RequestError):
    """Frames do not match what the model declares (count, size, channels, bytes)."""


class ColourError(RequestError):
    """A colourspace is unknown to the colour configuration, or cannot be converted."""


class ModelError(FrameServeError):
    """A model failed: it could not load, set up or run."""


class ModelLoadError(ModelError):
    """A model plug-in could not be imported or declares itself wrongly."""


class ModelSetupError(ModelError):
    """A model's setup step (loading weights, building the network) raised."""


class ModelRunError(ModelError):
    """A model's predict raised, or returned something other than it declares."""


class ModelTimeoutError(ModelError):
    """A request ran past its model's timeout or its own deadline; the worker was stopped."""


class ModelCrashedError(ModelError):
    """The worker process running the model died: a signal, an exit, or its memory cap."""


class ImageIOError(FrameServeError):
    """An image file could not be read or written."""


class ServerBusyError(FrameServeError):
    """The server has no room for another connection or request right now."""


class DeadlineExceededError(RequestError):
    """The request's deadline passed before it could run; it was dropped unrun."""


class RequestCancelledError(FrameServeError):
    """The request was dropped unrun: its client went away, or the server is shutting down."""


class JobNotFoundError(RequestError):
    """No training job has that name."""


class JobConflictError(RequestError):
    """The job's state forbids what was asked (a name in use, resuming a running job)."""


class UploadError(RequestError):
    """An upload that cannot be used: a bad file name, or bytes that are not that image."""


class UploadNotFoundError(RequestError):
    """No upload has that id (never uploaded, deleted, or aged out)."""


class StorageFullError(ServerBusyError):
    """What the server keeps of uploaded data is full; nothing more is stored until some goes."""


class PermissionDeniedError(RequestError):
    """The user may not do this: their role is too small, or the job is not theirs."""


class UserExistsError(FrameServeError):
    """``token add``: the token file has a user of that name already."""


class UnknownUserError(FrameServeError):
    """``token remove``: the token file has no user of that name."""
