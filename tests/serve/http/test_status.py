"""The one table from the error tree to HTTP statuses, as every HTTP route answers errors."""

from __future__ import annotations

import pytest

from frameserve import errors
from frameserve.serve.http.status import CLIENT_INPUT, status_for

#: Every class of the error tree (and one from outside it) with the status it must get.
STATUSES = [
    (errors.JobNotFoundError, 404),
    (errors.UploadNotFoundError, 404),
    (errors.ModelNotFoundError, 404),
    (errors.PermissionDeniedError, 403),
    (errors.JobConflictError, 409),
    (errors.RequestTooLargeError, 413),
    (errors.DeadlineExceededError, 504),
    (errors.ProtocolError, 400),
    (errors.KnobError, 400),
    (errors.FrameError, 400),
    (errors.ColourError, 400),
    (errors.UploadError, 400),
    (errors.RequestError, 400),
    (errors.StorageFullError, 507),
    (errors.ServerBusyError, 503),
    (errors.ModelLoadError, 503),
    (errors.ModelSetupError, 503),
    (errors.ModelError, 500),
    (errors.ModelRunError, 500),
    (errors.ModelTimeoutError, 504),
    (errors.ModelCrashedError, 500),
    (errors.ConfigError, 500),
    (errors.ImageIOError, 500),
    (errors.UserExistsError, 500),  # the token command's own errors: never raised by a route
    (errors.UnknownUserError, 500),
    (errors.RequestCancelledError, 503),
    (errors.FrameServeError, 500),
    (ValueError, 500),
]


@pytest.mark.parametrize(
    ("error", "status"),
    STATUSES,
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
)
def test_each_error_has_its_status(error: type[BaseException], status: int) -> None:
    assert status_for(error("x")) == status


def test_every_class_of_the_error_tree_has_a_status_above() -> None:
    assert {error.__name__ for error, _ in STATUSES if error.__module__ == errors.__name__} == set(
        errors.__all__
    )


def test_overrides_win_over_the_table() -> None:
    assert status_for(errors.ConfigError("x"), overrides=CLIENT_INPUT) == 400
    assert status_for(errors.ImageIOError("x"), overrides=CLIENT_INPUT) == 400
    assert status_for(errors.JobNotFoundError("x"), overrides=CLIENT_INPUT) == 404
    upload_named_by_a_job = {errors.UploadNotFoundError: 400}
    assert status_for(errors.UploadNotFoundError("x"), overrides=upload_named_by_a_job) == 400
