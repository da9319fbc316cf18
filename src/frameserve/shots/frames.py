"""One frame of a shot: which files it reads and writes, and the work of reading, running and
writing it (on a worker thread of :func:`frameserve.shots.run.run_sequence`).

Pixels stay interleaved ``(H, W, C)`` from the file to the backend and from the backend to the
file (see :mod:`frameserve.shots.backends` for where the one copy each way happens); only a
one-channel image given to a model input that declares more channels is repeated (a new
array). Outputs are written atomically (:mod:`frameserve.media.atomic`); result objects go to
a JSON sidecar beside the first output (``out.1001.exr`` → ``out.1001.json``), written first,
so that a frame whose images exist is complete.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frameserve.engine.colour import ColourManager, default_manager
from frameserve.errors import ModelRunError
from frameserve.media.atomic import write_bytes_atomically
from frameserve.media.colourspaces import COLOURSPACE_ATTRIBUTE
from frameserve.media.imageio import ImageFile, Window, read_image, write_image
from frameserve.media.sequences import FramePattern
from frameserve.plugin.model import SCENE_LINEAR, ImageSpec, ModelSpec
from frameserve.shots.backends import Backend, Frame

__all__ = ["FrameProcessor", "FrameTask", "neighbour_path", "objects_pattern"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameTask:
    """The files of one frame: what to read and what to write.

    ``inputs`` holds a path per model input; for a temporal model that includes the
    neighbour frames (``NAME@-1`` ...), found by :func:`neighbour_path`.
    """

    frame: int
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    objects: Path


def neighbour_path(pattern: FramePattern, frame: int, offset: int) -> Path:
    """The file of ``frame + offset`` for a temporal model, with the fallback at shot ends.

    A neighbour that does not exist on disk is replaced by the nearest existing frame between
    it and the current frame: at the first frame of a shot, ``frame - 1`` is the first frame
    itself; at the last, ``frame + 1`` is the last frame.
    """
    step = -1 if offset > 0 else 1
    for candidate in range(frame + offset, frame, step):
        path = pattern.path(candidate)
        if path.is_file():
            return path
    return pattern.path(frame)


def objects_pattern(pattern: FramePattern) -> FramePattern:
    """``out.####.exr`` → ``out.####.json``: where a frame's result objects are written."""
    head, dot, extension = pattern.suffix.rpartition(".")
    if dot and "/" not in extension and os.sep not in extension:
        suffix = f"{head}.json"
    else:
        suffix = f"{pattern.suffix}.json"
    return FramePattern(
        text=f"{pattern.prefix}{'#' * pattern.padding}{suffix}",
        prefix=pattern.prefix,
        padding=pattern.padding,
        suffix=suffix,
    )


#: A model that declares a knob of this name gets each frame's number in it (unless
#: the run sets the knob itself): how a model follows a shot (``pose`` smooths over it).
FRAME_KNOB = "frame"


class FrameProcessor:
    """Reads, runs and writes one frame; called on a worker thread.

    ``stop`` set (an interrupt): a frame not yet written writes nothing more.
    """

    def __init__(
        self,
        backend: Backend,
        spec: ModelSpec,
        *,
        model: str,
        knobs: Mapping[str, object],
        channels: tuple[str, ...] | None,
        colourspace: str | None,
        half: bool,
        stop: threading.Event,
        output_colourspaces: Mapping[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.spec = spec
        self.model = model
        self.knobs = knobs
        self.channels = channels
        self.colourspace = colourspace
        self.half = half
        self.stop = stop
        self.output_colourspaces = dict(output_colourspaces or {})
        self._colour: ColourManager | None = None

    def __call__(self, task: FrameTask) -> None:
        if self.stop.is_set():
            return
        started = time.perf_counter()
        read: dict[Path, ImageFile] = {}  # a neighbour may be the same file as another input
        files = {}
        for name, path in task.inputs.items():
            if path not in read:
                read[path] = read_image(path, channels=self.channels)
            files[name] = read[path]
        frames = {
            declared.name: _fit_channels(declared, files[declared.name])
            for declared in self.spec.inputs
            if declared.name in files
        }
        if self.stop.is_set():
            return
        knobs = self.knobs
        if self.spec.knob(FRAME_KNOB) is not None and FRAME_KNOB not in knobs:
            knobs = {**knobs, FRAME_KNOB: task.frame}  # a model that follows the shot
        outputs, objects = self.backend.infer(
            self.model, frames, knobs, colourspace=self.colourspace
        )
        if self.stop.is_set():  # Ctrl-C: write nothing more
            return
        missing = [name for name in task.outputs if name not in outputs]
        if missing:
            raise ModelRunError(
                f"model {self.model!r} returned no {', '.join(map(repr, missing))} "
                f"output; it returned {', '.join(map(repr, outputs)) or 'none'}"
            )
        # The sidecar goes first: once the images exist the frame counts as done.
        _write_objects(task.objects, objects)
        first = files[self.spec.inputs[0].name] if self.spec.inputs else None
        for output in self.spec.outputs:
            if output.name in task.outputs:
                pixels = self._written_colour(output.name, outputs[output.name])
                self._write(task.outputs[output.name], pixels, first, output.channel_names)
        log.info(
            "frame %d: %s in %.2f s",
            task.frame,
            ", ".join(str(p) for p in task.outputs.values()),
            time.perf_counter() - started,
        )

    def _written_colour(self, name: str, pixels: Frame) -> Frame:
        """An output in the colourspace its file is written in: its RGB converted, later
        channels (alpha, layers) copied; mattes and data outputs as they are."""
        wanted = self.output_colourspaces.get(name)
        source = self.colourspace or SCENE_LINEAR
        if wanted is None or wanted == source or pixels.shape[2] < 3:
            return pixels  # a matte or other data of one or two channels: never converted
        if self._colour is None:
            self._colour = default_manager()
        colour = self._colour
        if colour.resolve(self.spec.colourspace_out) == colour.resolve("data"):
            return pixels  # vectors, IDs, depth: values, not colours
        planar = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        converted = colour.convert(planar, source, wanted)
        return np.ascontiguousarray(converted.numpy().transpose(1, 2, 0))

    def _write(
        self,
        path: Path,
        pixels: Frame,
        source: ImageFile | None,
        channel_names: tuple[str, ...] | None,
    ) -> None:
        """Write an ``(H, W, C)`` output with the source's windows and metadata if they fit."""
        scale = None if source is None else _scale_between(source.size, pixels.shape[:2])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(
            path,
            pixels,
            layout="HWC",
            channel_names=channel_names,
            metadata=_carried(source.metadata) if source is not None and scale else None,
            data_window=_scaled(source.data_window, scale) if source and scale else None,
            display_window=_scaled(source.display_window, scale) if source and scale else None,
            pixel_type="half" if self.half and path.suffix.lower() == ".exr" else "float",
        )


def _carried(metadata: Mapping[str, object]) -> dict[str, object]:
    """The input's metadata an output keeps: all but the colourspace it was read in (the
    output is written in its own, which its writer records)."""
    return {k: v for k, v in metadata.items() if k != COLOURSPACE_ATTRIBUTE}


def _scale_between(source: tuple[int, int], output: tuple[int, ...]) -> int | None:
    """Return s when ``output`` ``(H, W)`` is s times ``source`` (1: the same size), else None."""
    (height, width), (out_height, out_width) = source, output
    if out_height % height or out_height // height * width != out_width:
        return None
    return int(out_height // height)


def _scaled(window: Window, scale: int | None) -> Window:
    """The data or display window of a frame made ``scale`` times larger (an upscaler)."""
    if not scale or scale == 1:
        return window
    x, y, width, height = window
    return (x * scale, y * scale, width * scale, height * scale)


def _fit_channels(declared: ImageSpec, image: ImageFile) -> Frame:
    """An input's ``(H, W, C)`` frame: a one-channel image is repeated to the channels the
    input declares (a new array); any other image is passed as read (no copy)."""
    if image.hwc.shape[2] == 1 and declared.channels > 1:
        return np.repeat(image.hwc, declared.channels, axis=2)
    return image.hwc


def _write_objects(path: Path, objects: list[dict[str, Any]]) -> None:
    """Write result objects as JSON, atomically; remove a stale sidecar when there are none."""
    if not objects:
        path.unlink(missing_ok=True)
        return
    text = json.dumps(objects, indent=2) + "\n"
    write_bytes_atomically(path, text.encode("utf-8"), sync=False)
