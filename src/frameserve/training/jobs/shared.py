"""A job's decoded frames in shared memory: held once by the server, mapped by its training process.

The server reads and checks a job's frames (:mod:`frameserve.training.jobs.data`, confined to
the data roots and within the job limits); its training process
(:mod:`frameserve.training.jobs.process`) maps the same pages instead of reading the files
again or being sent pickled pixels::

    shared = SharedFrames.share(data)        # one copy of each distinct array into the block
    data = shared.data()                     # the frames again, as views of the block
    Process(target=train, args=(shared, ...)).start()   # the child maps the block
    data = shared.data()                     # in the child: views, no copy

The block is a :func:`multiprocessing.sharedctypes.RawArray` of the ``spawn`` context: an
unnamed file (in ``/dev/shm`` when it has room, else in the temporary folder), so nothing is
left behind whoever is killed, and it is freed once the server drops every view of it and the
child has ended. It can be handed to a process only as it is started.

A file named several times is one array: it stays one array (one copy in the block, one view).
Arrays are float32 ``(C, H, W)``, each at a 64-byte aligned offset.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from frameserve.training import FramePair, ImagePairs, LabelledImage, LabelledImages

__all__ = ["SharedFrames"]

_ALIGN = 64
_Frame: TypeAlias = npt.NDArray[np.float32]


@dataclass(frozen=True)
class _Slot:
    """Where one array lies in the block."""

    offset: int
    shape: tuple[int, ...]


class SharedFrames:
    """A job's frames (:class:`ImagePairs` or :class:`LabelledImages`) in one shared block.

    Build it with :meth:`share`; :meth:`data` gives the frames back as views of the block
    (in the server and in the training process alike).
    """

    def __init__(self, block: Any, slots: Sequence[_Slot], layout: dict[str, Any]) -> None:
        self._block = block
        self._slots = tuple(slots)
        self._layout = layout

    @property
    def nbytes(self) -> int:
        """The size of the block, in bytes."""
        return int(ctypes.sizeof(self._block))

    @classmethod
    def share(cls, data: ImagePairs | LabelledImages) -> SharedFrames:
        """Copy every distinct array of ``data`` into a new shared block; return it."""
        arrays: dict[int, tuple[int, _Frame]] = {}  # id -> (slot index, array)

        def slot_of(array: _Frame) -> int:
            if id(array) not in arrays:
                arrays[id(array)] = (len(arrays), array)
            return arrays[id(array)][0]

        layout: dict[str, Any]
        if isinstance(data, ImagePairs):
            layout = {
                "kind": "pairs",
                "colourspace": data.colourspace,
                "splits": [
                    [
                        {
                            "input": slot_of(pair.input),
                            "target": slot_of(pair.target),
                            "name": pair.name,
                            "input_path": pair.input_path,
                            "target_path": pair.target_path,
                            "input_channels": pair.input_channels,
                            "target_channels": pair.target_channels,
                        }
                        for pair in split
                    ]
                    for split in (data.train, data.validation)
                ],
            }
        else:
            layout = {
                "kind": str(data.kind),
                "colourspace": data.colourspace,
                "classes": data.classes,
                "splits": [
                    [
                        {
                            "image": slot_of(item.image),
                            "target": item.target,
                            "name": item.name,
                            "path": item.path,
                            "channels": item.channels,
                        }
                        for item in split
                    ]
                    for split in (data.train, data.validation)
                ],
            }
        slots, size = [], 0
        for _, array in arrays.values():
            slots.append(_Slot(size, tuple(array.shape)))
            size += -(-array.nbytes // _ALIGN) * _ALIGN
        block = multiprocessing.get_context("spawn").RawArray(ctypes.c_char, max(size, 1))
        shared = cls(block, slots, layout)
        for (_, array), slot in zip(arrays.values(), slots, strict=True):
            np.copyto(shared._view(slot), array, casting="no")
        return shared

    def data(self) -> ImagePairs | LabelledImages:
        """Return the frames as views of the block (arrays shared as they were)."""
        views = [self._view(slot) for slot in self._slots]
        layout = self._layout
        train, validation = layout["splits"]
        if layout["kind"] == "pairs":

            def pair(entry: dict[str, Any]) -> FramePair:
                return FramePair(
                    input=views[entry["input"]],
                    target=views[entry["target"]],
                    name=entry["name"],
                    input_path=entry["input_path"],
                    target_path=entry["target_path"],
                    input_channels=entry["input_channels"],
                    target_channels=entry["target_channels"],
                )

            return ImagePairs(
                [pair(e) for e in train],
                [pair(e) for e in validation],
                colourspace=layout["colourspace"],
            )

        def item(entry: dict[str, Any]) -> LabelledImage:
            return LabelledImage(
                views[entry["image"]],
                entry["target"],
                name=entry["name"],
                path=entry["path"],
                channels=entry["channels"],
            )

        return LabelledImages(
            layout["kind"],
            [item(e) for e in train],
            [item(e) for e in validation],
            classes=layout["classes"],
            colourspace=layout["colourspace"],
        )

    def _view(self, slot: _Slot) -> _Frame:
        count = int(np.prod(slot.shape))
        flat = np.frombuffer(self._block, dtype=np.float32, count=count, offset=slot.offset)
        return flat.reshape(slot.shape)
