"""Tests for ``frameserve run``: image sequences through a model, in-process and on a server.

Plates are crops of real photographs (scikit-image's astronaut, coffee and chelsea) stored as
scene-linear EXR sequences (values up to 2), small so that the whole module runs in seconds.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import OpenImageIO as oiio
import pytest
import skimage.data
import torch

from frameserve.builtin_models.blur.model import gaussian_blur
from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.progress import Progress
from frameserve.cli.run import add_run_parser, parse_channels
from frameserve.engine.colour import SCENE_LINEAR, default_manager
from frameserve.errors import (
    ColourError,
    ConfigError,
    FrameServeError,
    KnobError,
    ModelSetupError,
)
from frameserve.media.imageio import read_image, write_image
from frameserve.media.sequences import FramePattern
from frameserve.plugin.model import ModelSpec
from frameserve.serve.server import FrameServer
from frameserve.serve.settings import ServerSettings
from frameserve.shots.backends import LocalBackend, knob_spec_from_config
from frameserve.shots.run import RunOptions, RunReport, run_sequence
from tests.support.paths import REPO, TEST_MODELS

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


# -- plates ------------------------------------------------------------------------------------


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


@pytest.fixture
def plates(tmp_path: Path) -> Plates:
    return write_plates(tmp_path / "plates")


@pytest.fixture(scope="session")
def extra_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run_models")
    for name, source in EXTRA_MODELS.items():
        (root / name).mkdir()
        (root / name / "model.py").write_text(source)
    return root


@pytest.fixture(autouse=True)
def _no_env_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAMESERVE_MODELS", raising=False)


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


# -- local runs --------------------------------------------------------------------------------


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


def test_resume_recomputes_only_missing_outputs(
    plates: Plates, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["identity", "--input", plates.pattern, "--output", tmp_path / "out.####.exr"]
    argv += ["--frames", "1001-1005"]
    assert frameserve_run(*argv) == 0
    paths = [output(tmp_path, frame) for frame in FRAMES]
    before = inodes(paths)
    paths[2].unlink()
    capsys.readouterr()

    assert frameserve_run(*argv) == 0
    after = inodes(paths)
    assert [after[i] for i in (0, 1, 3, 4)] == [before[i] for i in (0, 1, 3, 4)]  # untouched
    assert paths[2].exists()
    assert "1 written, 4 skipped (outputs exist)" in capsys.readouterr().err

    assert frameserve_run(*argv, "--overwrite") == 0
    # an atomic write makes a new file beside the old one: every inode changes
    assert all(a != o for a, o in zip(after, inodes(paths), strict=True))
    assert "5 written" in capsys.readouterr().err


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


def test_run_sequence_in_process_counts_frames(plates: Plates, tmp_path: Path) -> None:
    backend = CountingBackend(LocalBackend(ModelRegistry()))
    spec = backend.describe("identity")
    stream = io.StringIO()
    report = run_sequence(backend, spec, identity_options(plates, tmp_path), stream=stream)
    assert (backend.calls, report.written, report.exit_code) == (5, list(FRAMES), 0)

    output(tmp_path, 1004).unlink()
    report = run_sequence(backend, spec, identity_options(plates, tmp_path), stream=stream)
    assert backend.calls == 6
    assert (report.written, report.existing) == ([1004], [1001, 1002, 1003, 1005])


def test_ctrl_c_stops_and_leaves_no_partial_files(plates: Plates, tmp_path: Path) -> None:
    backend = CountingBackend(LocalBackend(ModelRegistry()), interrupt_at=3)
    stream = io.StringIO()
    out = tmp_path / "out"
    out.mkdir()
    options = identity_options(plates, out, jobs=1)
    with pytest.raises(KeyboardInterrupt):
        run_sequence(backend, backend.describe("identity"), options, stream=stream)
    assert sorted(p.name for p in out.iterdir()) == ["out.1001.exr", "out.1002.exr"]
    assert "interrupted: 5 frames: 2 written" in stream.getvalue()


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
    report = run_sequence(backend, backend.describe("identity"), options, stream=stream)
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


def test_two_input_model_needs_every_input(plates: Plates, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs a sequence for input\(s\) 'b': add --input b="):
        frameserve_run("difference", "--input", plates.pattern, "--output", tmp_path / "d.#.exr")
    with pytest.raises(ConfigError, match="'a' already has a sequence; name each input"):
        frameserve_run(
            "difference", "--input", plates.pattern, "--input", plates.pattern,
            "--output", tmp_path / "d.#.exr",
        )  # fmt: skip


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


# -- progress ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_log_prints_a_line_every_interval() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(10, stream=stream, tty=False, interval=5.0, clock=clock)
    progress.skip(2)
    clock.now += 2.0
    progress.done()
    progress.draw()
    assert stream.getvalue() == ""  # less than 5 s since the start
    clock.now += 3.0
    progress.done()
    progress.failed()
    progress.draw()
    line = stream.getvalue()
    assert line.count("\n") == 1 and "\r" not in line
    assert "5/10 frames  0.60 frames/s  ETA 0:00:08  skipped 2  failed 1" in line
    report = RunReport(total=10, written=[1, 2], existing=[3, 4], failed=[5, 7], seconds=5.0)
    progress.finish(report)
    assert stream.getvalue().splitlines()[-1] == (
        "frameserve run: done: 10 frames: 2 written, 2 skipped (outputs exist), "
        "2 failed (5,7) in 0:00:05 (0.40 frames/s)"
    )


def test_progress_on_a_terminal_redraws_in_place() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(4, stream=stream, tty=True, clock=clock)
    clock.now += 1.0
    progress.done()
    progress.draw()
    progress.draw()  # at most ten redraws a second
    clock.now += 0.5
    progress.draw()
    assert stream.getvalue().count("\r") == 2 and "\n" not in stream.getvalue()
    assert "[#####...............] 1/4 frames" in stream.getvalue()
    progress.clear()
    assert stream.getvalue().endswith("\r\x1b[K")


# -- server runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrameServer]:
    root = tmp_path_factory.mktemp("server_models")
    for name, source in EXTRA_MODELS.items():
        (root / name).mkdir()
        (root / name / "model.py").write_text(source)
    settings = ServerSettings(
        port=0, http_port=0, model_folders=(TEST_MODELS, root), read_timeout=5.0
    )
    server = FrameServer(settings).start()
    yield server
    server.close()


def server_url(server: FrameServer) -> str:
    return str(server.http_url)


def test_server_blur_matches_local(
    plates: Plates, tmp_path: Path, http_server: FrameServer
) -> None:
    common = ["--input", plates.pattern, "--frames", "1001-1005", "--knob", "size=1.5"]
    common += ["--knob", "brightest=true", "--colourspace", "srgb"]
    assert frameserve_run("blur", *common, "--output", tmp_path / "local.####.exr") == 0
    code = frameserve_run(
        "blur", *common, "--output", tmp_path / "remote.####.exr",
        "--server", server_url(http_server), "--jobs", "3",
    )  # fmt: skip
    assert code == 0
    for frame in FRAMES:
        local = read_image(output(tmp_path, frame, "local"))
        remote = read_image(output(tmp_path, frame, "remote"))
        np.testing.assert_allclose(remote.pixels, local.pixels, rtol=0, atol=1e-6)
        assert remote.data_window == DATA_WINDOW
        local_objects = json.loads(output(tmp_path, frame, "local", "json").read_text())
        remote_objects = json.loads(output(tmp_path, frame, "remote", "json").read_text())
        assert remote_objects == local_objects


def test_server_two_inputs_and_rgba(
    tmp_path: Path, http_server: FrameServer, extra_models: Path
) -> None:
    left = write_plates(tmp_path / "left", "left", rgba=True)
    right = write_plates(tmp_path / "right", "right", shift=2)
    url = server_url(http_server)
    code = frameserve_run(
        "difference", "--server", url, "--input", f"a={left.pattern}",
        "--input", f"b={right.pattern}", "--output", tmp_path / "diff.####.exr",
        "--frames", "1001-1003", "--channels", "R,G,B",
    )  # fmt: skip
    assert code == 0
    expected = np.abs(left.pixels[1002][:3] - right.pixels[1002])
    result = read_image(output(tmp_path, 1002, "diff")).pixels
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)

    code = frameserve_run(
        "rgba_identity", "--server", url, "--input", left.pattern, "--channels", "rgba",
        "--output", tmp_path / "rgba.####.exr", "--frames", "1001-1002",
    )  # fmt: skip
    assert code == 0
    assert np.array_equal(read_image(output(tmp_path, 1001, "rgba")).pixels, left.pixels[1001])


def test_server_knobs_are_parsed_with_the_served_specs(
    plates: Plates, tmp_path: Path, http_server: FrameServer
) -> None:
    url = server_url(http_server)
    argv = ["knobby", "--server", url, "--input", plates.pattern, "--frames", "1001"]
    argv += ["--output", tmp_path / "k.####.exr"]
    with pytest.raises(KnobError, match="9 is above the maximum 4"):
        frameserve_run(*argv, "--knob", "gain=9")
    with pytest.raises(KnobError, match="choose one of 'fast', 'best'"):
        frameserve_run(*argv, "--knob", "mode=slow")
    code = frameserve_run(
        *argv, "--knob", "gain=0.5", "--knob", "steps=3", "--knob", "mode=best",
        "--knob", "invert=on", "--knob", "note=shot 10", "--knob", "report=1",
    )  # fmt: skip
    assert code == 0
    objects = json.loads(output(tmp_path, 1001, "k", "json").read_text())
    assert objects[0]["records"][0] == {
        "invert": True, "steps": 3, "gain": 0.5, "note": "shot 10", "mode": "best", "report": True,
    }  # fmt: skip
    np.testing.assert_allclose(
        read_image(output(tmp_path, 1001, "k")).pixels, -0.5 * plates.pixels[1001], atol=1e-6
    )


def test_server_unknown_model(plates: Plates, tmp_path: Path, http_server: FrameServer) -> None:
    with pytest.raises(FrameServeError, match="nothing_here"):
        frameserve_run(
            "nothing_here", "--server", server_url(http_server), "--input", plates.pattern,
            "--output", tmp_path / "o.####.exr",
        )  # fmt: skip


def test_knob_specs_from_server_config_round_trip() -> None:
    spec = ModelRegistry([TEST_MODELS]).get("knobby").spec
    assert spec is not None
    for knob in spec.knobs:
        rebuilt = knob_spec_from_config(knob.describe())
        assert type(rebuilt) is type(knob)
        assert rebuilt.describe() == knob.describe()
    unknown = knob_spec_from_config({"name": "colour", "type": "rgb", "default": [1, 0, 0]})
    assert unknown.parse_text("1 0 0") == "1 0 0"  # sent as text, checked by the server


def test_server_backend_is_the_only_user_of_the_http_client() -> None:
    """The local path never imports frameserve.client."""
    code = (
        "import sys, frameserve.cli.run\n"
        "assert 'frameserve.client' not in sys.modules, 'local path imported the client'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# -- the real command --------------------------------------------------------------------------


def test_command_line(plates: Plates, tmp_path: Path) -> None:
    (plates.folder / "plate.1005.exr").unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env.pop("FRAMESERVE_MODELS", None)
    base = [sys.executable, "-m", "frameserve", "run", "blur", "--input", plates.pattern]
    good = [*base, "--output", str(tmp_path / "soft.####.exr"), "--frames", "1001-1004"]
    bad = [*base, "--output", str(tmp_path / "bad.####.exr"), "--frames", "1001-1005"]
    started = [
        subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for args in ([*good, "--knob", "size=2"], bad)
    ]
    good_err, bad_err = (process.communicate(timeout=120)[1] for process in started)
    good_code, bad_code = (process.returncode for process in started)
    assert good_code == 0, good_err
    assert "done: 4 frames: 4 written" in good_err
    expected = gaussian_blur(torch.from_numpy(plates.pixels[1004]), 2.0).numpy()
    np.testing.assert_allclose(
        read_image(output(tmp_path, 1004, "soft")).pixels, expected, atol=1e-6
    )
    assert bad_code == 2
    assert "frameserve run: 1 input file(s) missing for 1 frame(s) (1005)" in bad_err
    assert "Traceback" not in bad_err
    assert not list(tmp_path.glob("bad.*"))
