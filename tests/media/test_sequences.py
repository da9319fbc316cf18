"""Tests for frame-number patterns and frame ranges (``frameserve.media.sequences``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from frameserve.errors import ConfigError
from frameserve.media.sequences import MAX_FRAMES, FramePattern, format_frames, parse_frames

# -- patterns ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "frame", "expected"),
    [
        ("plate.####.exr", 1001, "plate.1001.exr"),
        ("plate.####.exr", 7, "plate.0007.exr"),
        ("plate.####.exr", 12345, "plate.12345.exr"),
        ("plate.@@@@.exr", 7, "plate.0007.exr"),
        ("plate.%04d.exr", 7, "plate.0007.exr"),
        ("plate.%d.exr", 7, "plate.7.exr"),
        ("plate.#.exr", 7, "plate.7.exr"),
        ("plate.@.exr", 1001, "plate.1001.exr"),
        ("plate.%08d.exr", 1001, "plate.00001001.exr"),
        ("shots/sh010/plate_###.dpx", 5, "shots/sh010/plate_005.dpx"),
        ("frame####", 3, "frame0003"),
    ],
)
def test_pattern_paths(text: str, frame: int, expected: str) -> None:
    pattern = FramePattern.parse(text)
    assert pattern.path(frame) == Path(expected)
    assert pattern.name(frame) == expected
    assert str(pattern) == text


def test_hashes_and_ats_are_the_same() -> None:
    hashes, ats, printf = (
        FramePattern.parse(t) for t in ("a.####.exr", "a.@@@@.exr", "a.%04d.exr")
    )
    for frame in (0, 7, 1001, 99999, -3):
        assert hashes.path(frame) == ats.path(frame) == printf.path(frame)
    assert (hashes.prefix, hashes.padding, hashes.suffix) == ("a.", 4, ".exr")


@pytest.mark.parametrize(
    ("text", "frame", "expected"),
    [
        ("a.####.exr", -1, "a.-001.exr"),  # the sign counts toward the width, as in printf
        ("a.####.exr", -1234, "a.-1234.exr"),
        ("a.%d.exr", -5, "a.-5.exr"),
        ("a.#.exr", 0, "a.0.exr"),
    ],
)
def test_negative_and_zero_frames(text: str, frame: int, expected: str) -> None:
    assert FramePattern.parse(text).name(frame) == expected


def test_printf_percent_escape() -> None:
    pattern = FramePattern.parse("grade_100%%.%03d.exr")
    assert pattern.name(7) == "grade_100%.007.exr"
    # in a '#' pattern a percent sign is just a character
    assert FramePattern.parse("50%.####.exr").name(1) == "50%.0001.exr"


def test_accepts_path_objects() -> None:
    assert FramePattern.parse(Path("dir") / "a.####.exr").path(2) == Path("dir/a.0002.exr")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plate.exr", "has no frame number"),
        ("plate.100%%.exr", "has no frame number"),
        ("sh_####/plate.####.exr", "2 frame-number fields"),
        ("plate.##.%04d.exr", "2 frame-number fields"),
        ("plate.@@#.exr", "2 frame-number fields"),
        ("plate.%4d.exr", "'%4d' is not a frame number field"),
        ("plate.%-4d.exr", "'%-4d'"),
        ("plate.%+d.exr", "'%+d'"),
    ],
)
def test_pattern_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        FramePattern.parse(text)
    assert repr(text) in str(caught.value)


def test_frames_on_disk(tmp_path: Path) -> None:
    for name in (
        "a.0007.exr",
        "a.1001.exr",
        "a.12345.exr",
        "a.7.exr",
        "a.0008.exr.tmp",
        "b.0001.exr",
    ):
        (tmp_path / name).touch()
    (tmp_path / ".a.0009.tmp-1234.exr").touch()  # an atomic write in progress
    assert FramePattern.parse(tmp_path / "a.####.exr").frames_on_disk() == [7, 1001, 12345]
    assert FramePattern.parse(tmp_path / "a.%d.exr").frames_on_disk() == [7, 1001, 12345]
    assert FramePattern.parse(tmp_path / "missing" / "a.####.exr").frames_on_disk() == []
    with pytest.raises(ConfigError, match="folder name"):
        FramePattern.parse(tmp_path / "sh_####" / "a.exr").frames_on_disk()


# -- ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1050", [1050]),
        ("1001-1005", [1001, 1002, 1003, 1004, 1005]),
        ("1001-1010x3", [1001, 1004, 1007, 1010]),
        ("1001-1009x3", [1001, 1004, 1007]),
        ("1,5,10-12", [1, 5, 10, 11, 12]),
        ("10-12, 1 5", [1, 5, 10, 11, 12]),  # spaces separate too; sorted
        ("3,1-4,2", [1, 2, 3, 4]),  # repeats once
        ("-3--1", [-3, -2, -1]),
        ("-2-1", [-2, -1, 0, 1]),
        ("7-7", [7]),
        (" 0 ", [0]),
    ],
)
def test_parse_frames(text: str, expected: list[int]) -> None:
    assert parse_frames(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        (" , ", "is empty"),
        ("abc", "'abc' is not a frame or range"),
        ("1-5,x", "'x' is not a frame or range"),
        ("1001-", "'1001-' is not a frame or range"),
        ("1-10x", "'1-10x' is not a frame or range"),
        ("1.5", "'1.5' is not a frame or range"),
        ("1100-1001", "'1100-1001' starts after it ends; write 1001-1100"),
        ("1-10x0", "'1-10x0' has step 0"),
        (f"1-{MAX_FRAMES + 1}", "more than"),
    ],
)
def test_parse_frames_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_frames(text)


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([], ""),
        ([5], "5"),
        ([1, 2, 3, 7], "1-3,7"),
        ([3, 1, 2, 2], "1-3"),
        ([-2, -1, 4, 6], "-2--1,4,6"),
    ],
)
def test_format_frames(frames: list[int], expected: str) -> None:
    assert format_frames(frames) == expected
    if frames:
        assert parse_frames(expected) == sorted(set(frames))
