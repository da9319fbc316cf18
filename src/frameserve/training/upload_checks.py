"""What an uploaded file must be before it is stored: a plain image file name, and bytes that
start as that format's files do.

::

    check_filename("plate.1001.exr")           # UploadError: a folder, no image extension...
    check_signature(first_bytes, "plate.1001.exr")   # UploadError: not an OpenEXR file

The name is checked before a byte of the body is read; the signature as soon as the first
:data:`SIGNATURE_BYTES` bytes arrive (:mod:`frameserve.training.uploads`).
"""

from __future__ import annotations

import os
import re

from frameserve.errors import UploadError

__all__ = ["SIGNATURE_BYTES", "UPLOAD_EXTENSIONS", "check_filename", "check_signature"]

#: The image signature each accepted extension must start with.
_SIGNATURES: dict[str, tuple[str, tuple[bytes, ...]]] = {
    ".exr": ("OpenEXR", (b"\x76\x2f\x31\x01",)),
    ".png": ("PNG", (b"\x89PNG\r\n\x1a\n",)),
    ".tif": ("TIFF", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ".tiff": ("TIFF", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ".dpx": ("DPX", (b"SDPX", b"XPDS")),
    ".jpg": ("JPEG", (b"\xff\xd8\xff",)),
    ".jpeg": ("JPEG", (b"\xff\xd8\xff",)),
}
#: Lower-case extensions (with the dot) an upload's name may end in.
UPLOAD_EXTENSIONS = tuple(sorted(_SIGNATURES))

#: Bytes of a file's start that :func:`check_signature` needs (the longest signature).
SIGNATURE_BYTES = 8
_FILENAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-+ ]{0,199}\Z")


def check_filename(filename: object) -> str:
    """Return ``filename`` if an upload may be called so.

    Raises:
        UploadError: not a plain file name with an image extension.
    """
    if not isinstance(filename, str) or not filename:
        raise UploadError(
            "an upload needs its file name (?filename=plate.1001.exr): the extension says the "
            "format"
        )
    if "/" in filename or "\\" in filename or not _FILENAME.match(filename):
        raise UploadError(
            f"upload file name {filename!r} is not allowed; use a plain file name (no folder) "
            "of up to 200 letters, digits, spaces and '_ . - +', starting with a letter, digit "
            "or '_'"
        )
    extension = os.path.splitext(filename)[1].lower()
    if extension not in _SIGNATURES:
        raise UploadError(
            f"upload file name {filename!r} does not end in an image extension frameserve reads; "
            f"use one of {', '.join(UPLOAD_EXTENSIONS)}"
        )
    return filename


def check_signature(head: bytes | bytearray, filename: str) -> None:
    """Raise :class:`UploadError` unless ``head`` (the first bytes) starts as the name says."""
    extension = os.path.splitext(filename)[1].lower()
    format_name, signatures = _SIGNATURES[extension]
    head = bytes(head[:SIGNATURE_BYTES])
    if not any(head.startswith(signature) for signature in signatures):
        expected = " or ".join(signature.hex(" ") for signature in signatures)
        article = "an" if format_name == "OpenEXR" else "a"
        raise UploadError(
            f"upload {filename!r} is not {article} {format_name} file: {format_name} files "
            f"start with the bytes {expected}, these start with "
            f"{head[: len(signatures[0])].hex(' ') or '-'}"
        )
