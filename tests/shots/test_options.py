"""``frameserve run`` options: patterns, frames, inputs, channels, checks before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from frameserve.cli.run import parse_channels
from frameserve.errors import (
    ColourError,
    ConfigError,
    KnobError,
)
from frameserve.media.imageio import read_image
from tests.shots.plates import (
    Plates,
    frameserve_run,
    output,
)


@pytest.mark.parametrize(
    ("input_pattern", "output_pattern"),
    [("plate.%04d.exr", "out.@@@@.exr"), ("plate.@@@@.exr", "out.%04d.exr")],
)
def test_printf_and_at_patterns(
    plates: Plates, tmp_path: Path, input_pattern: str, output_pattern: str
) -> None:
    code = frameserve_run(
        "identity", "--input", plates.folder / input_pattern, "--output", tmp_path / output_pattern,
        "--frames", "1002-1004x2",
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("out.*")) == ["out.1002.exr", "out.1004.exr"]
    assert np.array_equal(read_image(output(tmp_path, 1004)).pixels, plates.pixels[1004])


def test_frames_default_to_the_files_on_disk(plates: Plates, tmp_path: Path) -> None:
    (plates.folder / "plate.1003.exr").unlink()
    out = tmp_path / "out"
    assert frameserve_run("identity", "--input", plates.pattern, "--output", out / "o.#.exr") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "o.1001.exr", "o.1002.exr", "o.1004.exr", "o.1005.exr",
    ]  # fmt: skip


def test_two_input_model_needs_every_input(plates: Plates, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs a sequence for input\(s\) 'b': add --input b="):
        frameserve_run("difference", "--input", plates.pattern, "--output", tmp_path / "d.#.exr")
    with pytest.raises(ConfigError, match="'a' already has a sequence; name each input"):
        frameserve_run(
            "difference", "--input", plates.pattern, "--input", plates.pattern,
            "--output", tmp_path / "d.#.exr",
        )  # fmt: skip


def test_missing_input_stops_before_any_work(plates: Plates, tmp_path: Path) -> None:
    (plates.folder / "plate.1002.exr").unlink()
    (plates.folder / "plate.1004.exr").unlink()
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as caught:
        frameserve_run(
            "identity", "--input", plates.pattern, "--output", out / "out.####.exr",
            "--frames", "1001-1005",
        )  # fmt: skip
    message = str(caught.value)
    assert "2 input file(s) missing for 2 frame(s) (1002,1004)" in message
    assert str(plates.folder / "plate.1002.exr") in message
    assert str(plates.folder / "plate.1004.exr") in message
    assert "--skip-missing" in message
    assert not out.exists()  # nothing was processed


def test_skip_missing_processes_the_others(
    plates: Plates, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (plates.folder / "plate.1002.exr").unlink()
    code = frameserve_run(
        "identity", "--input", plates.pattern, "--output", tmp_path / "out.####.exr",
        "--frames", "1001-1005", "--skip-missing",
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("out.*")) == [
        "out.1001.exr", "out.1003.exr", "out.1004.exr", "out.1005.exr",
    ]  # fmt: skip
    assert "skipping 1 frame(s) with missing inputs (1002)" in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rgb", ("R", "G", "B")),
        ("RGBA", ("R", "G", "B", "A")),
        ("R,G,B,A", ("R", "G", "B", "A")),
        (" R, G ,B ", ("R", "G", "B")),
        ("diffuse", ("diffuse.R", "diffuse.G", "diffuse.B")),
        ("diffuse.rgba", ("diffuse.R", "diffuse.G", "diffuse.B", "diffuse.A")),
        ("Z", ("Z",)),
        ("depth.Z", ("depth.Z",)),
        ("mask,", ("mask",)),
    ],
)
def test_parse_channels(text: str, expected: tuple[str, ...]) -> None:
    assert parse_channels(text) == expected


@pytest.mark.parametrize(
    ("text", "message"), [("", "is empty"), (",", "is empty"), ("R,R", "twice")]
)
def test_parse_channels_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_channels(text)


@pytest.mark.parametrize(
    ("extra", "error", "message"),
    [
        (["--knob", "size=300"], KnobError, "300 is above the maximum 100"),
        (["--knob", "sharpness=1"], KnobError, "unknown knob 'sharpness'"),
        (["--frames", "1005-1001"], ConfigError, "starts after it ends"),
        (["--jobs", "0"], ConfigError, "--jobs must be at least 1"),
    ],
)
def test_bad_arguments_fail_before_any_work(
    plates: Plates, tmp_path: Path, extra: list[str], error: type[Exception], message: str
) -> None:
    argv = ["blur", "--input", plates.pattern, "--output", tmp_path / "o.####.exr", *extra]
    with pytest.raises(error, match=message):
        frameserve_run(*argv)
    assert not list(tmp_path.glob("o.*"))


def test_unknown_colourspace_stops_the_run(plates: Plates, tmp_path: Path) -> None:
    with pytest.raises(ColourError, match="not_a_colourspace"):
        frameserve_run(
            "identity", "--input", plates.pattern, "--output", tmp_path / "o.####.exr",
            "--colourspace", "not_a_colourspace",
        )  # fmt: skip
    assert not list(tmp_path.glob("o.*"))


def test_output_checks(plates: Plates, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="would overwrite input 'image'"):
        frameserve_run("identity", "--input", plates.pattern, "--output", plates.pattern)
    with pytest.raises(ConfigError, match=r"cannot write \.mov; the extension must be one of"):
        frameserve_run("identity", "--input", plates.pattern, "--output", tmp_path / "o.#.mov")
