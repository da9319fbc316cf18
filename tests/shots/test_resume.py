"""``frameserve run`` resuming and stopping: outputs that exist, interrupts, atomic writes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.progress import FrameProgress
from frameserve.shots.backends import LocalBackend
from frameserve.shots.run import run_sequence
from tests.shots.plates import (
    FRAMES,
    CountingBackend,
    Plates,
    frameserve_run,
    hidden,
    identity_options,
    inodes,
    output,
    start_writer,
)


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


def test_run_sequence_in_process_counts_frames(plates: Plates, tmp_path: Path) -> None:
    backend = CountingBackend(LocalBackend(ModelRegistry()))
    spec = backend.describe("identity")
    stream = io.StringIO()
    report = run_sequence(
        backend, spec, identity_options(plates, tmp_path), progress=FrameProgress(stream)
    )
    assert (backend.calls, report.written, report.exit_code) == (5, list(FRAMES), 0)

    output(tmp_path, 1004).unlink()
    report = run_sequence(
        backend, spec, identity_options(plates, tmp_path), progress=FrameProgress(stream)
    )
    assert backend.calls == 6
    assert (report.written, report.existing) == ([1004], [1001, 1002, 1003, 1005])


def test_ctrl_c_stops_and_leaves_no_partial_files(plates: Plates, tmp_path: Path) -> None:
    backend = CountingBackend(LocalBackend(ModelRegistry()), interrupt_at=3)
    stream = io.StringIO()
    out = tmp_path / "out"
    out.mkdir()
    options = identity_options(plates, out, jobs=1)
    with pytest.raises(KeyboardInterrupt):
        run_sequence(backend, backend.describe("identity"), options, progress=FrameProgress(stream))
    assert sorted(p.name for p in out.iterdir()) == ["out.1001.exr", "out.1002.exr"]
    assert "interrupted: 5 frames: 2 written" in stream.getvalue()


def test_leftovers_of_killed_writers_are_removed_at_the_start(
    plates: Plates, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed, leftover = start_writer(out / "out.1003.exr")
    alive, in_progress = start_writer(out / "out.1004.exr")  # another run, still writing
    try:
        killed.kill()
        killed.wait(timeout=30)
        assert leftover.exists()
        backend = LocalBackend(ModelRegistry())
        report = run_sequence(backend, backend.describe("identity"), identity_options(plates, out))
        assert report.written == list(FRAMES)
        assert not leftover.exists()
        assert hidden(out) == [in_progress.name]  # a live writer's file is not touched
    finally:
        alive.kill()
        alive.wait(timeout=30)
