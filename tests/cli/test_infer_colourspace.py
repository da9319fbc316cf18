"""``frameserve infer`` reads and writes each file in its own colourspace, as Nuke's Read does.

An 8-bit PNG holds sRGB-encoded values and a float EXR scene-linear ones; a model that
declares ``srgb`` must get a PNG's values as they are, not encoded twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest
import skimage.data
import torch

from frameserve.cli.main import main
from frameserve.engine.colour import default_manager
from frameserve.media.colourspaces import file_colourspace, output_colourspace
from frameserve.media.imageio import read_image, write_image


def write_png(path: Path, rgb: np.ndarray, *, bits: int = 8) -> Path:
    """``rgb`` (H, W, 3) in 0-1 as an integer PNG, written by OpenImageIO itself."""
    kind, top = ("uint8", 255) if bits == 8 else ("uint16", 65535)
    out = oiio.ImageOutput.create(str(path))
    out.open(str(path), oiio.ImageSpec(rgb.shape[1], rgb.shape[0], 3, kind))
    out.write_image((np.clip(rgb, 0, 1) * top + 0.5).astype(np.uint8 if bits == 8 else np.uint16))
    out.close()
    return path


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return skimage.data.coffee()[100:228, 200:328].astype(np.float32) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def test_files_are_read_in_their_own_colourspace(tmp_path: Path, coffee: np.ndarray) -> None:
    png = read_image(write_png(tmp_path / "a.png", coffee))
    png16 = read_image(write_png(tmp_path / "b.png", coffee, bits=16))
    write_image(tmp_path / "c.exr", coffee.transpose(2, 0, 1))
    write_image(tmp_path / "d.exr", coffee.transpose(2, 0, 1), pixel_type="half")
    assert file_colourspace(png).colourspace == "srgb"
    assert file_colourspace(png16).colourspace == "srgb"
    assert file_colourspace(read_image(tmp_path / "c.exr")).colourspace == "scene_linear"
    assert file_colourspace(read_image(tmp_path / "d.exr")).colourspace == "scene_linear"
    declared = tmp_path / "e.exr"
    write_image(declared, coffee.transpose(2, 0, 1), metadata={"oiio:ColorSpace": "sRGB"})
    assumed = file_colourspace(read_image(declared))
    assert assumed.colourspace == "srgb" and "declares" in assumed.why  # what it says wins
    assert [output_colourspace(n) for n in ("o.png", "o.JPG", "o.tif", "o.dpx", "o.exr")] == [
        "srgb", "srgb", "srgb", "srgb", "scene_linear",
    ]  # fmt: skip


def test_denoise_on_a_noisy_png_is_as_good_as_when_told_srgb(
    tmp_path: Path, coffee: np.ndarray
) -> None:
    noisy = coffee + np.random.default_rng(0).normal(0, 25 / 255, coffee.shape)
    source = write_png(tmp_path / "noisy.png", noisy.astype(np.float32))
    assert main(["infer", "denoise", str(source), str(tmp_path / "auto.png")]) == 0
    told = ["infer", "denoise", str(source), str(tmp_path / "told.png"), "--colourspace", "srgb"]
    assert main(told) == 0
    auto = read_image(tmp_path / "auto.png").hwc
    np.testing.assert_array_equal(auto, read_image(tmp_path / "told.png").hwc)
    before = psnr(read_image(source).hwc, coffee)
    assert psnr(auto, coffee) - before > 5.0, (before, psnr(auto, coffee))


def test_identity_png_to_exr_to_png_round_trips_and_the_exr_is_linear(
    tmp_path: Path, coffee: np.ndarray
) -> None:
    source = write_png(tmp_path / "in.png", coffee)
    assert main(["infer", "identity", str(source), str(tmp_path / "mid.exr")]) == 0
    assert main(["infer", "identity", str(tmp_path / "mid.exr"), str(tmp_path / "out.png")]) == 0
    original = read_image(source).hwc
    np.testing.assert_allclose(read_image(tmp_path / "out.png").hwc, original, atol=1 / 255 + 1e-6)
    linear = read_image(tmp_path / "mid.exr")
    assert "oiio:ColorSpace" not in linear.metadata  # the PNG's label does not travel
    expected = default_manager().convert(
        torch.from_numpy(read_image(source).pixels), "srgb", "scene_linear"
    )
    np.testing.assert_allclose(linear.pixels, expected.numpy(), rtol=0, atol=1e-5)


def test_a_linear_exr_stays_linear(tmp_path: Path, coffee: np.ndarray) -> None:
    hdr = coffee.transpose(2, 0, 1) * 4.0  # values above 1, as a linear plate has
    write_image(tmp_path / "plate.exr", hdr)
    assert main(["infer", "identity", str(tmp_path / "plate.exr"), str(tmp_path / "o.exr")]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "o.exr").pixels, hdr)
