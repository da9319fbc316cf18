"""``frameserve run`` when frames fail: it goes on, stops after failures in a row, or at once."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.progress import FrameProgress
from frameserve.errors import (
    ModelSetupError,
)
from frameserve.media.imageio import write_image
from frameserve.shots.backends import LocalBackend
from frameserve.shots.run import run_sequence
from tests.shots.plates import (
    FRAMES,
    Plates,
    frameserve_run,
    identity_options,
    output,
)


def test_a_failed_frame_is_logged_and_the_run_goes_on(
    plates: Plates,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # frame 1003 has two channels: the model needs three
    write_image(plates.folder / "plate.1003.exr", plates.pixels[1003][:2], channel_names=("Y", "A"))
    code = frameserve_run(
        "identity", "--input", plates.pattern, "--output", tmp_path / "out.####.exr",
        "--frames", "1001-1005",
    )  # fmt: skip
    assert code == 1
    assert not output(tmp_path, 1003).exists()
    assert all(output(tmp_path, frame).exists() for frame in (1001, 1002, 1004, 1005))
    assert "frame 1003 failed: input 'image' of model 'identity' needs 3 channel(s)" in caplog.text
    assert "4 written, 1 failed (1003)" in capsys.readouterr().err


def test_stop_after_failures_in_a_row(plates: Plates, tmp_path: Path) -> None:
    for frame in FRAMES:
        write_image(plates.folder / f"plate.{frame:04d}.exr", plates.pixels[frame][:2])
    backend = LocalBackend(ModelRegistry())
    stream = io.StringIO()
    options = identity_options(plates, tmp_path, jobs=1, stop_after=2)
    report = run_sequence(
        backend, backend.describe("identity"), options, progress=FrameProgress(stream)
    )
    assert (report.failed, report.stopped_early, report.exit_code) == ([1001, 1002], True, 1)
    assert "stopped early" in stream.getvalue()


def test_an_error_every_frame_would_hit_stops_the_run(
    plates: Plates, tmp_path: Path, extra_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ModelSetupError, match=r"weights\.pth"):
        frameserve_run(
            "bad_setup", "--models", extra_models, "--input", plates.pattern,
            "--output", tmp_path / "o.####.exr", "--jobs", "1",
        )  # fmt: skip
    assert "frameserve run: stopped: 5 frames: 0 written" in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*"))
