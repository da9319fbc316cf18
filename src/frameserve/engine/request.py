"""The protocol-neutral request and result that travel front door → scheduler → runner.

A front door decodes its wire format into frames and raw knob values, then calls
:func:`build_request`, which checks them against the model's declaration once, so that
everything downstream can trust the request. This module is the one place that checks a
request's inputs and knobs; front doors only translate.

A door that needs the knob values before its frames are converted (the MLClient door keys its
result cache on them) checks them first with :func:`check_knobs` and hands the
:class:`CheckedKnobs` to :func:`build_request`, which then does not check them again::

    knobs = check_knobs(entry, {"size": 2.5})
    key = engine.cache_key(entry, knobs, digests)     # before any frame is converted
    request = build_request(entry, frames, knobs)
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TypeAlias

import torch

from frameserve.catalogue.entries import ModelEntry
from frameserve.errors import FrameError, RequestError
from frameserve.plugin.frames import check_frame
from frameserve.plugin.knobs import KnobValues, resolve_knobs
from frameserve.plugin.model import SCENE_LINEAR, ImageSpec, ModelSpec
from frameserve.plugin.results import ResultObject

__all__ = [
    "CheckedKnobs",
    "InferenceRequest",
    "InferenceResult",
    "Priority",
    "RequestFuture",
    "build_request",
    "check_knobs",
]

_request_ids = itertools.count(1)


class Priority(enum.IntEnum):
    """How urgent a request is: interactive work overtakes queued batch work."""

    INTERACTIVE = 0  #: an artist waiting in the viewer (MLClient, single HTTP requests)
    BATCH = 1  #: farm and sequence jobs (``frameserve run``, HTTP ``"priority": "batch"``)

    @classmethod
    def parse(cls, text: object) -> Priority:
        """Return the priority named ``text`` (``"interactive"`` or ``"batch"``)."""
        if isinstance(text, str) and text.strip().upper() in cls.__members__:
            return cls[text.strip().upper()]
        raise RequestError(f"priority {text!r} is not allowed; use 'interactive' or 'batch'")


@dataclass(frozen=True, kw_only=True)
class InferenceRequest:
    """One inference: a model, its input frames by name and this request's knob values.

    Attributes:
        colourspace: the colourspace the frames are in, and the one outputs come back in.
        priority: interactive requests overtake queued batch requests.
        client: who asked (for logs); ``group`` is whom the scheduler shares the server
            fairly between (a client id the caller names, else its host).
        deadline: a ``time.monotonic()`` time after which the request is dropped unrun.
        cache_key: identifies the request's model, knobs, colourspace and frame bytes for the
            result cache (the front door may compute it from the bytes it received).
        entry: the exact model version the request was checked against and runs on, whatever
            the registry reloads meanwhile; ``None``: the newest version when it is queued.
        abandoned: set when its client went away (:class:`RequestFuture`), even while it runs,
            so a model host may stop the call; ``None``: not submitted to a scheduler.
    """

    model_id: str
    frames: Mapping[str, torch.Tensor]
    knobs: KnobValues
    colourspace: str = SCENE_LINEAR
    priority: Priority = Priority.INTERACTIVE
    client: str = ""
    group: str = ""
    protocol: str = ""
    deadline: float | None = None
    cache_key: bytes | None = None
    entry: ModelEntry | None = field(default=None, repr=False)
    id: int = field(default_factory=lambda: next(_request_ids))
    abandoned: threading.Event | None = field(default=None, repr=False, compare=False)

    @property
    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal batch keys may run as one batch: model, knobs, sizes, colour."""
        sizes = tuple((name, tuple(t.shape)) for name, t in self.frames.items())
        model = self.entry.key if self.entry is not None else (self.model_id,)
        return (model, self.knobs, self.colourspace, sizes)

    @property
    def frame_size(self) -> tuple[int, int]:
        """Width and height of the first input frame, ``(0, 0)`` for a model without inputs."""
        first = next(iter(self.frames.values()), None)
        return (0, 0) if first is None else (int(first.shape[2]), int(first.shape[1]))


@dataclass(frozen=True, kw_only=True)
class InferenceResult:
    """What a model produced: output frames by name (declared order) and result objects.

    ``worker`` is the process id of the worker process that ran it, ``None`` when it ran in
    the server process or came from the result cache (request logs show it as ``worker=``).
    """

    frames: Mapping[str, torch.Tensor]
    objects: tuple[ResultObject, ...] = ()
    worker: int | None = None


class RequestFuture(Future[InferenceResult]):
    """A request's future: cancelling it also sets :attr:`abandoned`, even once it runs.

    ``Future.cancel`` cannot stop a request that runs already; a model host that can stop a
    call (a Ray Serve replica's) watches :attr:`abandoned` instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.abandoned = threading.Event()

    def cancel(self) -> bool:
        """Drop the request if it is queued; if it runs, tell its model host its client left."""
        if not self.done():
            self.abandoned.set()
        return super().cancel()


#: A request's frames: a sequence in input order, a mapping of input name to frame, or a
#: sequence of ``(name, frame)`` pairs as a wire format lists them (a name sent twice is refused).
Frames: TypeAlias = (
    Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | Sequence[tuple[str, torch.Tensor]]
)


@dataclass(frozen=True)
class CheckedKnobs:
    """Knob values checked against one model's declaration by :func:`check_knobs`.

    Attributes:
        spec: the declaration they were checked against.
        values: every knob's value: what was sent, the defaults for the rest.
    """

    spec: ModelSpec
    values: KnobValues


def check_knobs(model: ModelSpec | ModelEntry, sent: Mapping[str, object]) -> CheckedKnobs:
    """Check the knob values a request ``sent`` against ``model``; fill in the defaults.

    Raises:
        KnobError: an unknown knob, a value of the wrong type or out of range (the message
            names the knob and says what is allowed).
    """
    spec = model if isinstance(model, ModelSpec) else model.spec
    return CheckedKnobs(spec, resolve_knobs(spec.knobs, sent))


def build_request(
    model: ModelSpec | ModelEntry,
    frames: Frames,
    knobs: Mapping[str, object] | CheckedKnobs,
    *,
    colourspace: str | None = None,
    priority: Priority = Priority.INTERACTIVE,
    client: str = "",
    group: str = "",
    protocol: str = "",
    deadline: float | None = None,
    cache_key: bytes | None = None,
) -> InferenceRequest:
    """Check ``frames`` and ``knobs`` against ``model``; return the request.

    ``frames`` is a sequence in input order (optional inputs, which come last, may be left
    off), a mapping of input name to frame, or a sequence of ``(name, frame)`` pairs.

    ``knobs`` are the values the request sent, or values :func:`check_knobs` checked already
    against this model (they are not checked again).

    ``model`` is a model's declaration, or its registry entry: then the request runs on
    exactly that version, even if the registry reloads the model before it runs.

    Frames with more channels than an input declares are cut to the declared channels (the
    MLClient node always sends RGB); fewer channels are an error.

    Raises:
        FrameError: wrong number of frames, an unknown, missing or repeated input, or a frame
            of the wrong form.
        KnobError: an unknown knob, a value of the wrong type or out of range.
    """
    entry = model if isinstance(model, ModelEntry) else None
    spec = model if isinstance(model, ModelSpec) else model.spec
    by_name: dict[str, torch.Tensor] = {}
    for declared, frame in _match_inputs(spec, frames):
        what = f"input {declared.name!r} of model {spec.id!r}"
        frame = check_frame(frame, what=what)
        channels = frame.shape[0]
        if channels < declared.channels:
            raise FrameError(
                f"{what} needs {declared.channels} channel(s); the request sent {channels}"
            )
        by_name[declared.name] = frame[: declared.channels]
    if isinstance(knobs, CheckedKnobs) and knobs.spec is spec:
        values = knobs.values
    else:
        sent = knobs.values if isinstance(knobs, CheckedKnobs) else knobs
        values = resolve_knobs(spec.knobs, sent)
    return InferenceRequest(
        model_id=spec.id,
        frames=by_name,
        knobs=values,
        colourspace=colourspace or SCENE_LINEAR,
        priority=priority,
        client=client,
        group=group or client.rpartition(":")[0] or client,
        protocol=protocol,
        deadline=deadline,
        cache_key=cache_key,
        entry=entry,
    )


def _match_inputs(spec: ModelSpec, frames: Frames) -> list[tuple[ImageSpec, object]]:
    """Pair each frame with the input it is, in declared order; check names and counts."""
    if isinstance(frames, Mapping):
        return _match_names(spec, list(frames.items()))
    if frames and all(isinstance(item, tuple) for item in frames):
        return _match_names(spec, [(str(name), frame) for name, frame in frames])
    required = len(spec.required_inputs)
    if not required <= len(frames) <= len(spec.inputs):
        names = ", ".join(repr(i.name) for i in spec.inputs) or "none"
        takes = str(len(spec.inputs))
        if required < len(spec.inputs):
            takes = f"{required} to {len(spec.inputs)}"
        raise FrameError(
            f"model {spec.id!r} takes {takes} image(s) ({names}); the request has {len(frames)}"
        )
    return list(zip(spec.inputs, frames, strict=False))


def _match_names(
    spec: ModelSpec, named: list[tuple[str, object]]
) -> list[tuple[ImageSpec, object]]:
    declared = {i.name: i for i in spec.inputs}
    given: dict[str, object] = {}
    for name, frame in named:
        if name not in declared:
            declared_names = ", ".join(map(repr, declared)) or "none"
            raise FrameError(
                f"model {spec.id!r} has no input {name!r}; its inputs: {declared_names}"
            )
        if name in given:
            raise FrameError(
                f"model {spec.id!r}: input {name!r} is sent twice; send each input once"
            )
        given[name] = frame
    missing = [i.name for i in spec.required_inputs if i.name not in given]
    if missing:
        raise FrameError(
            f"model {spec.id!r} needs input {missing[0]!r}; the request has "
            f"{', '.join(map(repr, given)) or 'none'}"
        )
    return [(i, given[i.name]) for i in spec.inputs if i.name in given]
