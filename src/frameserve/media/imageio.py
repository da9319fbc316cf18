"""Reading and writing image files: what frameserve's image files hold and how.

Reading is :mod:`frameserve.media.image_read`, writing :mod:`frameserve.media.image_write`;
this module is where both are imported from.

**Pixels.** An image read is kept as the file stores it: a float32 array ``(H, W, C)``,
C-contiguous, top row first (row 0 is the first scanline stored in the file, as Nuke shows
it) — :attr:`ImageFile.hwc`. That is also the order of the HTTP wire and of every writer, so
a frame crosses from a file to the wire and from the wire to a file without a layout copy.
The internal frame form of :mod:`frameserve.plugin.frames`, ``(C, H, W)``, is one copy away
(:attr:`ImageFile.pixels`) or a view (:meth:`ImageFile.chw_view`); :func:`write_image` takes
either layout. Values are the file's values: integer formats come back normalised to 0-1 by
OpenImageIO, float formats (EXR) unchanged, no colour conversion is applied, and values above
1 are kept.

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
Writes are atomic (:mod:`frameserve.media.atomic`): the file appears complete under its final
name or not at all.

Example::

    image = read_image("plate.0001.exr", channels=("R", "G", "B"))
    image.hwc.shape                  # (1080, 1920, 3), float32, as stored
    image.pixels.shape               # (3, 1080, 1920), the internal frame form
    write_image("out.0001.exr", image.hwc, layout="HWC", pixel_type="half",
                data_window=image.data_window, display_window=image.display_window)
"""

from __future__ import annotations

from frameserve.media.image_read import ImageFile, Window, read_image
from frameserve.media.image_write import LAYOUTS, SUPPORTED_EXTENSIONS, Layout, write_image

__all__ = [
    "LAYOUTS",
    "SUPPORTED_EXTENSIONS",
    "ImageFile",
    "Layout",
    "Window",
    "read_image",
    "write_image",
]
