"""Translation between MLClient messages and frameserve's own types.

- the ``Model`` of an inference request → the knob values it sent;
- wire images (float32 little-endian, planar, rows bottom to top) ↔ internal frames
  (float32 ``(C, H, W)`` tensors, top row first);
- result objects → ``FieldValuePairAttrib`` messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from frameserve.errors import FrameError, KnobError
from frameserve.plugin.frames import MAX_DIMENSION
from frameserve.plugin.knobs import KNOB_KINDS
from frameserve.plugin.model import MAX_CHANNELS
from frameserve.plugin.results import ResultObject
from frameserve.serve.mlclient import messages as pb
from frameserve.serve.mlclient.wirecodec import WireImage, WirePixels

__all__ = [
    "check_wire_image",
    "frame_from_wire",
    "frame_to_wire",
    "object_message",
    "sent_knobs",
]

_WIRE_FLOAT = np.dtype("<f4")
_PARALLEL_COPY_BYTES = 4 << 20
_COPY_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlclient-copy")
# option list of the Model message -> the option kind it holds (every kind a knob travels as)
_OPTION_LISTS = tuple(
    dict.fromkeys((f"{cls.wire_kind}_options", cls.wire_kind) for cls in KNOB_KINDS.values())
)


def sent_knobs(model: Any) -> dict[str, object]:
    """Return the knob values an inference request's ``Model`` message carries.

    Raises:
        KnobError: an option without exactly one value, or a knob sent twice.
    """
    values: dict[str, object] = {}
    for list_name, kind in _OPTION_LISTS:
        for option in getattr(model, list_name):
            if len(option.values) != 1:
                raise KnobError(
                    f"knob {option.name!r}: a {kind} option must carry exactly one value, "
                    f"got {len(option.values)}"
                )
            if option.name in values:
                raise KnobError(f"knob {option.name!r} is sent twice")
            value = option.values[0]
            values[option.name] = float(value) if kind == "float" else value
    for choice in model.mc_options:
        # Only clients that understand menus send these; the string option wins if both came.
        if choice.name not in values and choice.HasField("value"):
            values[choice.name] = choice.value
    return values


def check_wire_image(image: WireImage, *, what: str, max_pixels: int | None = None) -> None:
    """Check an image's sizes and byte count, from what it declares (nothing is allocated).

    Args:
        image: the image as decoded from the request.
        what: how messages name it (``"image 0"``).
        max_pixels: the most pixels (width × height) accepted (``--max-frame-pixels``);
            ``None``: only :data:`~frameserve.plugin.frames.MAX_DIMENSION` applies.

    Raises:
        FrameError: sizes that are zero, negative or too large, or a byte count that is not
            width × height × channels × 4.
    """
    width, height, channels = image.width, image.height, image.channels
    for name, value in (("width", width), ("height", height), ("channels", channels)):
        if value < 1:
            raise FrameError(f"{what}: {name} must be at least 1, got {value}")
    if width > MAX_DIMENSION or height > MAX_DIMENSION:
        raise FrameError(
            f"{what}: {width}x{height} is larger than the largest frame accepted, "
            f"{MAX_DIMENSION}x{MAX_DIMENSION}"
        )
    if max_pixels is not None and width * height > max_pixels:
        raise FrameError(
            f"{what}: {width}x{height} is {width * height} pixels, above the limit of "
            f"{max_pixels} pixels per frame (--max-frame-pixels)"
        )
    if channels > MAX_CHANNELS:
        raise FrameError(f"{what}: {channels} channels; at most {MAX_CHANNELS} are accepted")
    expected = width * height * channels * 4
    if image.nbytes != expected:
        raise FrameError(
            f"{what}: {width}x{height} with {channels} channel(s) of float32 needs {expected} "
            f"bytes, the image holds {image.nbytes}"
        )


def frame_from_wire(
    body: np.ndarray,
    image: WireImage,
    *,
    what: str,
    allocate: Callable[[int, int, int], np.ndarray] | None = None,
) -> torch.Tensor:
    """Return the internal frame for ``image``, whose pixels are a slice of ``body``.

    Copies once: the bottom-to-top rows are flipped into a new top-row-first tensor, in a
    buffer from ``allocate(channels, height, width)`` (the engine's, so that the frame reaches
    a worker process without another copy), or a plain numpy one.

    Raises:
        FrameError: sizes that are zero, negative or too large, or a byte count that is not
            width × height × channels × 4.
    """
    check_wire_image(image, what=what)
    width, height, channels = image.width, image.height, image.channels
    planes = np.frombuffer(
        body, dtype=_WIRE_FLOAT, count=width * height * channels, offset=image.start
    ).reshape(channels, height, width)
    # numpy's allocator reuses large blocks; torch.empty page-faults a fresh block each time.
    if allocate is None:
        pixels = np.empty((channels, height, width), dtype=np.float32)
    else:
        pixels = allocate(channels, height, width)
    _copy_flipped(pixels, planes)
    return torch.from_numpy(pixels)


def _copy_flipped(target: np.ndarray, planes: np.ndarray) -> None:
    """Copy ``planes`` into ``target`` with the rows reversed, in parallel for big frames.

    numpy releases the GIL while copying, so two halves copy at once on two cores.
    """
    height = planes.shape[1]
    if target.nbytes < _PARALLEL_COPY_BYTES or height < 2:
        np.copyto(target, planes[:, ::-1, :])
        return
    half = height // 2
    # target rows [0, half) come from source rows [height - 1, height - half - 1)
    other = _COPY_POOL.submit(np.copyto, target[:, :half], planes[:, height - half :][:, ::-1])
    np.copyto(target[:, half:], planes[:, : height - half][:, ::-1])
    other.result()


def frame_to_wire(frame: torch.Tensor) -> WirePixels:
    """Return ``frame``'s pixels as wire rows: float32 little-endian, planar, bottom row first.

    The rows are views of the frame (gathered by the socket write), not a copy; a frame that
    is not contiguous, or not float32 little-endian, is copied once first.
    """
    pixels = np.ascontiguousarray(frame.detach().cpu().numpy(), dtype=_WIRE_FLOAT)
    channels, height, width = pixels.shape
    flat = pixels.reshape(-1).view(np.uint8).data
    row = width * 4
    plane = height * row
    views = [
        flat[start : start + row]
        for c in range(channels)
        for start in range(c * plane + (height - 1) * row, c * plane - 1, -row)
    ]
    return WirePixels(pixels.nbytes, views)


def object_message(obj: ResultObject) -> Any:
    """Return ``obj`` as a ``FieldValuePairAttrib`` message."""
    message = pb.FieldValuePairAttrib(name=obj.name)
    for record in obj.records:
        pair = message.values.add()
        for key, value in record.items():
            _add_field(pair, key, value)
    return message


def _add_field(pair: Any, key: str, value: object) -> None:
    items: Sequence[object] = value if isinstance(value, tuple) else (value,)
    first = items[0] if items else 0.0
    if isinstance(first, ResultObject):
        for child in items:
            assert isinstance(child, ResultObject)
            pair.children.append(object_message(child))
            pair.children[-1].name = key
    elif all(isinstance(v, bool | int) for v in items):
        pair.int_attributes.add(name=key, values=[int(v) for v in items])  # type: ignore[call-overload]
    elif all(isinstance(v, bool | int | float) for v in items):
        pair.float_attributes.add(name=key, values=[float(v) for v in items])  # type: ignore[arg-type]
    else:
        pair.string_attributes.add(name=key, values=list(items))
