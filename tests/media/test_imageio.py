"""Tests for image files: round trips per format, orientation, windows, errors, atomicity."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import OpenImageIO as oiio
import pytest

from frameserve.errors import ImageIOError
from frameserve.media.imageio import SUPPORTED_EXTENSIONS, ImageFile, read_image, write_image

Frame = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def photo() -> Frame:
    """A real photograph as a float32 (3, H, W) frame in 0-1, or a synthetic one."""
    try:
        import skimage.data
    except ImportError:
        rows = np.linspace(0.0, 1.0, 96, dtype=np.float32)[:, None]
        cols = np.linspace(0.0, 1.0, 128, dtype=np.float32)[None, :]
        return np.stack([rows * cols, rows + 0 * cols, 1 - cols + 0 * rows]).astype(np.float32)
    rgb = skimage.data.astronaut()  # type: ignore[no-untyped-call]  # (512, 512, 3) uint8
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def file_sample_type(path: Path) -> str:
    """The sample type the file stores, as OpenImageIO names it."""
    image_input = oiio.ImageInput.open(str(path))
    assert image_input is not None, oiio.geterror()
    try:
        return str(image_input.spec().format)
    finally:
        image_input.close()


def off_grid(photo: Frame) -> Frame:
    """The photo moved off the 1/255 grid so that quantisation is really exercised."""
    return (photo * 0.9 + 0.0513).astype(np.float32)


# -- round trips per format ------------------------------------------------------------------


def test_exr_float_round_trip_is_exact(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = (rng.normal(size=(4, 37, 53)) * 1000).astype(np.float32)  # negative, large, tiny
    path = tmp_path / "frame.exr"
    write_image(path, pixels)

    image = read_image(path)

    assert file_sample_type(path) == "float"
    assert image.pixels.dtype == np.float32
    assert image.pixels.flags.c_contiguous
    assert image.channel_names == ("R", "G", "B", "A")
    np.testing.assert_array_equal(image.pixels, pixels)


def test_exr_half_round_trip_is_half_precision(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = (rng.normal(size=(3, 40, 30)) * 50).astype(np.float32)
    path = tmp_path / "frame.exr"
    write_image(path, pixels, pixel_type="half")

    image = read_image(path)

    assert file_sample_type(path) == "half"
    np.testing.assert_array_equal(image.pixels, pixels.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(image.pixels, pixels, rtol=2.0**-11, atol=2.0**-24)


def test_exr_half_overflow_is_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pixels = np.zeros((1, 2, 3), np.float32)
    pixels[0, 0, :2] = [1e5, -7e4]
    with caplog.at_level(logging.WARNING, logger="frameserve.media.image_write"):
        write_image(tmp_path / "big.exr", pixels, pixel_type="half")

    assert "2 values" in caplog.text and "half" in caplog.text
    assert np.isinf(read_image(tmp_path / "big.exr").pixels[0, 0, :2]).all()


def test_exr_keeps_nan_and_inf_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pixels = np.zeros((1, 2, 2), np.float32)
    pixels[0, 0] = [np.nan, np.inf]
    with caplog.at_level(logging.WARNING, logger="frameserve.media.image_write"):
        write_image(tmp_path / "odd.exr", pixels)

    assert "1 NaN and 1 infinite" in caplog.text
    np.testing.assert_array_equal(read_image(tmp_path / "odd.exr").pixels, pixels)


def test_png_round_trip_within_one_step(tmp_path: Path, photo: Frame) -> None:
    pixels = off_grid(photo)
    path = tmp_path / "photo.png"
    write_image(path, pixels)

    image = read_image(path)

    assert file_sample_type(path) == "uint8"
    assert image.channel_names == ("R", "G", "B")
    assert image.pixels.shape == pixels.shape
    assert np.abs(image.pixels - pixels).max() <= 0.5 / 255 + 1e-6  # rounded, not truncated


def test_png_clips_out_of_range_values_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pixels = np.full((1, 2, 4), 0.5, np.float32)  # one channel: the (H, W, 1) view case
    pixels[0, 0] = [1.5, -0.25, np.nan, np.inf]
    before = pixels.copy()
    with caplog.at_level(logging.WARNING, logger="frameserve.media.image_write"):
        write_image(tmp_path / "clip.png", pixels)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "3 of 8 values clipped to the range [0, 1]" in message
    assert "1 NaN" in message
    np.testing.assert_array_equal(pixels, before)  # the caller's array is not clipped in place
    got = read_image(tmp_path / "clip.png").pixels
    np.testing.assert_allclose(got[0, 0], [1.0, 0.0, 0.0, 1.0])


def test_in_range_png_logs_no_warning(
    tmp_path: Path, photo: Frame, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="frameserve.media.image_write"):
        write_image(tmp_path / "photo.png", photo)
    assert caplog.records == []


def test_tiff_round_trip_is_16_bit(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.uniform(0.0, 1.0, size=(3, 31, 47)).astype(np.float32)
    path = tmp_path / "frame.tif"
    write_image(path, pixels)

    image = read_image(path)

    assert file_sample_type(path) == "uint16"
    assert np.abs(image.pixels - pixels).max() <= 0.5 / 65535 + 1e-7


def test_jpeg_round_trip_within_tolerance(tmp_path: Path, photo: Frame) -> None:
    path = tmp_path / "photo.jpg"
    write_image(path, photo)

    image = read_image(path)

    assert file_sample_type(path) == "uint8"
    assert image.pixels.shape == photo.shape
    error = np.abs(image.pixels - photo)
    assert error.mean() < 0.01
    assert np.percentile(error, 99) < 0.05


def test_dpx_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.uniform(0.0, 1.0, size=(4, 20, 24)).astype(np.float32)
    path = tmp_path / "frame.dpx"
    write_image(path, pixels)

    image = read_image(path)

    assert file_sample_type(path) == "uint16"
    assert image.channel_names == ("R", "G", "B", "A")
    assert np.abs(image.pixels - pixels).max() <= 0.5 / 65535 + 1e-7


@pytest.mark.parametrize("extension", [".EXR", ".Png", ".jpeg", ".tiff"])
def test_extension_case_and_spelling(tmp_path: Path, extension: str, photo: Frame) -> None:
    path = tmp_path / f"photo{extension}"
    write_image(path, photo)
    assert read_image(path).pixels.shape == photo.shape


def test_float64_and_float16_input(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    big = np.array([[[1e300, 0.25]]], np.float64)  # beyond float32: inf, reported, no warning
    with caplog.at_level(logging.WARNING, logger="frameserve.media.image_write"):
        write_image(tmp_path / "f64.exr", big)
    assert "1 infinite" in caplog.text
    np.testing.assert_array_equal(read_image(tmp_path / "f64.exr").pixels, [[[np.inf, 0.25]]])

    write_image(tmp_path / "f16.exr", np.full((2, 3, 3), 0.5, np.float16))
    np.testing.assert_array_equal(read_image(tmp_path / "f16.exr").pixels, 0.5)


def test_supported_extensions() -> None:
    assert {".exr", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dpx"} == SUPPORTED_EXTENSIONS


# -- channels --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "names"),
    [
        (1, ("Y",)),
        (2, ("Y", "A")),
        (3, ("R", "G", "B")),
        (4, ("R", "G", "B", "A")),
        (6, ("R", "G", "B", "A", "channel4", "channel5")),
    ],
)
def test_default_channel_names(tmp_path: Path, count: int, names: tuple[str, ...]) -> None:
    write_image(tmp_path / "frame.exr", np.zeros((count, 2, 2), np.float32))
    assert read_image(tmp_path / "frame.exr").channel_names == names


def test_channel_selection(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.normal(size=(5, 6, 7)).astype(np.float32)
    names = ("R", "G", "B", "A", "depth.Z")
    path = tmp_path / "layers.exr"
    write_image(path, pixels, channel_names=names)

    assert read_image(path).channel_names == names
    reordered = read_image(path, channels=("depth.Z", "R"))
    assert reordered.channel_names == ("depth.Z", "R")
    assert reordered.pixels.flags.c_contiguous
    np.testing.assert_array_equal(reordered.pixels, pixels[[4, 0]])
    middle = read_image(path, channels=["G", "B"])
    assert middle.pixels.flags.c_contiguous
    np.testing.assert_array_equal(middle.pixels, pixels[1:3])


def test_missing_channel_names_what_is_available(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    write_image(path, np.zeros((3, 2, 2), np.float32))

    with pytest.raises(ImageIOError, match=r"no channel named 'A'.*'R', 'G', 'B'") as info:
        read_image(path, channels=("R", "A"))
    assert "rgb.png" in str(info.value)
    with pytest.raises(ImageIOError, match="not the string"):
        read_image(path, channels="RGB")


# -- orientation, windows, metadata ----------------------------------------------------------


@pytest.mark.parametrize("extension", sorted(SUPPORTED_EXTENSIONS))
def test_top_row_is_the_first_scanline(tmp_path: Path, extension: str) -> None:
    pixels = np.zeros((3, 8, 16), np.float32)
    pixels[:, 0, :] = 1.0  # bright top row
    path = tmp_path / f"top{extension}"
    write_image(path, pixels)

    image_input = oiio.ImageInput.open(str(path))
    assert image_input is not None, oiio.geterror()
    try:
        spec = image_input.spec()
        first = image_input.read_scanline(spec.y, 0, "float")
        last = image_input.read_scanline(spec.y + spec.height - 1, 0, "float")
    finally:
        image_input.close()
    assert first is not None and last is not None
    assert first.mean() > 0.9
    assert last.mean() < 0.1
    back = read_image(path).pixels
    assert back[:, 0].mean() > 0.9 and back[:, -1].mean() < 0.1


def test_exr_windows_survive_read_write_read(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.normal(size=(4, 30, 50)).astype(np.float32)
    first = tmp_path / "first.exr"
    write_image(first, pixels, data_window=(-10, 20, 50, 30), display_window=(0, 0, 200, 100))

    image = read_image(first)
    assert image.data_window == (-10, 20, 50, 30)
    assert image.display_window == (0, 0, 200, 100)

    second = tmp_path / "second.exr"
    write_image(
        second,
        image.pixels,
        channel_names=image.channel_names,
        metadata=image.metadata,
        data_window=image.data_window,
        display_window=image.display_window,
    )
    again = read_image(second)
    assert again.data_window == (-10, 20, 50, 30)
    assert again.display_window == (0, 0, 200, 100)
    np.testing.assert_array_equal(again.pixels, pixels)


def test_default_windows_are_the_frame(tmp_path: Path) -> None:
    write_image(tmp_path / "plain.exr", np.zeros((3, 5, 7), np.float32))
    image = read_image(tmp_path / "plain.exr")
    assert image.data_window == image.display_window == (0, 0, 7, 5)


def test_windows_dropped_by_other_formats_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pixels = np.zeros((3, 5, 7), np.float32)
    with caplog.at_level(logging.WARNING, logger="frameserve.media.image_write"):
        write_image(tmp_path / "w.tif", pixels, data_window=(3, 4, 7, 5))
    assert "dropped" in caplog.text
    image = read_image(tmp_path / "w.tif")
    assert image.data_window == image.display_window == (0, 0, 7, 5)


def test_metadata_round_trip(tmp_path: Path) -> None:
    metadata = {
        "frameserve:model": "denoise",
        "frameserve:seed": 7,
        "frameserve:gain": 1.5,
        "frameserve:offset": (0.25, 0.5),
        "framesPerSecond": (24, 1),
        "smpte:TimeCode": (0x01020304, 0),  # needs OIIO's timecode type to be kept
    }
    path = tmp_path / "meta.exr"
    write_image(path, np.zeros((3, 2, 2), np.float32), metadata=metadata, compression="piz")

    image = read_image(path)

    for name, value in metadata.items():
        assert image.metadata[name] == value
    assert "compression" not in image.metadata  # how the file was encoded is not carried
    assert not any(name.startswith("openexr:") for name in image.metadata)


# -- errors ----------------------------------------------------------------------------------


def test_reading_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageIOError, match=r"nothing\.exr.*no such file"):
        read_image(tmp_path / "nothing.exr")


@pytest.mark.parametrize("name", ["garbage.exr", "garbage.png", "garbage.dpx"])
def test_reading_a_garbage_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an image\n" * 20)
    with pytest.raises(ImageIOError, match=rf"cannot read image .*{name}"):
        read_image(path)


def test_reading_a_truncated_file(tmp_path: Path, photo: Frame) -> None:
    path = tmp_path / "cut.png"
    write_image(path, photo)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageIOError, match=r"cut\.png"):
        read_image(path)


def test_reading_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageIOError, match="folder"):
        read_image(tmp_path)


@pytest.mark.parametrize(
    ("name", "pixels", "options", "message"),
    [
        ("a.png", np.zeros((3, 4, 4), np.uint8), {}, r"float array .* dtype uint8"),
        ("a.png", np.zeros((4, 4), np.float32), {}, r"\(C, H, W\).*shape \(4, 4\)"),
        ("a.png", np.zeros((0, 4, 4), np.float32), {}, r"shape \(0, 4, 4\)"),
        ("a.png", [[[0.0]]], {}, "got list"),
        ("a.bmp", np.zeros((3, 4, 4), np.float32), {}, r"unsupported extension '\.bmp'"),
        ("a.exr", np.zeros((3, 4, 4), np.float32), {"pixel_type": "double"}, "'half'"),
        ("a.png", np.zeros((3, 4, 4), np.float32), {"pixel_type": "half"}, "EXR only"),
        ("a.jpg", np.zeros((4, 4, 4), np.float32), {}, "JPEG stores 1, 3 channels"),
        ("a.dpx", np.zeros((2, 4, 4), np.float32), {}, "DPX stores 1, 3, 4 channels"),
        ("a.exr", np.zeros((3, 4, 4), np.float32), {"channel_names": ("R", "G")}, "2 channel"),
        ("a.exr", np.zeros((2, 4, 4), np.float32), {"channel_names": ("R", "R")}, "distinct"),
        ("a.exr", np.zeros((3, 4, 4), np.float32), {"data_window": (0, 0, 5, 4)}, "width"),
        ("a.exr", np.zeros((3, 4, 4), np.float32), {"display_window": (0, 0, 0, 4)}, "positive"),
        ("a.exr", np.zeros((3, 4, 4), np.float32), {"metadata": {"k": None}}, "'k'.*NoneType"),
    ],
)
def test_invalid_write_requests(
    tmp_path: Path, name: str, pixels: object, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ImageIOError, match=message):
        write_image(tmp_path / name, pixels, **options)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# -- atomic writes ---------------------------------------------------------------------------


def test_write_leaves_no_temporary_file(tmp_path: Path, photo: Frame) -> None:
    for extension in sorted(SUPPORTED_EXTENSIONS):
        write_image(tmp_path / f"photo{extension}", photo)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"photo{extension}" for extension in SUPPORTED_EXTENSIONS
    )


def test_overwrite_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "frame.exr"
    write_image(path, np.zeros((3, 2, 2), np.float32))
    write_image(path, np.ones((3, 2, 2), np.float32))
    np.testing.assert_array_equal(read_image(path).pixels, 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["frame.exr"]


def test_write_into_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageIOError, match="does not exist"):
        write_image(tmp_path / "missing" / "frame.exr", np.zeros((3, 2, 2), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_existing_file(tmp_path: Path, photo: Frame) -> None:
    path = tmp_path / "frame.png"
    write_image(path, photo)
    before = path.read_bytes()

    with pytest.raises(ImageIOError):
        write_image(path, np.zeros((3, 4), np.float32))  # invalid array
    with pytest.raises(ImageIOError):
        write_image(path, np.zeros((5, 4, 4), np.float32))  # too many channels for PNG

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["frame.png"]


def test_failed_rename_removes_the_temporary_file(
    tmp_path: Path, photo: Frame, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "frame.exr"
    write_image(path, photo)
    before = path.read_bytes()

    def refuse(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        assert Path(source).exists() and Path(source).name.startswith(".frame.tmp-")
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ImageIOError, match=r"frame\.exr.*Permission denied"):
        write_image(path, np.zeros_like(photo))

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["frame.exr"]


def test_target_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "frame.exr").mkdir()
    with pytest.raises(ImageIOError, match=r"frame\.exr"):
        write_image(tmp_path / "frame.exr", np.zeros((3, 2, 2), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["frame.exr"]
    assert (tmp_path / "frame.exr").is_dir()


def test_image_file_is_frozen(tmp_path: Path) -> None:
    write_image(tmp_path / "f.exr", np.zeros((3, 2, 2), np.float32))
    image = read_image(tmp_path / "f.exr")
    assert isinstance(image, ImageFile)
    with pytest.raises(AttributeError):
        image.channel_names = ("X",)  # type: ignore[misc]
