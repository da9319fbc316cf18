"""Tests for atomic writes: real files, real threads, and real child processes that get killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frameserve.media.atomic import (
    atomic_path,
    is_temporary,
    remove_leftovers,
    remove_pending,
    temporary_path,
    write_atomically,
    write_bytes_atomically,
)
from tests.support.paths import REPO

#: A child that starts an atomic write in FOLDER, says the temporary file's name, and waits.
WRITER = """
import sys, time
from pathlib import Path
from frameserve.media.atomic import atomic_path

with atomic_path(Path(sys.argv[1]) / "frame.0001.exr", sync=False) as temporary:
    temporary.write_bytes(b"half a frame")
    print(temporary, flush=True)
    time.sleep(600)
"""


def start_writer(folder: Path) -> tuple[subprocess.Popen[str], Path]:
    """Start a child process holding a temporary file in ``folder``; return it and the file."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    temporary = Path(child.stdout.readline().strip())
    assert temporary.is_file(), temporary
    return child, temporary


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes a test starts; killed and reaped at its end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# -- writing -------------------------------------------------------------------------------------


def test_write_bytes_replaces_the_target_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "queue.json"
    write_bytes_atomically(target, b"first")
    first = target.stat().st_ino
    write_bytes_atomically(target, b"second", sync=False)
    assert target.read_bytes() == b"second"
    assert target.stat().st_ino != first  # a new file renamed over the old one
    assert names(tmp_path) == ["queue.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "queue.json"
    target.write_bytes(b"good")

    def fail(stream: object) -> None:
        stream.write(b"half")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail)
    assert target.read_bytes() == b"good"
    assert names(tmp_path) == ["queue.json"]


def test_an_interrupt_in_the_block_removes_the_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "soft.1001.exr") as temporary:
        temporary.write_bytes(b"half a frame")
        raise KeyboardInterrupt
    assert names(tmp_path) == []


def test_the_temporary_name_is_hidden_beside_the_target_with_its_extension(
    tmp_path: Path,
) -> None:
    with atomic_path(tmp_path / "sub" / "soft.1001.exr", sync=False) as temporary:
        assert temporary.parent == tmp_path / "sub"  # the folder is made
        assert temporary.name.startswith(".soft.1001.tmp-")
        assert temporary.suffix == ".exr"  # libraries pick the format by extension
        assert is_temporary(temporary)
        temporary.write_bytes(b"frame")
    assert names(tmp_path / "sub") == ["soft.1001.exr"]
    assert is_temporary(temporary_path(tmp_path / "job"))  # no extension at all
    assert not is_temporary(tmp_path / ".hidden.exr")
    assert not is_temporary(tmp_path / "soft.tmp-12-abc.exr")  # not hidden


def test_a_block_that_writes_nothing_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "frame.exr"):
        pass
    assert names(tmp_path) == []


# -- writes in progress on other threads ---------------------------------------------------------


def test_remove_pending_removes_the_files_of_writes_in_progress(tmp_path: Path) -> None:
    writing, go_on = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with atomic_path(tmp_path / "frame.exr", sync=False) as temporary:
                temporary.write_bytes(b"half a frame")
                writing.set()
                go_on.wait(30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    assert writing.wait(30)
    assert len([name for name in names(tmp_path) if name.startswith(".frame.tmp-")]) == 1
    assert remove_pending() == 1
    assert names(tmp_path) == []
    go_on.set()
    thread.join(30)
    assert [type(error) for error in errors] == [FileNotFoundError]  # the rename found nothing
    assert names(tmp_path) == []  # no target either
    assert remove_pending() == 0  # the finished write is no longer pending


# -- leftovers of killed writers -----------------------------------------------------------------


def test_remove_leftovers_removes_what_killed_writers_left(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    killed, killed_file = start_writer(tmp_path)
    alive, alive_file = start_writer(tmp_path)
    children += [killed, alive]
    (tmp_path / ".notes.txt").write_text("a hidden file of someone else")
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed_file.exists()  # a killed process cannot clean up after itself

    assert remove_leftovers(tmp_path) == 1
    assert not killed_file.exists()
    assert alive_file.exists()  # another live process is still writing it
    assert (tmp_path / ".notes.txt").exists()
    alive.send_signal(signal.SIGKILL)
    alive.wait(timeout=30)
    assert remove_leftovers(tmp_path) == 1
    assert names(tmp_path) == [".notes.txt"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_killed_writer_not_yet_reaped_counts_as_gone(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    child, temporary = start_writer(tmp_path)
    children.append(child)
    os.kill(child.pid, signal.SIGKILL)  # no wait(): the child stays a zombie for now
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert remove_leftovers(tmp_path) == 1
    assert not temporary.exists()


def test_remove_leftovers_looks_into_subfolders_when_asked(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    nested = tmp_path / "shot" / "comp"
    nested.mkdir(parents=True)
    child, temporary = start_writer(nested)
    children.append(child)
    child.kill()
    child.wait(timeout=30)
    assert remove_leftovers(tmp_path) == 0
    assert remove_leftovers(tmp_path / "missing") == 0  # nothing to read: nothing removed
    assert remove_leftovers(tmp_path, recursive=True) == 1
    assert not temporary.exists()


def test_another_machines_files_are_kept_until_they_are_stale(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    """A shot folder on a file server: process ids of another machine mean nothing here."""
    child, mine = start_writer(tmp_path)
    children.append(child)
    child.kill()
    child.wait(timeout=30)
    host = mine.name.split(".tmp-")[1].split("-")[0]
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    theirs = tmp_path / mine.name.replace(f".tmp-{host}-", f".tmp-{other_host}-")
    theirs.write_bytes(b"another machine writes this frame right now")
    legacy = tmp_path / f".frame.0002.tmp-{child.pid}-0123456789ab.exr"  # no machine: this one
    legacy.write_bytes(b"left by an earlier version")
    assert all(is_temporary(path) for path in (mine, theirs, legacy))

    assert remove_leftovers(tmp_path) == 2  # this machine's, its writer gone
    assert names(tmp_path) == [theirs.name]
    an_hour_ago = time.time() - 3600
    os.utime(theirs, (an_hour_ago, an_hour_ago))
    assert remove_leftovers(tmp_path) == 0  # a day is the default
    assert remove_leftovers(tmp_path, stale_after=600) == 1
    assert names(tmp_path) == []
