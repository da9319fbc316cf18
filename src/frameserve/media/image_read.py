"""Reading image files: :func:`read_image` and the :class:`ImageFile` it returns.

The pixels are kept as the file stores them, interleaved ``(H, W, C)`` (:attr:`ImageFile.hwc`),
because that is also the order of the HTTP wire and of every writer: a frame read here can be
sent or written again without a layout copy. The internal frame form ``(C, H, W)`` is made on
first use (:attr:`ImageFile.pixels`, one copy) or viewed without a copy
(:meth:`ImageFile.chw_view`). See :mod:`frameserve.media.imageio` for the formats.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import OpenImageIO as oiio

from frameserve.errors import ImageIOError

__all__ = ["ImageFile", "Window", "clean_error", "read_image"]

logger = logging.getLogger(__name__)

Window = tuple[int, int, int, int]
"""A pixel window as ``(x, y, width, height)``."""

# Attributes that describe how the source file was encoded rather than the picture; they are
# not carried, so that writing an image again (in any format) encodes it afresh.
_ENCODING_ATTRIBUTES = frozenset({"compression", "planarconfig"})
_ENCODING_PREFIXES = ("oiio:", "openexr:", "tiff:", "dpx:", "png:", "jpeg:")
_CARRIED_OIIO_ATTRIBUTES = frozenset({"oiio:ColorSpace"})  # says how to read the values


@dataclass(frozen=True, kw_only=True, eq=False)
class ImageFile:
    """An image read from a file: its pixels as stored, plus what describes them.

    Attributes:
        hwc: float32 array ``(H, W, C)``, C-contiguous, top row first: the pixels in the
            file's own (interleaved) order. Send it over HTTP or write it with
            ``write_image(..., layout="HWC")`` without a copy.
        channel_names: one name per channel, e.g. ``("R", "G", "B", "A")``.
        metadata: the file's descriptive attributes (str, int, float or tuples of them),
            e.g. ``{"oiio:ColorSpace": "lin_rec709_scene", "Software": "Nuke"}``.
        data_window: ``(x, y, width, height)`` of the pixel data; ``width == W``,
            ``height == H``.
        display_window: ``(x, y, width, height)`` of the full frame (Nuke's format). Only
            EXR files have windows here; for other formats both are ``(0, 0, W, H)``.
    """

    hwc: npt.NDArray[np.float32]
    channel_names: tuple[str, ...]
    metadata: dict[str, object]
    data_window: Window
    display_window: Window

    @property
    def pixels(self) -> npt.NDArray[np.float32]:
        """The pixels in the internal frame form: float32 ``(C, H, W)``, C-contiguous.

        Made from :attr:`hwc` on first use (one copy) and kept.
        """
        made = self.__dict__.get("_pixels")
        if made is None:  # two threads may both make it: harmless, and no lock to wait on
            made = np.ascontiguousarray(self.chw_view())
            self.__dict__["_pixels"] = made  # frozen: kept beside the fields, not as one
        return made  # type: ignore[no-any-return]

    def chw_view(self) -> npt.NDArray[np.float32]:
        """A ``(C, H, W)`` view of :attr:`hwc`: no copy, not contiguous (strides of HWC)."""
        return self.hwc.transpose(2, 0, 1)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return int(self.hwc.shape[0]), int(self.hwc.shape[1])


def read_image(path: str | os.PathLike[str], *, channels: Sequence[str] | None = None) -> ImageFile:
    """Read an image file; its pixels become float32, top row first.

    Any sample type becomes float32: 8/16-bit integer formats are normalised to 0-1, float
    and half EXR values are kept as they are. Only the first subimage (EXR part) and its
    full-resolution level are read. EXIF orientation is not applied (as in Nuke). Data and
    display windows are read from EXR files; for other formats both are ``(0, 0, W, H)``.

    Args:
        path: the file; PNG, JPEG, TIFF, EXR and DPX are tested, other formats OpenImageIO
            reads work too.
        channels: names of the channels to return, in this order (e.g. ``("R", "G", "B")``);
            ``None`` returns every channel in the file's order. Neighbouring channels in
            file order are read alone; any other choice reads every channel and picks.

    Returns:
        An :class:`ImageFile` with one channel per requested name: ``hwc`` ``(H, W, C)`` as
        read, ``pixels`` ``(C, H, W)`` when asked for.

    Raises:
        ImageIOError: the file is missing or unreadable, or a requested channel is not in it.

    Example::

        >>> image = read_image("plate.exr", channels=("R", "G", "B"))  # doctest: +SKIP
        >>> image.hwc.shape, image.pixels.shape, image.pixels.dtype  # doctest: +SKIP
        ((1080, 1920, 3), (3, 1080, 1920), dtype('float32'))
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
        reason = clean_error(oiio.geterror()) or "not an image file OpenImageIO can read"
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
            reason = clean_error(image_input.geterror()) or "reading the pixels failed"
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

    # OpenImageIO hands back a new (H, W, C) float32 array: kept as it is, no copy.
    hwc = np.asarray(data, dtype=np.float32).reshape(spec.height, spec.width, -1)
    if not contiguous:
        hwc = hwc[:, :, indices]  # a gather: the one copy of a scattered channel choice
    hwc = np.ascontiguousarray(hwc)
    names = tuple(file_names[i] for i in indices)
    logger.debug("read %s: %s %s", path, hwc.shape, ",".join(names))
    return ImageFile(
        hwc=hwc,
        channel_names=names,
        metadata=metadata,
        data_window=data_window,
        display_window=display_window,
    )


def clean_error(message: str) -> str:
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
