"""``frameserve run`` in this process: pixels, windows, metadata, objects, channels, colour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest
import torch

from frameserve.builtin_models.blur.model import gaussian_blur
from frameserve.engine.colour import SCENE_LINEAR, default_manager
from frameserve.media.imageio import read_image, write_image
from tests.shots.plates import (
    DATA_WINDOW,
    DISPLAY_WINDOW,
    FRAMES,
    METADATA,
    Plates,
    alpha_frame,
    frameserve_run,
    output,
    photo_frame,
    write_plates,
)


def test_identity_keeps_pixels_windows_and_metadata(
    plates: Plates, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = frameserve_run(
        "identity", "--input", plates.pattern, "--output", out / "out.####.exr",
        "--frames", "1001-1005", "--local",
    )  # fmt: skip
    assert code == 0
    for frame in FRAMES:
        image = read_image(output(out, frame))
        assert np.array_equal(image.pixels, plates.pixels[frame])  # bit for bit
        assert image.pixels.max() > 1.0  # scene-linear highlights are not clipped
        assert image.channel_names == ("R", "G", "B")
        assert image.data_window == DATA_WINDOW
        assert image.display_window == DISPLAY_WINDOW
        assert {k: image.metadata.get(k) for k in METADATA} == METADATA
    assert not list(out.glob("*.json"))  # identity returns no objects
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "done: 5 frames: 5 written" in summary


def test_blur_matches_gaussian_blur(plates: Plates, tmp_path: Path) -> None:
    code = frameserve_run(
        "blur", "--input", plates.pattern, "--output", tmp_path / "soft.####.exr",
        "--frames", "1001-1005", "--knob", "size=2.5", "--knob", "edges=mirror", "--jobs", "3",
    )  # fmt: skip
    assert code == 0
    for frame in FRAMES:
        expected = gaussian_blur(torch.from_numpy(plates.pixels[frame]), 2.5, "mirror").numpy()
        result = read_image(output(tmp_path, frame, "soft")).pixels
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)
        assert not np.allclose(result, plates.pixels[frame], atol=1e-3)  # it did blur


def test_objects_go_to_a_json_sidecar(plates: Plates, tmp_path: Path) -> None:
    code = frameserve_run(
        "blur", "--input", plates.pattern, "--output", tmp_path / "soft.####.exr",
        "--frames", "1001,1003", "--knob", "brightest=yes",
    )  # fmt: skip
    assert code == 0
    objects = json.loads((tmp_path / "soft.1003.json").read_text())
    assert objects[0]["name"] == "PythonScript"
    assert "Brightest pixel" in objects[0]["records"][0]["script"]
    assert sorted(p.name for p in tmp_path.glob("soft.*")) == [
        "soft.1001.exr", "soft.1001.json", "soft.1003.exr", "soft.1003.json",
    ]  # fmt: skip

    # recomputed without the button: the sidecar of the old objects goes away
    frameserve_run(
        "blur", "--input", plates.pattern, "--output", tmp_path / "soft.####.exr",
        "--frames", "1003", "--overwrite",
    )  # fmt: skip
    assert not (tmp_path / "soft.1003.json").exists()


def test_half_exr_output(plates: Plates, tmp_path: Path) -> None:
    code = frameserve_run(
        "identity", "--input", plates.pattern, "--output", tmp_path / "out.####.exr",
        "--frames", "1001", "--half",
    )  # fmt: skip
    assert code == 0
    path = output(tmp_path, 1001)
    image_input = oiio.ImageInput.open(str(path))
    try:
        assert str(image_input.spec().format) == "half"
    finally:
        image_input.close()
    halved = plates.pixels[1001].astype(np.float16).astype(np.float32)
    assert np.array_equal(read_image(path).pixels, halved)


def test_two_input_model(tmp_path: Path) -> None:
    left = write_plates(tmp_path / "left", "left")
    right = write_plates(tmp_path / "right", "right", shift=1)
    code = frameserve_run(
        "difference", "--input", f"a={left.pattern}", "--input", f"b={right.pattern}",
        "--output", tmp_path / "diff.####.exr", "--frames", "1001-1005", "--knob", "gain=2",
        "--knob", "absolute=false",
    )  # fmt: skip
    assert code == 0
    for frame in FRAMES:
        expected = (left.pixels[frame] - right.pixels[frame]) * 2
        result = read_image(output(tmp_path, frame, "diff")).pixels
        np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)
        assert result.min() < 0  # signed: not clipped


def test_channels_rgba_on_a_four_channel_exr(tmp_path: Path, extra_models: Path) -> None:
    plates = write_plates(tmp_path / "plates", rgba=True)
    code = frameserve_run(
        "rgba_identity", "--models", extra_models, "--input", plates.pattern,
        "--output", tmp_path / "out.####.exr", "--frames", "1001-1005", "--channels", "rgba",
    )  # fmt: skip
    assert code == 0
    for frame in FRAMES:
        image = read_image(output(tmp_path, frame))
        assert image.channel_names == ("R", "G", "B", "A")
        assert np.array_equal(image.pixels, plates.pixels[frame])


def test_channels_layer_and_named_outputs(tmp_path: Path, extra_models: Path) -> None:
    """Read a layer of a multi-layer EXR; write a second output by name."""
    folder = tmp_path / "plates"
    folder.mkdir()
    layers = {}
    for index, frame in enumerate(FRAMES[:2]):
        beauty, diffuse = photo_frame(index), photo_frame(index + 3)
        layers[frame] = np.concatenate([diffuse, alpha_frame(index)])
        write_image(
            folder / f"beauty.{frame}.exr",
            np.concatenate([beauty, diffuse, alpha_frame(index)]),
            channel_names=("R", "G", "B", "diffuse.R", "diffuse.G", "diffuse.B", "diffuse.A"),
        )
    code = frameserve_run(
        "split_alpha", "--models", extra_models, "--input", folder / "beauty.%d.exr",
        "--channels", "diffuse.rgba", "--output", tmp_path / "rgb.####.exr",
        "--output", f"matte={tmp_path / 'matte.####.png'}", "--frames", "1001-1002",
    )  # fmt: skip
    assert code == 0
    for frame in FRAMES[:2]:
        rgb = read_image(output(tmp_path, frame, "rgb")).pixels
        assert np.array_equal(rgb, layers[frame][:3])
        matte = read_image(output(tmp_path, frame, "matte", "png")).pixels
        np.testing.assert_allclose(matte, layers[frame][3:], atol=0.5 / 255 + 1e-6)


def test_colourspace_is_passed_to_the_runner(tmp_path: Path) -> None:
    """Frames in sRGB are linearised for the model and the result is encoded back."""
    left = write_plates(tmp_path / "left", "left")
    right = write_plates(tmp_path / "right", "right", shift=1)
    code = frameserve_run(
        "difference", "--input", f"a={left.pattern}", "--input", f"b={right.pattern}",
        "--output", tmp_path / "diff.####.exr", "--frames", "1001", "--knob", "absolute=no",
        "--colourspace", "srgb",
    )  # fmt: skip
    assert code == 0
    colour = default_manager()
    a, b = (torch.from_numpy(p.pixels[1001]) for p in (left, right))
    linear = colour.convert(a, "srgb", SCENE_LINEAR) - colour.convert(b, "srgb", SCENE_LINEAR)
    expected = colour.convert(linear, SCENE_LINEAR, "srgb").numpy()
    result = read_image(output(tmp_path, 1001, "diff")).pixels
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(result, left.pixels[1001] - right.pixels[1001], atol=1e-3)
