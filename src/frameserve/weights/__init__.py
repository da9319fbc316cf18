"""Published network weights shipped with frameserve, and where a TD's own weights are found.

Each family has a folder here with its licence beside the files (``portrait-matte/``,
``face-detect/``, ``upscale/``, and weights we trained ourselves). Weights whose licences forbid
shipping them are read from a path the TD gives in an environment variable; see
:func:`user_weights_path`.
"""

from __future__ import annotations

import os
from pathlib import Path

from frameserve.errors import ModelSetupError

__all__ = ["WEIGHTS_FOLDER", "shipped_weights_path", "user_weights_path"]

#: The folder holding the shipped weights, one sub-folder per family.
WEIGHTS_FOLDER = Path(__file__).parent


def shipped_weights_path(family: str, filename: str) -> Path:
    """Return the path of a weights file shipped with frameserve.

    Raises:
        ModelSetupError: the file is not there (a broken installation).
    """
    path = WEIGHTS_FOLDER / family / filename
    if not path.is_file():
        raise ModelSetupError(
            f"shipped weights {family}/{filename} are missing from {WEIGHTS_FOLDER}: "
            "reinstall frameserve"
        )
    return path


def user_weights_path(variable: str, what: str) -> Path:
    """Return the weights file a TD named in the environment variable ``variable``.

    Args:
        variable: the environment variable, e.g. ``FRAMESERVE_SPYNET_WEIGHTS``.
        what: the file that is expected there, in words, for the error message.

    Raises:
        ModelSetupError: the variable is unset or names no file.
    """
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ModelSetupError(
            f"this model needs {what}, which frameserve may not ship: download it and set "
            f"{variable} to its path"
        )
    path = Path(value).expanduser()
    if not path.is_file():
        raise ModelSetupError(f"{variable} is {value!r}, which is not a file ({what} expected)")
    return path
