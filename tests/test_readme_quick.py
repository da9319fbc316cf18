"""The README's quick paths, run as written on the files a new user has.

The commands of the block after ``<!-- README-QUICK -->`` run one by one, as the README gives
them, in a folder holding a PNG photo, a JPEG portrait, EXR plates and a PNG sequence (real
photographs from scikit-image); each must succeed and write what it names. They run through
the command line's ``main`` in this process, from that folder (a fresh interpreter for each
would only add its start-up: ``python -m frameserve`` itself is run by tests/cli).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest
import skimage.data

from frameserve.cli.main import main
from frameserve.media.imageio import read_image, write_image
from frameserve.serve import settings
from tests.support.paths import REPO

MARKER = "<!-- README-QUICK -->"


def quick_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split(MARKER, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def write_integer(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit file as any program writes one (OpenImageIO, by extension)."""
    out = oiio.ImageOutput.create(str(path))
    out.open(str(path), oiio.ImageSpec(rgb.shape[1], rgb.shape[0], rgb.shape[2], "uint8"))
    out.write_image(np.ascontiguousarray(rgb))
    out.close()


def users_files(folder: Path) -> None:
    coffee, astronaut = skimage.data.coffee(), skimage.data.astronaut()
    noisy = np.clip(coffee + np.random.default_rng(0).normal(0, 20, coffee.shape), 0, 255)
    write_integer(folder / "photo.png", noisy.astype(np.uint8))
    write_integer(folder / "portrait.jpg", astronaut)
    linear = (astronaut.astype(np.float32) / 255) ** 2.2  # a scene-linear plate
    write_image(folder / "plate.exr", linear.transpose(2, 0, 1))
    write_image(folder / "a.exr", linear.transpose(2, 0, 1))
    write_image(folder / "b.exr", np.roll(linear, 3, axis=1).transpose(2, 0, 1))
    for frame in (1, 2, 3):
        write_integer(
            folder / f"photo.{frame:04d}.png", np.roll(noisy, 7 * frame, axis=1).astype(np.uint8)
        )
        write_integer(folder / f"clean.{frame:04d}.png", np.roll(coffee, 7 * frame, axis=1))


def jobs_folder_default(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make ``folder`` the jobs folder of commands given none, as $FRAMESERVE_JOBS_FOLDER does for
    a fresh process: frameserve read the variable when this process imported it, so each module
    that took the default then gets ``folder`` in its place (and the variable is set too)."""
    monkeypatch.setenv(settings.JOBS_FOLDER_ENV, str(folder))
    default = settings.DEFAULT_JOBS_FOLDER
    ours = [module for name, module in sys.modules.items() if name.startswith("frameserve")]
    for module in ours:
        if getattr(module, "DEFAULT_JOBS_FOLDER", None) == default:
            monkeypatch.setattr(module, "DEFAULT_JOBS_FOLDER", folder)


def test_the_quick_paths_work_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    commands = quick_commands()
    assert any(c.split()[1] == "infer" for c in commands)
    assert any(c.split()[1] == "run" for c in commands)
    assert any("train --local" in c for c in commands)
    users_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    jobs_folder_default(monkeypatch, tmp_path / "jobs")
    monkeypatch.delenv("FRAMESERVE_MODELS", raising=False)
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == ".venv/bin/frameserve", command
        code = main(argv[1:])
        stderr = capsys.readouterr().err
        assert code == 0, f"{command}\n{stderr}"
        assert "Traceback" not in stderr, stderr
    for name in ("clean.png", "matte.exr", "blurred.exr", "diff.exr", "fixed.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "jobs" / "my_fix").is_dir()  # the job went where the user's would
    assert [p.name for p in sorted(tmp_path.glob("clean.000[1-3].png"))] == [
        "clean.0001.png", "clean.0002.png", "clean.0003.png",
    ]  # fmt: skip
    # the denoised photo is closer to the clean one than the noisy photo was
    clean = skimage.data.coffee().astype(np.float32).transpose(2, 0, 1) / 255
    before = np.mean((read_image(tmp_path / "photo.png").pixels - clean) ** 2)
    after = np.mean((read_image(tmp_path / "clean.png").pixels - clean) ** 2)
    assert after < before / 2, (before, after)
    matte = read_image(tmp_path / "matte.exr")
    assert matte.hwc.shape[2] == 4 and 0.1 < float(matte.hwc[:, :, 3].mean()) < 0.9
