"""Reading and writing image files in frameserve's internal frame form.

A frame inside frameserve is a float32 numpy array of shape ``(C, H, W)``, C-contiguous, top
row first (row 0 is the first scanline stored in the file, as Nuke shows it). Values are the
file's values: integer formats come back normalised to 0-1 by OpenImageIO, float formats
(EXR) unchanged, no colour conversion is applied, and values above 1 are kept.

Formats and what :func:`write_image` stores:

======================  ==============================  ================================
extension               pixel type written              channels
======================  ==============================  ================================
``.exr``                float32 (or half, on request)   any number, named
``.tif`` / ``.tiff``    uint16                          any number (names not stored)
``.dpx``                uint16                          1, 3 or 4
``.png``                uint8                           1 to 4
``.jpg`` / ``.jpeg``    uint8                           1 or 3
======================  ==============================  ================================

Values going to an integer format are clipped to 0-1 (NaN to 0); every clip is logged as a
warning with the count, never done silently. Data and display windows are kept in EXR only.
Writes are atomic: the file appears complete under its final name or not at all.

Example::

    image = read_image("plate.0001.exr", channels=("R", "G", "B"))
    image.pixels.shape               # (3, 1080, 1920), float32
    write_image("out.0001.exr", image.pixels, pixel_type="half",
                data_window=image.data_window, display_window=image.display_window)
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import OpenImageIO as oiio

from frameserve.errors import ImageIOError

__all__ = ["SUPPORTED_EXTENSIONS", "ImageFile", "read_image", "write_image"]

logger = logging.getLogger(__name__)

Window = tuple[int, int, int, int]
"""A pixel window as ``(x, y, width, height)``."""


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
for :func:`read_image`; reading also accepts any other format OpenImageIO knows."""

_EXR_PIXEL_TYPES = ("float", "half")

# Attributes that describe how the source file was encoded rather than the picture; they are
# not carried, so that writing an image again (in any format) encodes it afresh.
_ENCODING_ATTRIBUTES = frozenset({"compression", "planarconfig"})
_ENCODING_PREFIXES = ("oiio:", "openexr:", "tiff:", "dpx:", "png:", "jpeg:")
_CARRIED_OIIO_ATTRIBUTES = frozenset({"oiio:ColorSpace"})  # says how to read the values

# Attributes stored as a tuple of ints whose OIIO type is not a plain int array:
# name -> (type name, number of ints).
_ATTRIBUTE_TYPES = {
    "framesPerSecond": ("rational", 2),
    "smpte:TimeCode": ("timecode", 2),
    "smpte:KeyCode": ("keycode", 7),
}

# Float32 values at or above this magnitude round to infinity when stored as half.
_HALF_OVERFLOW = 65520.0


@dataclass(frozen=True, kw_only=True, eq=False)
class ImageFile:
    """An image read from a file: pixels in the internal frame form plus what describes them.

    Attributes:
        pixels: float32 array ``(C, H, W)``, C-contiguous, top row first.
        channel_names: one name per channel of ``pixels``, e.g. ``("R", "G", "B", "A")``.
        metadata: the file's descriptive attributes (str, int, float or tuples of them),
            e.g. ``{"oiio:ColorSpace": "lin_rec709_scene", "Software": "Nuke"}``.
        data_window: ``(x, y, width, height)`` of the pixel data; ``width == W``,
            ``height == H``.
        display_window: ``(x, y, width, height)`` of the full frame (Nuke's format). Only
            EXR files have windows here; for other formats both are ``(0, 0, W, H)``.
    """

    pixels: npt.NDArray[np.float32]
    channel_names: tuple[str, ...]
    metadata: dict[str, object]
    data_window: Window
    display_window: Window


def read_image(path: str | os.PathLike[str], *, channels: Sequence[str] | None = None) -> ImageFile:
    """Read an image file into a float32 ``(C, H, W)`` frame, top row first.

    Any sample type becomes float32: 8/16-bit integer formats are normalised to 0-1, float
    and half EXR values are kept as they are. Only the first subimage (EXR part) and its
    full-resolution level are read. EXIF orientation is not applied (as in Nuke). Data and
    display windows are read from EXR files; for other formats both are ``(0, 0, W, H)``.

    Args:
        path: the file; PNG, JPEG, TIFF, EXR and DPX are tested, other formats OpenImageIO
            reads work too.
        channels: names of the channels to return, in this order (e.g. ``("R", "G", "B")``);
            ``None`` returns every channel in the file's order.

    Returns:
        An :class:`ImageFile` whose ``pixels`` has one channel per requested name.

    Raises:
        ImageIOError: the file is missing or unreadable, or a requested channel is not in it.

    Example::

        >>> image = read_image("plate.exr", channels=("R", "G", "B"))  # doctest: +SKIP
        >>> image.pixels.shape, image.pixels.dtype  # doctest: +SKIP
        ((3, 1080, 1920), dtype('float32'))
    """
    path = Path(path)
    if channels is not None:
        _check_channel_request(channels)
    if not path.exists():
        raise ImageIOError(f"cannot read image {str(path)!r}: no such file")
    if path.is_dir():
        raise ImageIOError(f"cannot read image {str(path)!r}: it is a folder, not a file")

    image_input = oiio.ImageInput.open(str(path))
    if image_input is None:
        reason = _clean_error(oiio.geterror()) or "not an image file OpenImageIO can read"
        raise ImageIOError(f"cannot read image {str(path)!r}: {reason}")
    try:
        spec = image_input.spec()
        if spec.deep:
            raise ImageIOError(f"cannot read image {str(path)!r}: deep images are not supported")
        if spec.depth > 1:
            raise ImageIOError(
                f"cannot read image {str(path)!r}: volume images (depth {spec.depth}) "
                "are not supported"
            )
        file_names = tuple(str(name) for name in spec.channelnames)
        indices = _channel_indices(path, file_names, channels)
        contiguous = indices == list(range(indices[0], indices[0] + len(indices)))
        first, last = (indices[0], indices[-1] + 1) if contiguous else (0, len(file_names))
        data = image_input.read_image(0, 0, first, last, "float")
        if data is None:
            reason = _clean_error(image_input.geterror()) or "reading the pixels failed"
            raise ImageIOError(f"cannot read image {str(path)!r}: {reason}")
        if image_input.format_name() == "openexr":  # windows are an EXR notion here
            data_window = (int(spec.x), int(spec.y), int(spec.width), int(spec.height))
            display_window = (
                int(spec.full_x),
                int(spec.full_y),
                int(spec.full_width),
                int(spec.full_height),
            )
        else:
            data_window = display_window = (0, 0, int(spec.width), int(spec.height))
        metadata = _metadata_from_spec(spec)
    finally:
        image_input.close()

    chw = np.asarray(data, dtype=np.float32).reshape(spec.height, spec.width, -1)
    chw = chw.transpose(2, 0, 1)
    if not contiguous:
        chw = chw[indices]
    pixels = np.ascontiguousarray(chw)
    names = tuple(file_names[i] for i in indices)
    logger.debug("read %s: %s %s", path, pixels.shape, ",".join(names))
    return ImageFile(
        pixels=pixels,
        channel_names=names,
        metadata=metadata,
        data_window=data_window,
        display_window=display_window,
    )


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
) -> None:
    """Write a float ``(C, H, W)`` frame to an image file, atomically, format by extension.

    EXR stores float32 (``pixel_type="half"`` for half); PNG and JPEG store uint8, TIFF and
    DPX uint16 (see the module docstring). Values outside 0-1 going to an integer format are
    clipped and NaN becomes 0, with a warning giving the counts; NaN and infinity going to EXR
    are written as they are, with a warning. The file is written under a temporary name in the
    same folder and renamed onto ``path``, so readers never see a partial file and a failed
    write leaves an existing ``path`` untouched.

    Args:
        path: the target file; its extension (one of :data:`SUPPORTED_EXTENSIONS`, any case)
            picks the format.
        pixels: float array ``(C, H, W)`` (float16, float32 or float64), top row first.
        channel_names: one name per channel; default ``("Y",)``, ``("Y", "A")``, RGB, RGBA,
            then ``R, G, B, A, channel4, ...``. Only EXR stores names.
        metadata: attributes to store (str, int, float, or tuples of one of them), e.g. the
            ``metadata`` of an :class:`ImageFile`; formats keep what they can.
        data_window: ``(x, y, width, height)`` of the pixels, width and height equal to W and
            H; default ``(0, 0, W, H)``. Stored in EXR only; other formats drop a window
            other than ``(0, 0, W, H)`` with a warning.
        display_window: ``(x, y, width, height)`` of the full frame; default the data window.
            Stored in EXR only, as for ``data_window``.
        compression: OpenImageIO's compression name, e.g. ``"zip"``, ``"piz"``, ``"dwaa"``,
            ``"none"`` for EXR or ``"jpeg:95"`` (quality) for JPEG; default the format's.
        pixel_type: ``"float"`` or ``"half"``; the sample type of an EXR. Other formats are
            always written as their integer type and accept only the default.

    Raises:
        ImageIOError: the array, channel names, windows, metadata or extension are invalid
            (the message says what is allowed), or the file could not be written.

    Example::

        >>> frame = np.zeros((3, 1080, 1920), np.float32)
        >>> write_image("out.exr", frame, pixel_type="half")  # doctest: +SKIP
    """
    path = Path(path)
    file_format = _format_for(path)
    channel_count, height, width = _check_pixels(path, pixels)
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

    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, reported below
        hwc = np.ascontiguousarray(pixels.transpose(1, 2, 0), dtype=np.float32)
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
    _write_atomically(path, spec, hwc)
    logger.debug("wrote %s: %s %s as %s", path, pixels.shape, ",".join(names), sample_type)


# -- reading helpers ---------------------------------------------------------------------------


def _clean_error(message: str) -> str:
    """Join OpenImageIO's multi-line error text into one line."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _check_channel_request(channels: Sequence[str]) -> None:
    """Reject a channel request that is not a non-empty sequence of names."""
    if isinstance(channels, str):
        raise ImageIOError(
            f"channels must be a sequence of names such as ('R', 'G', 'B'), "
            f"not the string {channels!r}"
        )
    if len(channels) == 0:
        raise ImageIOError("channels must name at least one channel, or be None for all")


def _channel_indices(
    path: Path, file_names: tuple[str, ...], channels: Sequence[str] | None
) -> list[int]:
    """Map requested channel names to their indices in the file."""
    if channels is None:
        return list(range(len(file_names)))
    missing = [name for name in channels if name not in file_names]
    if missing:
        raise ImageIOError(
            f"cannot read image {str(path)!r}: no channel named "
            f"{', '.join(repr(name) for name in missing)}; the file has "
            f"{', '.join(repr(name) for name in file_names)}"
        )
    return [file_names.index(name) for name in channels]


def _metadata_from_spec(spec: Any) -> dict[str, object]:
    """Collect the descriptive attributes of an ImageSpec as plain Python values."""
    metadata: dict[str, object] = {}
    for attribute in spec.extra_attribs:
        name = str(attribute.name)
        if name in _ENCODING_ATTRIBUTES or (
            name.startswith(_ENCODING_PREFIXES) and name not in _CARRIED_OIIO_ATTRIBUTES
        ):
            continue
        try:
            value = attribute.value
        except Exception:  # an attribute type the Python binding cannot convert
            logger.debug("skipping attribute %r of unsupported type %s", name, attribute.type)
            continue
        if isinstance(value, str | int | float) or (
            isinstance(value, tuple) and all(isinstance(v, str | int | float) for v in value)
        ):
            metadata[name] = value
    return metadata


# -- writing helpers ---------------------------------------------------------------------------


def _format_for(path: Path) -> _Format:
    """Pick the file format from the extension."""
    extension = path.suffix.lower()
    if extension not in _FORMATS:
        raise ImageIOError(
            f"cannot write {str(path)!r}: unsupported extension {extension or '(none)'!r}; "
            f"use one of {', '.join(sorted(SUPPORTED_EXTENSIONS))}"
        )
    return _FORMATS[extension]


def _check_pixels(path: Path, pixels: object) -> tuple[int, int, int]:
    """Check that pixels is a float (C, H, W) array and return (C, H, W)."""
    if not isinstance(pixels, np.ndarray):
        raise ImageIOError(
            f"cannot write {str(path)!r}: expected a float numpy array (C, H, W), "
            f"got {type(pixels).__name__}"
        )
    if pixels.ndim != 3 or not np.issubdtype(pixels.dtype, np.floating) or 0 in pixels.shape:
        raise ImageIOError(
            f"cannot write {str(path)!r}: expected a float array (C, H, W) with no empty axis, "
            f"got shape {pixels.shape} dtype {pixels.dtype}"
        )
    channels, height, width = pixels.shape
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
    """Warn about values the file cannot hold; clip them for integer formats (a new array)."""
    nan_count = int(np.count_nonzero(np.isnan(hwc)))
    inf_count = int(np.count_nonzero(np.isinf(hwc)))
    if sample_type in ("float", "half"):
        if nan_count or inf_count:
            logger.warning(
                "writing %s: %d NaN and %d infinite values of %d are written as they are",
                path,
                nan_count,
                inf_count,
                hwc.size,
            )
        if sample_type == "half":
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
    below = int(np.count_nonzero(hwc < 0.0))
    above = int(np.count_nonzero(hwc > 1.0))
    if not (below or above or nan_count):
        return hwc
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


def _write_atomically(path: Path, spec: Any, hwc: npt.NDArray[np.float32]) -> None:
    """Write hwc (H, W, C) under a temporary name beside path, then rename it onto path."""
    temporary = path.parent / f".{path.stem}.tmp-{secrets.token_hex(6)}{path.suffix}"
    image_output = oiio.ImageOutput.create(str(temporary))
    if image_output is None:
        reason = _clean_error(oiio.geterror()) or "no writer for this format"
        raise ImageIOError(f"cannot write {str(path)!r}: {reason}")
    opened = False
    try:
        opened = bool(image_output.open(str(temporary), spec))
        written = opened and bool(image_output.write_image(hwc))
        closed = opened and bool(image_output.close())
        opened = opened and not closed
        if not (written and closed):
            reason = _clean_error(image_output.geterror()) or "OpenImageIO gave no reason"
            raise ImageIOError(f"cannot write {str(path)!r}: {reason}")
        try:
            os.replace(temporary, path)
        except OSError as exc:
            raise ImageIOError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    except BaseException:
        if opened:
            image_output.close()
        temporary.unlink(missing_ok=True)
        raise
