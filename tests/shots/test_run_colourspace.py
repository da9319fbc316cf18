"""``frameserve run`` reads each sequence in its own colourspace and writes each output in its
file type's, as Nuke's Read and Write nodes do; data outputs are never converted."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest
import skimage.data
import torch

from frameserve.engine.colour import default_manager
from frameserve.errors import ConfigError
from frameserve.media.imageio import read_image, write_image
from tests.shots.plates import frameserve_run


def write_png_sequence(folder: Path, name: str, frames: range) -> np.ndarray:
    """8-bit PNGs of a real photo (shifted per frame), as any program writes them."""
    photo = skimage.data.chelsea()[:96, :128]
    for frame in frames:
        path = str(folder / f"{name}.{frame:04d}.png")
        out = oiio.ImageOutput.create(path)
        out.open(path, oiio.ImageSpec(128, 96, 3, "uint8"))
        out.write_image(np.ascontiguousarray(np.roll(photo, 3 * frame, axis=1)))
        out.close()
    return photo


def test_png_in_exr_out_is_linear_and_png_out_round_trips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_png_sequence(tmp_path, "plate", range(1, 3))
    args = ["identity", "--input", tmp_path / "plate.####.png", "--frames", "1-2"]
    with caplog.at_level(logging.INFO, logger="frameserve.shots.run"):
        assert frameserve_run(*args, "--output", tmp_path / "lin.####.exr") == 0
    said = [r.getMessage() for r in caplog.records if "read as" in r.getMessage()]
    assert len(said) == 1 and "read as srgb" in said[0]  # once per sequence
    assert frameserve_run(*args, "--output", tmp_path / "same.####.png") == 0
    source = read_image(tmp_path / "plate.0002.png").pixels
    np.testing.assert_allclose(read_image(tmp_path / "same.0002.png").pixels, source, atol=1e-6)
    expected = default_manager().convert(torch.from_numpy(source), "srgb", "scene_linear")
    linear = read_image(tmp_path / "lin.0002.exr")
    np.testing.assert_allclose(linear.pixels, expected.numpy(), rtol=0, atol=1e-5)
    assert "oiio:ColorSpace" not in linear.metadata
    # told otherwise: the files are what the flag says, the outputs too
    told = [*args, "--output", tmp_path / "told.####.exr", "--colourspace", "scene_linear"]
    assert frameserve_run(*told) == 0
    np.testing.assert_allclose(read_image(tmp_path / "told.0002.exr").pixels, source, atol=1e-6)


def test_denoise_on_a_png_sequence_matches_being_told_srgb(tmp_path: Path) -> None:
    write_png_sequence(tmp_path, "noisy", range(1, 2))
    args = ["denoise", "--input", tmp_path / "noisy.####.png", "--frames", "1"]
    assert frameserve_run(*args, "--output", tmp_path / "auto.####.png") == 0
    assert (
        frameserve_run(*args, "--output", tmp_path / "told.####.png", "--colourspace", "srgb") == 0
    )
    np.testing.assert_array_equal(
        read_image(tmp_path / "auto.0001.png").pixels, read_image(tmp_path / "told.0001.png").pixels
    )


def test_motion_vectors_from_pngs_are_written_as_values(tmp_path: Path) -> None:
    write_png_sequence(tmp_path, "plate", range(1, 4))
    args = ["motion_vectors", "--input", tmp_path / "plate.####.png", "--frames", "2"]
    assert frameserve_run(*args, "--output", tmp_path / "mv.####.exr") == 0
    vectors = read_image(tmp_path / "mv.0002.exr").pixels
    # the photo moves 3 px per frame: forward u is 3 px long (a colour conversion would bend it)
    assert abs(abs(float(np.median(vectors[0]))) - 3.0) < 0.05, float(np.median(vectors[0]))


def test_inputs_in_different_colourspaces_must_be_named(tmp_path: Path) -> None:
    write_png_sequence(tmp_path, "a", range(1, 2))
    write_image(tmp_path / "b.0001.exr", np.zeros((3, 96, 128), np.float32))
    with pytest.raises(ConfigError, match=r"different colourspaces \(a: srgb, b: scene_linear\)"):
        frameserve_run(
            "difference", "--input", f"a={tmp_path / 'a.####.png'}",
            "--input", f"b={tmp_path / 'b.####.exr'}", "--frames", "1",
            "--output", tmp_path / "d.####.exr",
        )  # fmt: skip
