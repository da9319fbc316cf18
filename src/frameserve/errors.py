"""The one exception family of frameserve.

Every error frameserve raises on purpose derives from :class:`FrameServeError`, and every
message says what was wrong and what is allowed. Front doors turn these into the reply their
protocol knows (an MLClient ``Error`` message, later an HTTP status).

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
    │   └── DeadlineExceededError  the request's deadline passed before it could run
    ├── ModelError               the model failed (the server's or the plug-in's fault)
    │   ├── ModelLoadError       a plug-in could not be imported or declares itself wrongly
    │   ├── ModelSetupError      its setup step (loading weights) raised
    │   └── ModelRunError        predict raised or returned something other than declared
    ├── ImageIOError             an image file could not be read or written
    ├── ServerBusyError          too many connections or requests right now
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
    "KnobError",
    "ModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelRunError",
    "ModelSetupError",
    "ProtocolError",
    "RequestCancelledError",
    "RequestError",
    "RequestTooLargeError",
    "ServerBusyError",
]


class FrameServeError(Exception):
    """Root of every error frameserve raises on purpose."""


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


class ImageIOError(FrameServeError):
    """An image file could not be read or written."""


class ServerBusyError(FrameServeError):
    """The server has no room for another connection or request right now."""


class DeadlineExceededError(RequestError):
    """The request's deadline passed before it could run; it was dropped unrun."""


class RequestCancelledError(FrameServeError):
    """The request was dropped unrun: its client went away, or the server is shutting down."""
