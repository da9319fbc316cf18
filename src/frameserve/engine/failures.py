"""Errors on their way out of a model's process: told in one line, made fit to cross.

A worker process (:mod:`frameserve.engine.workers.process`) and a Ray Serve replica
(:mod:`frameserve.engine.cluster.replica`) send their models' errors to the server as
pickles; :func:`crossable` strips what must not travel (a traceback holds the request's
frames). :func:`describe_error` is the one-line form the logs and replies use.
"""

from __future__ import annotations

import pickle

from frameserve.errors import FrameServeError, ModelRunError

__all__ = ["crossable", "describe_error"]


def describe_error(error: BaseException) -> str:
    """An error in one line: our own message as it is, anything else with its type's name."""
    if isinstance(error, FrameServeError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def crossable(error: FrameServeError) -> FrameServeError:
    """``error`` ready to cross to another process: without its traceback and chained causes;
    a plain :class:`~frameserve.errors.ModelRunError` with its message if it cannot be
    pickled."""
    error.__traceback__ = error.__cause__ = error.__context__ = None
    try:
        pickle.dumps(error)
    except Exception:
        return ModelRunError(str(error))
    return error
