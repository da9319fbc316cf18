"""The one table from frameserve's error tree (:mod:`frameserve.errors`) to HTTP statuses.

Every HTTP route answers an error with :func:`status_for` and ``{"error": message}``::

    status_for(ModelNotFoundError("unknown model 'nope'"))     # 404
    status_for(ConfigError("'name' is missing"))               # 500: the server's settings
    status_for(ConfigError("..."), overrides=CLIENT_INPUT)     # 400: settings the client sent

The first class in :data:`ERROR_STATUSES` an error is an instance of gives its status, so more
specific classes come first; anything else is a 500. A route gives other statuses to some
errors only through ``overrides``, and says why there.
"""

from __future__ import annotations

from collections.abc import Mapping

from frameserve.errors import (
    ConfigError,
    DeadlineExceededError,
    ImageIOError,
    JobConflictError,
    JobNotFoundError,
    ModelLoadError,
    ModelNotFoundError,
    ModelSetupError,
    ModelTimeoutError,
    PermissionDeniedError,
    RequestCancelledError,
    RequestError,
    RequestTooLargeError,
    ServerBusyError,
    StorageFullError,
    UploadNotFoundError,
)

__all__ = ["CLIENT_INPUT", "ERROR_STATUSES", "status_for"]

#: Error class → status, most specific first.
ERROR_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (JobNotFoundError, 404),  # no training job has that name
    (UploadNotFoundError, 404),  # no upload has that id
    (ModelNotFoundError, 404),  # no model (or version) has that id
    (PermissionDeniedError, 403),  # the user's role, or not their job
    (JobConflictError, 409),  # the job's state forbids the action
    (RequestTooLargeError, 413),  # a body above the size cap
    (DeadlineExceededError, 504),  # dropped unrun: its deadline passed in the queue
    (ModelTimeoutError, 504),  # ran past its model's timeout or its deadline: stopped
    (RequestError, 400),  # any other request the client got wrong
    (StorageFullError, 507),  # the uploads kept for jobs are full
    (ServerBusyError, 503),  # no room right now: try again
    (RequestCancelledError, 503),  # dropped unrun: the server is shutting down (or the
    # client went away, and reads no answer)
    (ModelLoadError, 503),  # the model exists but failed to load
    (ModelSetupError, 503),  # it loaded, but cannot set up here (weights missing)
)

#: For routes whose settings and image files come from the client (training jobs): an
#: unusable setting or an unreadable image is the client's mistake there, not the server's.
CLIENT_INPUT: Mapping[type[BaseException], int] = {ConfigError: 400, ImageIOError: 400}


def status_for(
    error: BaseException, *, overrides: Mapping[type[BaseException], int] | None = None
) -> int:
    """Return the HTTP status of ``error``: from ``overrides`` first, then the table, else 500."""
    for cls, status in (*(overrides or {}).items(), *ERROR_STATUSES):
        if isinstance(error, cls):
            return status
    return 500
