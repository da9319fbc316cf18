"""``frameserve retime``: timing tables, copies at whole frames, in-betweens, resume.

The plate is a crop of the Sintel frames 9 and 11 written as scene-linear EXR frames 1001 and
1002 (with a data window, a display window and metadata), so a half-speed retime's frame 1002
can be compared with the real frame 10.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.main import main
from frameserve.engine.colour import SCENE_LINEAR, default_manager
from frameserve.errors import ConfigError
from frameserve.media.imageio import read_image, write_image
from frameserve.media.sequences import FramePattern
from frameserve.shots.backends import LocalBackend
from frameserve.shots.retime import (
    RetimeOptions,
    read_curve,
    retime_sequence,
    source_frames_of,
    speed_timing,
)
from tests.builtin_models.test_motion_vectors import sintel
from tests.support.servers import start_server

CROP = (slice(None), slice(150, 278), slice(300, 556))  # 128 x 256, where Sintel moves
DATA_WINDOW = (10, 20, 256, 128)
DISPLAY_WINDOW = (0, 0, 300, 200)
METADATA = {"Software": "frameserve tests", "shot": "sh010"}


def linear(frame: int) -> np.ndarray:
    """The Sintel crop of ``frame`` in scene-linear values, ``(3, 128, 256)``."""
    srgb = sintel(frame)[CROP].contiguous()
    return default_manager().convert(srgb, "srgb", SCENE_LINEAR).numpy()


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend(ModelRegistry([], builtins=True), device="cpu")


@pytest.fixture
def plate(tmp_path: Path) -> Path:
    folder = tmp_path / "plate"
    folder.mkdir()
    for number, source in ((1001, 9), (1002, 11)):
        write_image(
            folder / f"plate.{number}.exr",
            linear(source),
            metadata=METADATA,
            data_window=DATA_WINDOW,
            display_window=DISPLAY_WINDOW,
        )
    return folder


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    return 10.0 * math.log10(1.0 / float(((image - truth) ** 2).mean()))


def test_half_speed_copies_whole_frames_and_makes_the_in_between(
    plate: Path, tmp_path: Path, backend: LocalBackend
) -> None:
    out = tmp_path / "slow"
    argv = ["retime", "--input", str(plate / "plate.####.exr"), "--output"]
    argv += [str(out / "slow.####.exr"), "--speed", "0.5"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"slow.{n}.exr" for n in (1001, 1002, 1003)]
    written = {n: read_image(out / f"slow.{n}.exr") for n in (1001, 1002, 1003)}
    sources = {n: read_image(plate / f"plate.{n}.exr") for n in (1001, 1002)}
    # Whole source frames are copies: bit for bit.
    assert np.array_equal(written[1001].hwc, sources[1001].hwc)
    assert np.array_equal(written[1003].hwc, sources[1002].hwc)
    for image in written.values():
        assert (image.data_window, image.display_window) == (DATA_WINDOW, DISPLAY_WINDOW)
        assert METADATA.items() <= image.metadata.items()
    # The in-between is the model's answer for t = 0.5, and close to the real frame 10.
    expected, _ = backend.infer(
        "retime",
        {"a": sources[1001].hwc, "b": sources[1002].hwc},
        {"t": 0.5},
        colourspace=None,
    )
    np.testing.assert_allclose(written[1002].hwc, expected["image"], atol=1e-5)
    colour = default_manager()
    made = colour.convert(torch.from_numpy(written[1002].pixels), SCENE_LINEAR, "srgb")
    truth = sintel(10)[CROP].numpy()
    blend = 0.5 * (sintel(9)[CROP].numpy() + sintel(11)[CROP].numpy())
    quality, blended = psnr(made.numpy(), truth), psnr(blend, truth)
    print(f"\nretimed Sintel crop vs frame 10: {quality:.2f} dB (blend {blended:.2f} dB)")
    assert quality > blended + 1.0


def test_a_curve_file_and_a_frame_range(plate: Path, tmp_path: Path, backend: LocalBackend) -> None:
    curve = tmp_path / "ramp.txt"
    curve.write_text("frame,time\n# a speed ramp\n1,1001\n2,1001.25\n3 1001.75\n4\t1002\n")
    out = tmp_path / "ramp"
    argv = ["retime", "--input", str(plate / "plate.####.exr"), "--output"]
    argv += [str(out / "ramp.####.exr"), "--curve", str(curve), "--frames", "2,4"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ramp.0002.exr", "ramp.0004.exr"]
    a = read_image(plate / "plate.1001.exr").hwc
    b = read_image(plate / "plate.1002.exr").hwc
    expected, _ = backend.infer("retime", {"a": a, "b": b}, {"t": 0.25}, colourspace=None)
    np.testing.assert_allclose(read_image(out / "ramp.0002.exr").hwc, expected["image"], atol=1e-5)
    assert np.array_equal(read_image(out / "ramp.0004.exr").hwc, b)


def test_retime_on_a_server_makes_what_a_local_retime_makes(
    plate: Path, tmp_path: Path, backend: LocalBackend
) -> None:
    """``--server URL``: the in-between comes from a real server's retime model."""
    server = start_server(model_folders=(), isolation=False)
    try:
        host, port = server.http_address
        out = tmp_path / "served"
        argv = ["retime", "--input", str(plate / "plate.####.exr"), "--output"]
        argv += [str(out / "slow.####.exr"), "--speed", "0.5", "--server", f"http://{host}:{port}"]
        assert main(argv) == 0
    finally:
        server.close()
    a = read_image(plate / "plate.1001.exr").hwc
    b = read_image(plate / "plate.1002.exr").hwc
    expected, _ = backend.infer("retime", {"a": a, "b": b}, {"t": 0.5}, colourspace=None)
    np.testing.assert_allclose(read_image(out / "slow.1002.exr").hwc, expected["image"], atol=1e-4)
    assert np.array_equal(read_image(out / "slow.1003.exr").hwc, b)


def test_a_stopped_retime_resumes(plate: Path, tmp_path: Path, backend: LocalBackend) -> None:
    options = RetimeOptions(
        input=FramePattern.parse(plate / "plate.####.exr"),
        output=FramePattern.parse(tmp_path / "out.####.exr"),
        timing={1: 1001.0, 2: 1001.5, 3: 1002.0},
    )
    spec = backend.describe("retime")
    first = retime_sequence(backend, spec, options)
    assert (first.written, first.existing, first.exit_code) == ([1, 2, 3], [], 0)
    inode = (tmp_path / "out.0001.exr").stat().st_ino
    (tmp_path / "out.0002.exr").unlink()
    second = retime_sequence(backend, spec, options)
    assert (second.written, second.existing) == ([2], [1, 3])
    assert (tmp_path / "out.0001.exr").stat().st_ino == inode


def test_missing_sources_stop_before_any_work_or_are_skipped(
    plate: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    curve = tmp_path / "curve.txt"
    curve.write_text("1 1001\n2 1002.5\n")  # 1003 does not exist
    argv = ["retime", "--input", str(plate / "plate.####.exr"), "--output"]
    argv += [str(tmp_path / "o.####.exr"), "--curve", str(curve)]
    assert main(argv) == 2
    assert "plate.1003.exr" in capsys.readouterr().err
    assert not list(tmp_path.glob("o.*.exr"))
    assert main([*argv, "--skip-missing"]) == 0
    assert sorted(p.name for p in tmp_path.glob("o.*.exr")) == ["o.0001.exr"]


def test_bad_command_lines_say_what_is_wrong(
    plate: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["retime", "--input", str(plate / "plate.####.exr")]
    base += ["--output", str(tmp_path / "o.####.exr")]
    assert main([*base, "--speed", "0.5", "--knob", "t=0.3"]) == 2
    assert "knob 't' is set for each frame" in capsys.readouterr().err
    assert main([*base, "--speed", "0"]) == 2
    assert "--speed must be a number above 0" in capsys.readouterr().err
    assert main([*base, "--speed", "0.5", "--frames", "1-3"]) == 2
    assert "not in the timing" in capsys.readouterr().err
    assert main([*base, "--speed", "0.5", "--knob", "scale=3"]) != 0


def test_timing_tables() -> None:
    assert speed_timing([1001, 1002, 1003], 0.5) == {
        1001: 1001.0,
        1002: 1001.5,
        1003: 1002.0,
        1004: 1002.5,
        1005: 1003.0,
    }
    assert speed_timing(range(1001, 1006), 2.0, start=1) == {1: 1001.0, 2: 1003.0, 3: 1005.0}
    assert speed_timing([1, 2], 0.4) == {1: 1.0, 2: 1.4, 3: 1.8}
    assert source_frames_of(1001.0) == (1001, 1001, 0.0)
    assert source_frames_of(1001.00001) == (1001, 1001, 0.0)
    before, after, t = source_frames_of(1001.75)
    assert (before, after) == (1001, 1002) and t == pytest.approx(0.75)
    assert source_frames_of(-0.5)[:2] == (-1, 0)


def test_curve_files_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text("# exported from Nuke\n3 1001.5\n1 1001\n")
    assert read_curve(good) == {1: 1001.0, 3: 1001.5}
    for text, message in (
        ("1 1001\n2 x\n", "line 2: '2 x' is not two numbers"),
        ("1.5 1001\n", "must be a whole number"),
        ("1 1001\n1 1002\n", "frame 1 repeats"),
        ("# nothing\n", "has no OUTPUT_FRAME SOURCE_TIME lines"),
    ):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_curve(bad)
