"""Reading image files: :func:`read_image` and the :class:`ImageFile` it returns.

The pixels are kept as the file stores them, interleaved ``(H, W, C)`` (:attr:`ImageFile.hwc`),
because that is also the order of the HTTP wire and of every writer: a frame read here can be
sent or written again without a layout copy. The internal frame form ``(C, H, W)`` is made on
first use (:attr:`ImageFile.pixels`, one copy) or viewed without a copy
(:meth:`ImageFile.chw_view`). See :mod:`frameserve.media.imageio` for the formats.

Before decoding a file someone else named, check what it would take: :func:`read_image_header`
reads the header only (size and channels, no pixel), and :func:`verify_image` decodes every
pixel in bands of rows, keeping none, to tell whether a file is usable without holding it::

    header = read_image_header("upload.png")     # ImageHeader(width=8000, height=8000, ...)
    if header.pixels > limit: ...                # refused before a pixel is decoded
    verify_image("upload.png")                   # ImageIOError if any pixel cannot be read
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

__all__ = [
    "ImageFile",
    "ImageHeader",
    "Window",
    "clean_error",
    "read_image",
    "read_image_header",
    "verify_image",
]

logger = logging.getLogger(__name__)

Window = tuple[int, int, int, int]
"""A pixel window as ``(x, y, width, height)``."""

# Attributes that describe how the source file was encoded rather than the picture; they are
# not carried, so that writing an image again (in any format) encodes it afresh.
_ENCODING_ATTRIBUTES = frozenset({"compression", "planarconfig"})
_ENCODING_PREFIXES = ("oiio:", "openexr:", "tiff:", "dpx:", "png:", "jpeg:")
_CARRIED_OIIO_ATTRIBUTES = frozenset({"oiio:ColorSpace"})  # says how to read the values
#: Rows :func:`verify_image` decodes at a time.
_VERIFY_ROWS = 64


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
        sample_type: how the file stores a sample: ``"uint8"``, ``"uint16"``, ``"half"``,
            ``"float"``... (the values are float32 here whatever it is).
        format_name: OpenImageIO's name of the file format (``"png"``, ``"openexr"``...).
    """

    hwc: npt.NDArray[np.float32]
    channel_names: tuple[str, ...]
    metadata: dict[str, object]
    data_window: Window
    display_window: Window
    sample_type: str = "float"
    format_name: str = ""

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
        sample_type = str(spec.format)
        format_name = str(image_input.format_name())
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
        sample_type=sample_type,
        format_name=format_name,
    )


@dataclass(frozen=True, kw_only=True)
class ImageHeader:
    """What an image file's header says, read without decoding a pixel.

    Attributes:
        width / height: the size of the pixel data (an EXR's data window), as
            :func:`read_image` would return it.
        channel_names: one name per channel, in file order.
        format_name: OpenImageIO's name of the format (``"png"``, ``"openexr"``...).
    """

    width: int
    height: int
    channel_names: tuple[str, ...]
    format_name: str

    @property
    def pixels(self) -> int:
        """``width * height``."""
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Bytes :func:`read_image` takes for every channel of it (float32)."""
        return self.pixels * len(self.channel_names) * 4


def read_image_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Read an image file's header only: its size and channels, without decoding a pixel.

    Only the first subimage (EXR part) is looked at, as :func:`read_image` reads it.

    Raises:
        ImageIOError: the file is missing, not an image OpenImageIO reads, deep or a volume.

    Example::

        >>> read_image_header("plate.exr").pixels  # doctest: +SKIP
        2073600
    """
    path = Path(path)
    image_input = _open(path)
    try:
        spec = _checked_spec(path, image_input)
        return ImageHeader(
            width=int(spec.width),
            height=int(spec.height),
            channel_names=tuple(str(name) for name in spec.channelnames),
            format_name=str(image_input.format_name()),
        )
    finally:
        image_input.close()


def verify_image(path: str | os.PathLike[str]) -> ImageHeader:
    """Decode every pixel of an image file, a band of rows at a time, keeping none.

    Tells whether a file is usable while holding only one band (64 rows) of it; returns its
    header.

    Raises:
        ImageIOError: the file is missing or unreadable, or some pixels cannot be decoded
            (a file cut short).
    """
    path = Path(path)
    image_input = _open(path)
    try:
        spec = _checked_spec(path, image_input)
        channels = int(spec.nchannels)
        for top in range(int(spec.y), int(spec.y) + int(spec.height), _VERIFY_ROWS):
            bottom = min(top + _VERIFY_ROWS, int(spec.y) + int(spec.height))
            if image_input.read_scanlines(0, 0, top, bottom, 0, 0, channels, "float") is None:
                reason = clean_error(image_input.geterror()) or "reading the pixels failed"
                raise ImageIOError(f"cannot read image {str(path)!r}: {reason}")
        return ImageHeader(
            width=int(spec.width),
            height=int(spec.height),
            channel_names=tuple(str(name) for name in spec.channelnames),
            format_name=str(image_input.format_name()),
        )
    finally:
        image_input.close()


def _open(path: Path) -> Any:
    """Open ``path`` with OpenImageIO (reads the header), or raise :class:`ImageIOError`."""
    if not path.exists():
        raise ImageIOError(f"cannot read image {str(path)!r}: no such file")
    if path.is_dir():
        raise ImageIOError(f"cannot read image {str(path)!r}: it is a folder, not a file")
    image_input = oiio.ImageInput.open(str(path))
    if image_input is None:
        reason = clean_error(oiio.geterror()) or "not an image file OpenImageIO can read"
        raise ImageIOError(f"cannot read image {str(path)!r}: {reason}")
    return image_input


def _checked_spec(path: Path, image_input: Any) -> Any:
    """The spec of an open image, refused if it is deep or a volume (as :func:`read_image`)."""
    spec = image_input.spec()
    if spec.deep:
        raise ImageIOError(f"cannot read image {str(path)!r}: deep images are not supported")
    if spec.depth > 1:
        raise ImageIOError(
            f"cannot read image {str(path)!r}: volume images (depth {spec.depth}) are not supported"
        )
    return spec


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
