"""Shared plates, models and helpers of the ``frameserve run`` tests.

Plates are crops of real photographs (scikit-image's astronaut, coffee and chelsea) stored as
scene-linear EXR sequences (values up to 2), small so that each test runs in a moment.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import skimage.data

from frameserve.cli.run import add_run_parser
from frameserve.media.imageio import write_image
from frameserve.media.sequences import FramePattern
from frameserve.plugin.model import ModelSpec
from frameserve.shots.backends import LocalBackend
from frameserve.shots.run import RunOptions
from tests.support.paths import REPO

Frame = npt.NDArray[np.float32]

FRAMES = (1001, 1002, 1003, 1004, 1005)
HEIGHT, WIDTH = 24, 32
DATA_WINDOW = (8, 4, WIDTH, HEIGHT)
DISPLAY_WINDOW = (0, 0, WIDTH + 16, HEIGHT + 8)
METADATA = {"Software": "frameserve tests", "shot": "sh010"}

#: Test models written into a folder per test session: four-channel and two-output ones.
EXTRA_MODELS = {
    "rgba_identity": """
from frameserve import ImageSpec, Model

class RgbaIdentity(Model):
    id = "rgba_identity"
    inputs = (ImageSpec("image", 4),)
    outputs = (ImageSpec("image", 4),)

    def predict(self, frames, knobs):
        return frames["image"]
""",
    "split_alpha": """
from frameserve import ImageSpec, Model

class SplitAlpha(Model):
    id = "split_alpha"
    inputs = (ImageSpec("image", 4),)
    outputs = (ImageSpec("image", 3), ImageSpec("matte", 1))

    def predict(self, frames, knobs):
        image = frames["image"]
        return {"image": image[:3], "matte": image[3:]}
""",
    "bad_setup": """
from frameserve import Model

class BadSetup(Model):
    id = "bad_setup"

    def setup(self, device):
        raise FileNotFoundError("weights.pth")

    def predict(self, frames, knobs):
        return frames["image"]
""",
}


@functools.cache
def _photo(name: str) -> Frame:
    rgb = getattr(skimage.data, name)()
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / np.float32(127.5)


def photo_frame(index: int) -> Frame:
    """A (3, HEIGHT, WIDTH) crop of a real photograph, scene-linear values in 0-2."""
    photo = _photo(("astronaut", "coffee", "chelsea")[index % 3])
    top, left = 40 + 23 * index, 60 + 31 * index
    return np.ascontiguousarray(photo[:, top : top + HEIGHT, left : left + WIDTH])


def alpha_frame(index: int) -> Frame:
    """A (1, HEIGHT, WIDTH) matte: the photograph's luminance, in 0-1."""
    return np.ascontiguousarray(photo_frame(index).mean(axis=0, keepdims=True) / 2.0)


@dataclass(frozen=True)
class Plates:
    """An EXR sequence on disk, frames 1001-1005, and the pixels of each frame."""

    folder: Path
    pattern: str
    pixels: Mapping[int, Frame]


def write_plates(
    folder: Path, name: str = "plate", *, shift: int = 0, rgba: bool = False
) -> Plates:
    folder.mkdir(parents=True, exist_ok=True)
    pixels: dict[int, Frame] = {}
    for index, frame in enumerate(FRAMES):
        image = photo_frame(index + shift)
        names: tuple[str, ...] = ("R", "G", "B")
        if rgba:
            image = np.concatenate([image, alpha_frame(index + shift)])
            names = ("R", "G", "B", "A")
        pixels[frame] = image
        write_image(
            folder / f"{name}.{frame:04d}.exr",
            image,
            channel_names=names,
            metadata=METADATA,
            data_window=DATA_WINDOW,
            display_window=DISPLAY_WINDOW,
        )
    return Plates(folder, str(folder / f"{name}.####.exr"), pixels)


def frameserve_run(*argv: str | Path) -> int:
    """Run ``frameserve run ARGV`` in-process, with a parser built around add_run_parser."""
    parser = argparse.ArgumentParser(prog="frameserve")
    add_run_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["run", *(str(arg) for arg in argv)])
    assert args.command == "run"
    return int(args.run(args))


def output(folder: Path, frame: int, name: str = "out", extension: str = "exr") -> Path:
    return folder / f"{name}.{frame:04d}.{extension}"


def inodes(paths: list[Path]) -> list[int]:
    return [path.stat().st_ino for path in paths]


def hidden(folder: Path) -> list[str]:
    """The hidden files in ``folder`` (temporary files of atomic writes)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


class CountingBackend:
    """A local backend that counts the frames it runs (and can be told to fail)."""

    def __init__(self, backend: LocalBackend, *, interrupt_at: int | None = None) -> None:
        self.backend = backend
        self.calls = 0
        self.interrupt_at = interrupt_at

    def describe(self, model: str) -> ModelSpec:
        return self.backend.describe(model)

    def infer(
        self,
        model: str,
        frames: Mapping[str, Frame],
        knobs: Mapping[str, object],
        *,
        colourspace: str | None,
    ) -> tuple[dict[str, Frame], list[dict[str, Any]]]:
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self.backend.infer(model, frames, knobs, colourspace=colourspace)


def identity_options(plates: Plates, out: Path, **overrides: Any) -> RunOptions:
    options: dict[str, Any] = {
        "model": "identity",
        "inputs": {"image": FramePattern.parse(plates.pattern)},
        "outputs": {"image": FramePattern.parse(out / "out.####.exr")},
        "frames": list(FRAMES),
    }
    options.update(overrides)
    return RunOptions(**options)


#: A child that starts an atomic write of FILE, says the temporary file's name, and waits.
_WRITER = """
import sys, time
from pathlib import Path
from frameserve.media.atomic import atomic_path

with atomic_path(Path(sys.argv[1]), sync=False) as temporary:
    temporary.write_bytes(b"half a frame")
    print(temporary, flush=True)
    time.sleep(600)
"""


def start_writer(target: Path) -> tuple[subprocess.Popen[str], Path]:
    """Start a process that holds a temporary file of ``target``; return it and the file."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    temporary = Path(child.stdout.readline().strip())
    child.stdout.close()
    assert temporary.is_file(), temporary
    return child, temporary
