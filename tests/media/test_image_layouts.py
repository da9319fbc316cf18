"""Tests for the two pixel layouts of image files: ``(H, W, C)`` as stored, ``(C, H, W)`` inside.

A frame read keeps the file's interleaved order (``ImageFile.hwc``); the internal form is one
copy away (``pixels``) or a view (``chw_view``); ``write_image`` takes either layout.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from frameserve.errors import ImageIOError
from frameserve.media.imageio import LAYOUTS, read_image, write_image

Frame = npt.NDArray[np.float32]


@pytest.fixture
def planar() -> Frame:
    """A (4, 21, 35) frame with every value different, negatives and values above 1."""
    values = np.arange(4 * 21 * 35, dtype=np.float32).reshape(4, 21, 35)
    return (values - 1000.0) / 997.0


def test_read_keeps_the_files_order_and_makes_the_internal_form_on_demand(
    tmp_path: Path, planar: Frame
) -> None:
    write_image(tmp_path / "f.exr", planar, channel_names=("R", "G", "B", "A"))
    image = read_image(tmp_path / "f.exr")
    assert image.hwc.shape == (21, 35, 4) and image.hwc.dtype == np.float32
    assert image.hwc.flags.c_contiguous
    assert image.size == (21, 35)
    np.testing.assert_array_equal(image.hwc, planar.transpose(1, 2, 0))

    view = image.chw_view()
    assert view.shape == (4, 21, 35) and np.shares_memory(view, image.hwc)  # no copy
    pixels = image.pixels
    assert pixels.flags.c_contiguous and not np.shares_memory(pixels, image.hwc)
    np.testing.assert_array_equal(pixels, planar)
    assert image.pixels is pixels  # made once


def test_a_scattered_channel_choice_is_gathered_once(tmp_path: Path, planar: Frame) -> None:
    write_image(tmp_path / "f.exr", planar, channel_names=("R", "G", "B", "A"))
    image = read_image(tmp_path / "f.exr", channels=("A", "G"))
    assert image.channel_names == ("A", "G")
    assert image.hwc.flags.c_contiguous
    np.testing.assert_array_equal(image.pixels, planar[[3, 1]])


@pytest.mark.parametrize("extension", [".exr", ".tif", ".png"])
def test_both_layouts_write_the_same_file(tmp_path: Path, planar: Frame, extension: str) -> None:
    frame = np.clip(planar, 0.0, 1.0) if extension != ".exr" else planar
    names = ("R", "G", "B", "A")
    write_image(tmp_path / f"chw{extension}", frame, channel_names=names)
    write_image(
        tmp_path / f"hwc{extension}",
        np.ascontiguousarray(frame.transpose(1, 2, 0)),
        channel_names=names,
        layout="HWC",
    )
    chw, hwc = (read_image(tmp_path / f"{name}{extension}") for name in ("chw", "hwc"))
    np.testing.assert_array_equal(hwc.hwc, chw.hwc)
    assert hwc.channel_names == chw.channel_names


def test_a_read_frame_is_written_back_as_it_was(tmp_path: Path, planar: Frame) -> None:
    write_image(
        tmp_path / "in.exr",
        planar,
        data_window=(3, 5, 35, 21),
        display_window=(0, 0, 64, 32),
        metadata={"shot": "sh010"},
    )
    image = read_image(tmp_path / "in.exr")
    write_image(
        tmp_path / "out.exr",
        image.hwc,
        layout="HWC",
        data_window=image.data_window,
        display_window=image.display_window,
        metadata=image.metadata,
    )
    again = read_image(tmp_path / "out.exr")
    np.testing.assert_array_equal(again.pixels, planar)
    assert (again.data_window, again.display_window) == ((3, 5, 35, 21), (0, 0, 64, 32))
    assert again.metadata["shot"] == "sh010"


def test_views_and_unaligned_buffers_are_written_correctly(tmp_path: Path, planar: Frame) -> None:
    """What arrives over HTTP may start at any byte of the answer; views may have any strides."""
    interleaved = np.ascontiguousarray(planar.transpose(1, 2, 0))
    raw = bytearray(1 + interleaved.nbytes)
    raw[1:] = interleaved.tobytes()
    unaligned = np.frombuffer(raw, np.float32, offset=1).reshape(interleaved.shape)
    assert not unaligned.flags.aligned
    write_image(tmp_path / "unaligned.exr", unaligned, layout="HWC")
    write_image(tmp_path / "view.exr", planar.transpose(1, 2, 0), layout="HWC")  # strided
    write_image(tmp_path / "float64.exr", interleaved.astype(np.float64), layout="HWC")
    for name in ("unaligned", "view", "float64"):
        np.testing.assert_array_equal(read_image(tmp_path / f"{name}.exr").pixels, planar)


def test_clipping_is_counted_the_same_in_both_layouts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    planar = np.full((3, 2, 2), 0.5, np.float32)
    planar[0, 0] = [1.5, -0.25]
    planar[2, 1, 1] = np.nan
    before = planar.copy()
    with caplog.at_level(logging.WARNING):
        write_image(tmp_path / "chw.png", planar)
        write_image(tmp_path / "hwc.png", planar.transpose(1, 2, 0), layout="HWC")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert all("2 of 12 values clipped" in m and "1 NaN" in m for m in messages)
    np.testing.assert_array_equal(planar, before)  # the caller's array is not clipped
    np.testing.assert_array_equal(
        read_image(tmp_path / "hwc.png").pixels, read_image(tmp_path / "chw.png").pixels
    )


def test_values_in_range_need_no_warning_in_either_layout(
    tmp_path: Path, planar: Frame, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        write_image(tmp_path / "a.exr", planar, pixel_type="half")
        write_image(tmp_path / "b.exr", planar.transpose(1, 2, 0), layout="HWC")
    assert caplog.records == []


def test_layout_errors(tmp_path: Path) -> None:
    assert LAYOUTS == ("CHW", "HWC")
    with pytest.raises(ImageIOError, match="layout 'WHC' is not one of 'CHW', 'HWC'"):
        write_image(tmp_path / "a.exr", np.zeros((2, 2, 3), np.float32), layout="WHC")  # type: ignore[arg-type]
    with pytest.raises(ImageIOError, match=r"\(H, W, C\).*shape \(2, 2\)"):
        write_image(tmp_path / "a.exr", np.zeros((2, 2), np.float32), layout="HWC")
    with pytest.raises(ImageIOError, match="JPEG stores 1, 3 channels, the frame has 4"):
        write_image(tmp_path / "a.jpg", np.zeros((3, 5, 4), np.float32), layout="HWC")
    assert list(tmp_path.iterdir()) == []
