"""Scratch folders inside the jobs folder: where exports are built before they are sent.

A server writes only inside its jobs folder; temporary files too::

    with scratch_folder(jobs_folder / SCRATCH_FOLDER) as folder:
        export_package(job, folder / "package", scratch=folder)
    remove_old_scratch(jobs_folder / SCRATCH_FOLDER)      # at start: what killed exports left
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SCRATCH_FOLDER", "remove_old_scratch", "scratch_folder"]

#: The scratch folder's name in the jobs folder (a name no job can have).
SCRATCH_FOLDER = ".scratch"
_LEFTOVER_AGE = 3600.0  # a scratch folder this old is left over from a killed process


@contextlib.contextmanager
def scratch_folder(root: Path) -> Iterator[Path]:
    """Yield a new empty folder in ``root``; it is removed when the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="export-", dir=root) as folder:
        yield Path(folder)


def remove_old_scratch(root: Path) -> None:
    """Remove the folders in ``root`` an hour old (left by a process that was killed)."""
    if not root.is_dir():
        return
    for leftover in root.iterdir():
        with contextlib.suppress(OSError):
            if time.time() - leftover.stat().st_mtime > _LEFTOVER_AGE:
                shutil.rmtree(leftover, ignore_errors=True)
