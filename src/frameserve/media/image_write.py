"""Writing image files: :func:`write_image`, atomically, in the format the extension names.

A frame is written from either layout: ``(C, H, W)`` (the internal frame form, the default)
or ``(H, W, C)`` (``layout="HWC"``: the order files and the HTTP wire use, as in
:attr:`~frameserve.media.image_read.ImageFile.hwc`). OpenImageIO takes interleaved,
C-contiguous and aligned float32 pixels, so such an ``(H, W, C)`` frame is written from its
own memory, and anything else is converted once. The value checks (NaN,
infinity, clipping, half overflow) read the pixels without copying them; only values that
must be clipped for an integer format are copied. See :mod:`frameserve.media.imageio` for the
formats.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import OpenImageIO as oiio

from frameserve.errors import ImageIOError
from frameserve.media.atomic import atomic_path
from frameserve.media.image_read import Window, clean_error

__all__ = ["LAYOUTS", "SUPPORTED_EXTENSIONS", "Layout", "write_image"]

logger = logging.getLogger(__name__)

Layout = Literal["CHW", "HWC"]
"""The axis order of a frame handed to :func:`write_image`."""
LAYOUTS: tuple[Layout, ...] = ("CHW", "HWC")


@dataclass(frozen=True)
class _Format:
    """How frameserve writes one file format."""

    name: str
    pixel_type: str  # OIIO type name of the stored samples ("float" for EXR is a default)
    channel_counts: tuple[int, ...] | None  # None: any number of channels


_EXR = _Format("EXR", "float", None)
_TIFF = _Format("TIFF", "uint16", None)
_FORMATS: dict[str, _Format] = {
    ".exr": _EXR,
    ".tif": _TIFF,
    ".tiff": _TIFF,
    ".dpx": _Format("DPX", "uint16", (1, 3, 4)),
    ".png": _Format("PNG", "uint8", (1, 2, 3, 4)),
    ".jpg": _Format("JPEG", "uint8", (1, 3)),
    ".jpeg": _Format("JPEG", "uint8", (1, 3)),
}

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_FORMATS)
"""Lower-case extensions (with the dot) that :func:`write_image` writes and that are tested
for :func:`~frameserve.media.image_read.read_image`; reading also accepts any other format
OpenImageIO knows."""

_EXR_PIXEL_TYPES = ("float", "half")

# Attributes stored as a tuple of ints whose OIIO type is not a plain int array:
# name -> (type name, number of ints).
_ATTRIBUTE_TYPES = {
    "framesPerSecond": ("rational", 2),
    "smpte:TimeCode": ("timecode", 2),
    "smpte:KeyCode": ("keycode", 7),
}

# Float32 values at or above this magnitude round to infinity when stored as half.
_HALF_OVERFLOW = 65520.0


def write_image(
    path: str | os.PathLike[str],
    pixels: npt.NDArray[np.floating[Any]],
    *,
    channel_names: Sequence[str] | None = None,
    metadata: Mapping[str, object] | None = None,
    data_window: Window | None = None,
    display_window: Window | None = None,
    compression: str | None = None,
    pixel_type: str = "float",
    layout: Layout = "CHW",
) -> None:
    """Write a float frame to an image file, atomically, format by extension.

    EXR stores float32 (``pixel_type="half"`` for half); PNG and JPEG store uint8, TIFF and
    DPX uint16 (see :mod:`frameserve.media.imageio`). Values outside 0-1 going to an integer
    format are clipped and NaN becomes 0, with a warning giving the counts; NaN and infinity
    going to EXR are written as they are, with a warning. The file is written under a
    temporary name in the same folder and renamed onto ``path``
    (:func:`frameserve.media.atomic.atomic_path`), so readers never see a partial file and a
    failed write leaves an existing ``path`` untouched.

    Args:
        path: the target file; its extension (one of :data:`SUPPORTED_EXTENSIONS`, any case)
            picks the format.
        pixels: float array (float16, float32 or float64), top row first, ``(C, H, W)`` or,
            with ``layout="HWC"``, ``(H, W, C)``. A C-contiguous, aligned float32
            ``(H, W, C)`` array is written without a copy; the caller's array is never
            changed.
        channel_names: one name per channel; default ``("Y",)``, ``("Y", "A")``, RGB, RGBA,
            then ``R, G, B, A, channel4, ...``. Only EXR stores names.
        metadata: attributes to store (str, int, float, or tuples of one of them), e.g. the
            ``metadata`` of an :class:`~frameserve.media.image_read.ImageFile`; formats keep
            what they can.
        data_window: ``(x, y, width, height)`` of the pixels, width and height equal to W and
            H; default ``(0, 0, W, H)``. Stored in EXR only; other formats drop a window
            other than ``(0, 0, W, H)`` with a warning.
        display_window: ``(x, y, width, height)`` of the full frame; default the data window.
            Stored in EXR only, as for ``data_window``.
        compression: OpenImageIO's compression name, e.g. ``"zip"``, ``"piz"``, ``"dwaa"``,
            ``"none"`` for EXR or ``"jpeg:95"`` (quality) for JPEG; default the format's.
        pixel_type: ``"float"`` or ``"half"``; the sample type of an EXR. Other formats are
            always written as their integer type and accept only the default.
        layout: ``"CHW"`` (default) or ``"HWC"``: the axis order of ``pixels``.

    Raises:
        ImageIOError: the array, layout, channel names, windows, metadata or extension are
            invalid (the message says what is allowed), or the file could not be written.

    Example::

        >>> frame = np.zeros((3, 1080, 1920), np.float32)
        >>> write_image("out.exr", frame, pixel_type="half")  # doctest: +SKIP
        >>> image = read_image("plate.exr")  # doctest: +SKIP
        >>> write_image("copy.exr", image.hwc, layout="HWC")  # doctest: +SKIP
    """
    path = Path(path)
    file_format = _format_for(path)
    channel_count, height, width = _check_pixels(path, pixels, layout)
    names = _channel_names(path, channel_count, channel_names)
    sample_type = _sample_type(path, file_format, pixel_type)
    if file_format.channel_counts is not None and channel_count not in file_format.channel_counts:
        allowed = ", ".join(str(count) for count in file_format.channel_counts)
        raise ImageIOError(
            f"cannot write {str(path)!r}: {file_format.name} stores {allowed} channels, "
            f"the frame has {channel_count}; drop or add channels, or write EXR or TIFF"
        )
    data_window = _check_window(path, "data_window", data_window, (0, 0, width, height))
    if data_window[2:] != (width, height):
        raise ImageIOError(
            f"cannot write {str(path)!r}: data_window {data_window} must have the frame's "
            f"width and height ({width}, {height})"
        )
    display_window = _check_window(path, "display_window", display_window, data_window)
    attributes = _check_metadata(path, metadata)
    if not path.parent.is_dir():
        raise ImageIOError(
            f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist"
        )

    interleaved = pixels if layout == "HWC" else pixels.transpose(1, 2, 0)
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, reported below
        # The one copy, if any: OpenImageIO takes C-contiguous, aligned float32 only.
        hwc = np.require(interleaved, np.float32, ("C_CONTIGUOUS", "ALIGNED"))
    hwc = _prepare_values(path, hwc, file_format, sample_type)

    spec = oiio.ImageSpec(width, height, channel_count, sample_type)
    spec.channelnames = names
    for name, (type_name, value) in attributes.items():
        spec.attribute(name, oiio.TypeDesc(type_name), value)
    if compression is not None:
        spec.attribute("compression", compression)
    if file_format is _EXR:
        spec.x, spec.y = data_window[0], data_window[1]
        spec.full_x, spec.full_y, spec.full_width, spec.full_height = display_window
    elif data_window != (0, 0, width, height) or display_window != data_window:
        logger.warning(
            "writing %s: %s does not store data and display windows; data window %s and "
            "display window %s are dropped",
            path,
            file_format.name,
            data_window,
            display_window,
        )
    _write_file(path, spec, hwc)
    logger.debug("wrote %s: %s %s as %s", path, hwc.shape, ",".join(names), sample_type)


# -- checks ------------------------------------------------------------------------------------


def _format_for(path: Path) -> _Format:
    """Pick the file format from the extension."""
    extension = path.suffix.lower()
    if extension not in _FORMATS:
        raise ImageIOError(
            f"cannot write {str(path)!r}: unsupported extension {extension or '(none)'!r}; "
            f"use one of {', '.join(sorted(SUPPORTED_EXTENSIONS))}"
        )
    return _FORMATS[extension]


def _check_pixels(path: Path, pixels: object, layout: str) -> tuple[int, int, int]:
    """Check that pixels is a float array in ``layout`` and return (C, H, W)."""
    if layout not in LAYOUTS:
        raise ImageIOError(
            f"cannot write {str(path)!r}: layout {layout!r} is not one of "
            f"{', '.join(repr(name) for name in LAYOUTS)}"
        )
    form = "(C, H, W)" if layout == "CHW" else "(H, W, C)"
    if not isinstance(pixels, np.ndarray):
        raise ImageIOError(
            f"cannot write {str(path)!r}: expected a float numpy array {form}, "
            f"got {type(pixels).__name__}"
        )
    if pixels.ndim != 3 or not np.issubdtype(pixels.dtype, np.floating) or 0 in pixels.shape:
        raise ImageIOError(
            f"cannot write {str(path)!r}: expected a float array {form} with no empty axis, "
            f"got shape {pixels.shape} dtype {pixels.dtype}"
        )
    if layout == "CHW":
        channels, height, width = pixels.shape
    else:
        height, width, channels = pixels.shape
    return int(channels), int(height), int(width)


def _channel_names(
    path: Path, channel_count: int, channel_names: Sequence[str] | None
) -> tuple[str, ...]:
    """Return the given channel names after checking them, or the defaults for the count."""
    if channel_names is None:
        if channel_count == 1:
            return ("Y",)
        if channel_count == 2:
            return ("Y", "A")
        standard = ("R", "G", "B", "A")
        return standard[:channel_count] + tuple(
            f"channel{index}" for index in range(4, channel_count)
        )
    if isinstance(channel_names, str):
        raise ImageIOError(
            f"cannot write {str(path)!r}: channel_names must be a sequence of names such as "
            f"('R', 'G', 'B'), not the string {channel_names!r}"
        )
    names = tuple(channel_names)
    if len(names) != channel_count:
        raise ImageIOError(
            f"cannot write {str(path)!r}: {len(names)} channel names {names} for a frame "
            f"with {channel_count} channels"
        )
    if not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
        raise ImageIOError(
            f"cannot write {str(path)!r}: channel names must be distinct non-empty strings, "
            f"got {names}"
        )
    return names


def _sample_type(path: Path, file_format: _Format, pixel_type: str) -> str:
    """Return the OIIO sample type to store, checking pixel_type against the format."""
    if pixel_type not in _EXR_PIXEL_TYPES:
        raise ImageIOError(
            f"cannot write {str(path)!r}: pixel_type {pixel_type!r} is not one of "
            f"{', '.join(repr(t) for t in _EXR_PIXEL_TYPES)}"
        )
    if file_format is _EXR:
        return pixel_type
    if pixel_type != "float":
        raise ImageIOError(
            f"cannot write {str(path)!r}: pixel_type {pixel_type!r} applies to EXR only; "
            f"{file_format.name} is written as {file_format.pixel_type}"
        )
    return file_format.pixel_type


def _check_window(path: Path, label: str, window: Sequence[int] | None, default: Window) -> Window:
    """Return window as four ints (x, y, width, height) with a positive size, or default."""
    if window is None:
        return default
    try:
        x, y, width, height = (int(v) for v in window)
    except (TypeError, ValueError):
        raise ImageIOError(
            f"cannot write {str(path)!r}: {label} must be four integers "
            f"(x, y, width, height), got {window!r}"
        ) from None
    if width <= 0 or height <= 0:
        raise ImageIOError(
            f"cannot write {str(path)!r}: {label} {window!r} must have a positive width and height"
        )
    return (x, y, width, height)


def _check_metadata(
    path: Path, metadata: Mapping[str, object] | None
) -> dict[str, tuple[str, object]]:
    """Map each metadata entry to (OIIO type name, value), rejecting values OIIO cannot store."""
    attributes: dict[str, tuple[str, object]] = {}
    for name, value in (metadata or {}).items():
        type_name = _attribute_type(value)
        if type_name is None or not isinstance(name, str) or not name:
            raise ImageIOError(
                f"cannot write {str(path)!r}: metadata {name!r} has a value of type "
                f"{type(value).__name__}; allowed are str, int, float and tuples of one of them"
            )
        if name in _ATTRIBUTE_TYPES:
            special_type, length = _ATTRIBUTE_TYPES[name]
            if type_name == f"int[{length}]":
                type_name = special_type
        if type_name.startswith("float["):
            value = tuple(float(v) for v in value)  # type: ignore[attr-defined]
        elif isinstance(value, list):
            value = tuple(value)
        attributes[name] = (type_name, value)
    return attributes


def _attribute_type(value: object) -> str | None:
    """Return the OIIO type name for a metadata value, or None when it cannot be stored."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if not isinstance(value, tuple | list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return f"string[{len(value)}]"
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
        return None
    if all(isinstance(v, int) for v in value):
        return f"int[{len(value)}]"
    return f"float[{len(value)}]"


def _prepare_values(
    path: Path, hwc: npt.NDArray[np.float32], file_format: _Format, sample_type: str
) -> npt.NDArray[np.float32]:
    """Warn about values the file cannot hold; clip them for integer formats (a new array).

    Two reductions (minimum and maximum, NaN spreading through both) tell whether anything
    needs a closer look; only then are the values counted.
    """
    low, high = float(hwc.min()), float(hwc.max())
    if sample_type in ("float", "half"):
        if not (math.isfinite(low) and math.isfinite(high)):
            nan_count = int(np.count_nonzero(np.isnan(hwc)))
            inf_count = int(np.count_nonzero(np.isinf(hwc)))
            logger.warning(
                "writing %s: %d NaN and %d infinite values of %d are written as they are",
                path,
                nan_count,
                inf_count,
                hwc.size,
            )
        if sample_type == "half" and not max(-low, high) < _HALF_OVERFLOW:
            overflow = int(np.count_nonzero(np.isfinite(hwc) & (np.abs(hwc) >= _HALF_OVERFLOW)))
            if overflow:
                logger.warning(
                    "writing %s as half: %d values of %d are beyond the half range ±65504 and "
                    "become infinite",
                    path,
                    overflow,
                    hwc.size,
                )
        return hwc
    if low >= 0.0 and high <= 1.0:  # false for NaN
        return hwc
    nan_count = int(np.count_nonzero(np.isnan(hwc)))
    inf_count = int(np.count_nonzero(np.isinf(hwc)))
    below = int(np.count_nonzero(hwc < 0.0))
    above = int(np.count_nonzero(hwc > 1.0))
    logger.warning(
        "writing %s as %s %s: %d of %d values clipped to the range [0, 1] (%d below 0, "
        "%d above 1, %d of these infinite) and %d NaN values written as 0",
        path,
        sample_type,
        file_format.name,
        below + above,
        hwc.size,
        below,
        above,
        inf_count,
        nan_count,
    )
    clipped = np.nan_to_num(hwc, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(clipped, 0.0, 1.0, out=clipped)
    return clipped


def _write_file(path: Path, spec: Any, hwc: npt.NDArray[np.float32]) -> None:
    """Write ``hwc`` ``(H, W, C)`` under a temporary name beside path, then rename it there."""
    try:
        with atomic_path(path, sync=False) as temporary:
            image_output = oiio.ImageOutput.create(str(temporary))
            if image_output is None:
                reason = clean_error(oiio.geterror()) or "no writer for this format"
                raise ImageIOError(f"cannot write {str(path)!r}: {reason}")
            opened = False
            try:
                opened = bool(image_output.open(str(temporary), spec))
                written = opened and bool(image_output.write_image(hwc))
                closed = opened and bool(image_output.close())
                opened = opened and not closed
                if not (written and closed):
                    reason = clean_error(image_output.geterror()) or "OpenImageIO gave no reason"
                    raise ImageIOError(f"cannot write {str(path)!r}: {reason}")
            finally:
                if opened:
                    image_output.close()
    except OSError as exc:  # the rename (the temporary file is gone already)
        raise ImageIOError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
