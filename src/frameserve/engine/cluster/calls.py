"""One call of a replica as the gateway makes it: requests out as arrays, answers back in.

A call carries its requests' frames as numpy arrays (Ray's object store moves them), their
knob values and colourspace (:func:`work_items`); the gateway waits for the answer in short
slices, so that when every client of the call went away it stops waiting and cancels the call
(:func:`answer`); each reply becomes the request's result or error (:func:`outcome`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from frameserve.engine.cluster.replica import Reply, Work, as_tensor
from frameserve.engine.request import InferenceRequest, InferenceResult
from frameserve.engine.workers.host import Outcome
from frameserve.errors import FrameServeError, ModelLoadError, RequestCancelledError

__all__ = ["ABANDONED_POLL", "answer", "outcome", "work_items"]

#: Seconds between looks, while a call runs on the cluster, whether its clients went away.
ABANDONED_POLL = 0.05


def work_items(requests: Sequence[InferenceRequest]) -> list[Work]:
    """The requests of one call as they travel to a replica."""
    return [
        (
            [(name, frame.detach().cpu().numpy()) for name, frame in request.frames.items()],
            dict(request.knobs),
            request.colourspace,
        )
        for request in requests
    ]


def answer(response: Any, requests: Sequence[InferenceRequest], timeout: float) -> Any:
    """A call's answer, waited for in slices while any of its clients is still there.

    Raises:
        TimeoutError: past ``timeout`` seconds.
        RequestCancelledError: every client of the call went away (the caller cancels it).
    """
    abandoned = [r.abandoned for r in requests]
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {timeout:g} s")
        try:
            return response.result(timeout_s=min(left, ABANDONED_POLL))
        except TimeoutError:
            if all(event is not None and event.is_set() for event in abandoned):
                raise RequestCancelledError(
                    "its client went away: its call on the cluster was cancelled"
                ) from None


def outcome(reply: Reply, pid: int) -> Outcome:
    """A request's result (``pid``: the replica's process) or error, from its reply."""
    kind, value = reply
    if kind == "error":
        return value if isinstance(value, FrameServeError) else ModelLoadError(str(value))
    frames, objects = value
    return InferenceResult(
        frames={name: as_tensor(array) for name, array in frames},
        objects=tuple(objects),
        worker=pid,
    )
