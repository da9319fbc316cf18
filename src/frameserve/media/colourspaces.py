"""Which colourspace an image file's values are in, as Nuke's Read and Write nodes decide it.

An 8-bit PNG or JPEG holds sRGB-encoded values; a float EXR holds scene-linear ones. Reading
every file as scene-linear makes a model that wants sRGB encode a PNG's values twice, so the
commands (``frameserve infer``, ``frameserve run``) read and write each file in its own
colourspace unless told otherwise::

    image = read_image("photo.png")
    file_colourspace(image)                 # Assumed("srgb", "8-bit integer PNG")
    output_colourspace("out.exr")           # "scene_linear"

**Reading.** A colourspace the file declares wins (OpenImageIO's ``oiio:ColorSpace``, which
it sets from a PNG's sRGB chunk or gamma, an EXR's attributes...): sRGB-encoded names become
``srgb``, linear names ``scene_linear`` (the working space, as Nuke treats a linear file), any
other name is used as it is (the colour configuration must know it). A file that declares
nothing is read by its sample type: integers (8- and 16-bit PNG, JPEG, TIFF, DPX) as ``srgb``,
floats (half and float EXR or TIFF) as ``scene_linear``.

**Writing.** By the output file's extension, as frameserve writes it: integer formats (PNG,
JPEG, TIFF, DPX) get ``srgb`` values, EXR gets ``scene_linear``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from frameserve.media.image_read import ImageFile

__all__ = [
    "COLOURSPACE_ATTRIBUTE",
    "FLOAT_COLOURSPACE",
    "INTEGER_COLOURSPACE",
    "Assumed",
    "file_colourspace",
    "output_colourspace",
]

#: Where OpenImageIO says what colourspace a file's values are in.
COLOURSPACE_ATTRIBUTE = "oiio:ColorSpace"
#: The colourspace of integer image files (8/16-bit PNG, JPEG, TIFF, DPX).
INTEGER_COLOURSPACE = "srgb"
#: The colourspace of float image files (EXR, float TIFF).
FLOAT_COLOURSPACE = "scene_linear"

_FLOAT_SAMPLES = frozenset({"half", "float", "double"})
_FLOAT_EXTENSIONS = frozenset({".exr", ".hdr", ".sxr", ".mxr"})


@dataclass(frozen=True)
class Assumed:
    """The colourspace a file is read in, and why (for the one line a command prints)."""

    colourspace: str
    why: str


def file_colourspace(image: ImageFile) -> Assumed:
    """Return the colourspace ``image``'s values are in (see the module docstring)."""
    declared = image.metadata.get(COLOURSPACE_ATTRIBUTE)
    if isinstance(declared, str) and declared.strip():
        name = declared.strip()
        lowered = name.lower()
        if "srgb" in lowered and not lowered.startswith("lin"):
            return Assumed(INTEGER_COLOURSPACE, f"the file declares {name!r}")
        if lowered.startswith("lin") or lowered in ("linear", "scene_linear", "raw"):
            return Assumed(FLOAT_COLOURSPACE, f"the file declares {name!r}")
        return Assumed(name, "the file declares it")
    kind = f"{image.sample_type} {image.format_name.upper() or 'image'}"
    if image.sample_type in _FLOAT_SAMPLES:
        return Assumed(FLOAT_COLOURSPACE, f"a {kind} file (float: scene-linear)")
    return Assumed(INTEGER_COLOURSPACE, f"a {kind} file (integer: sRGB-encoded)")


def output_colourspace(path: str | Path) -> str:
    """Return the colourspace an output written to ``path`` gets (by its extension)."""
    name = str(path).lower()  # not Path.suffix: a pattern's tail ".exr" has none
    floats = any(name.endswith(extension) for extension in _FLOAT_EXTENSIONS)
    return FLOAT_COLOURSPACE if floats else INTEGER_COLOURSPACE
