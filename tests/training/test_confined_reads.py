"""Training reads files only inside the data roots: attacks on a real server, and the refusals.

Each test names files a client should not reach (outside the roots, through links, relative to
the server's working folder, FIFOs, devices) and checks the answer is a prompt 400 that says
the same thing whether the file exists or not, quotes nothing of any file, and that no job,
folder or reader was left behind.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from frameserve.serve.server import FrameServer
from tests.support.servers import start_server
from tests.training.helpers import (
    ANSWER_GUARD,
    LIVENESS_BOUND,
    SETTINGS,
    api,
    door_answer_times,
    files_under,
    write_pairs,
)

FAST = {**SETTINGS, "steps": 2}


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """A data root with a pair of frames, and a folder outside it with a secret and frames."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    write_pairs(root, 1)
    write_pairs(outside, 1)
    (outside / "secret.csv").write_text("api_token,s3cr3t-value\n")
    return root, outside


@pytest.fixture
def server(tmp_path: Path, roots: tuple[Path, Path]) -> Iterator[FrameServer]:
    running = start_server(
        jobs_folder=tmp_path / "jobs", reload_interval=None, data_roots=(roots[0],)
    )
    yield running
    running.close()


def refused(server: FrameServer, body: dict[str, object]) -> str:
    """POST ``body`` as a job; assert a 400 that creates nothing; return the message."""
    status, answer = api(server, "POST", "/v2/training/jobs", body)
    assert status == 400, (body, answer)
    assert files_under(server.jobs.folder) == [], "a refused job left files behind"
    status, listed = api(server, "GET", "/v2/training/jobs")
    assert status == 200 and listed["jobs"] == []
    return str(answer["error"])


def same_refusal(first: str, second: str, first_name: str, second_name: str) -> None:
    """The two messages differ only in the name they quote."""
    assert first.replace(first_name, "NAME") == second.replace(second_name, "NAME")


def test_a_file_outside_the_roots_is_refused_like_a_missing_one(
    server: FrameServer, roots: tuple[Path, Path]
) -> None:
    root, outside = roots
    inside = str(root / "in.1001.exr")
    secret = str(outside / "in.1001.exr")
    missing = str(root / "no.1001.exr")
    outside_message = refused(server, {"name": "x", "pairs": [[secret, inside]]})
    missing_message = refused(server, {"name": "x", "pairs": [[missing, inside]]})
    assert secret in outside_message and "no such file in the data roots" in outside_message
    same_refusal(outside_message, missing_message, secret, missing)
    assert str(root) in outside_message  # where files may be named, never what is outside
    up_and_out = str(root / ".." / "outside" / "in.1001.exr")  # ../ does not escape either
    same_refusal(
        refused(server, {"name": "x", "pairs": [[up_and_out, inside]]}),
        missing_message,
        up_and_out,
        missing,
    )


def test_a_link_out_of_the_roots_is_refused(server: FrameServer, roots: tuple[Path, Path]) -> None:
    root, outside = roots
    (root / "link.exr").symlink_to(outside / "in.1001.exr")
    (root / "shows").symlink_to(outside)
    for name in (root / "link.exr", root / "shows" / "in.1001.exr"):
        message = refused(server, {"name": "x", "pairs": [[str(name), str(name)]]})
        assert "no such file in the data roots" in message
    (root / "inner.exr").symlink_to(root / "in.1001.exr")  # a link that stays inside is fine
    status, job = api(
        server,
        "POST",
        "/v2/training/jobs",
        {"name": "linked", "pairs": [[str(root / "inner.exr"), str(root / "gt.1001.exr")]],
         "settings": FAST},
    )  # fmt: skip
    assert status == 201, job


def test_relative_paths_are_not_resolved_against_the_working_folder(
    server: FrameServer, roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = roots
    monkeypatch.chdir(root)  # the file is there: a relative path must still not reach it
    message = refused(server, {"name": "x", "pairs": [["in.1001.exr", "gt.1001.exr"]]})
    assert "absolute path" in message and "in.1001.exr" in message


def test_folders_outside_the_roots_are_not_listed(
    server: FrameServer, roots: tuple[Path, Path]
) -> None:
    root, outside = roots
    for body in (
        {"name": "x", "labels": "/root", "validation": "/"},
        {"name": "x", "labels": "/"},
        {"name": "x", "labels": str(outside)},
        {"name": "x", "labels": str(root), "validation": "/"},
    ):
        message = refused(server, body)
        assert "no such folder in the data roots" in message or "class folders" in message
        assert "secret" not in message and "in.1001" not in message  # nothing listed


def test_value_table_errors_never_quote_its_contents(
    server: FrameServer, roots: tuple[Path, Path]
) -> None:
    root, outside = roots
    secret = str(outside / "secret.csv")
    message = refused(server, {"name": "x", "values": secret})
    assert "s3cr3t" not in message and "api_token" not in message
    assert "no such file in the data roots" in message
    (root / "table.csv").write_text("in.1001.exr,1.5\ngt.1001.exr,s3cr3t-value\n")
    message = refused(server, {"name": "x", "values": str(root / "table.csv")})
    assert "row 2" in message and "s3cr3t" not in message  # inside the roots: not quoted either
    (root / "names.csv").write_text("file,value\nsecret-name.exr,1.5\n")
    message = refused(server, {"name": "x", "values": str(root / "names.csv")})
    assert "row 1" in message and "secret-name" not in message
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    message = refused(server, {"name": "x", "values": str(root / "deep.json")})
    assert "nested too deeply" in message


def test_no_data_roots_means_no_path_is_read(tmp_path: Path) -> None:
    write_pairs(tmp_path, 1)
    server = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None)
    try:
        for body in (
            {"name": "x", "pairs": [[str(tmp_path / "in.1001.exr")] * 2]},
            {"name": "x", "labels": str(tmp_path)},
            {"name": "x", "values": "/dev/zero"},
        ):
            message = refused(server, body)
            assert "no data roots" in message and "upload" in message
    finally:
        server.close()


def test_fifos_and_devices_are_refused_without_blocking(
    server: FrameServer, roots: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = roots
    fifo = root / "x.png"
    os.mkfifo(fifo)
    labels = root / "labels"
    for name in ("day", "night"):
        (labels / name).mkdir(parents=True)
    os.mkfifo(labels / "day" / "a.png")
    os.mkfifo(root / "values.csv")
    (root / "zero.csv").symlink_to("/dev/zero")
    bodies = [
        {"name": "x", "pairs": [[str(fifo), str(root / "gt.1001.exr")]]},
        {"name": "x", "labels": str(labels)},
        {"name": "x", "values": str(root / "values.csv")},
        {"name": "x", "values": str(root / "zero.csv")},
        {"name": "x", "values": "/dev/zero"},
    ]
    for body in bodies:
        answers: list[tuple[int, object]] = []
        sender = threading.Thread(
            target=lambda b=body, a=answers: a.append(api(server, "POST", "/v2/training/jobs", b))
        )
        sender.start()
        sender.join(ANSWER_GUARD)  # a guard against hanging, not a speed target
        assert not sender.is_alive(), f"{body} froze the request"
        [(status, answer)] = answers
        assert status == 400 and "no such file in the data roots" in str(answer), answer
        http_seconds, mlclient_seconds = door_answer_times(server)  # a liveness check
        assert http_seconds < LIVENESS_BOUND and mlclient_seconds < LIVENESS_BOUND
    for path in (fifo, labels / "day" / "a.png", root / "values.csv"):
        with pytest.raises(OSError) as caught:  # no reader holds the FIFO open
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        assert caught.value.errno == errno.ENXIO
    assert files_under(server.jobs.folder) == []


def test_a_refused_job_shows_nothing_on_a_contact_sheet(
    server: FrameServer, roots: tuple[Path, Path]
) -> None:
    _, outside = roots
    secret = str(outside / "in.1001.exr")
    refused(server, {"name": "peek", "pairs": [[secret, secret]], "settings": FAST})
    status, answer = api(server, "GET", "/v2/training/jobs/peek/contact_sheet")
    assert status == 404 and "peek" in answer["error"]


def test_records_are_read_again_within_the_roots(tmp_path: Path, roots: tuple[Path, Path]) -> None:
    """A job record edited on disk to name a file outside the roots cannot make the server
    read it when the job is resumed."""
    root, outside = roots
    server = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None, data_roots=(root,))
    try:
        pair = [str(root / "in.1001.exr"), str(root / "gt.1001.exr")]
        body = {"name": "edited", "pairs": [pair], "settings": FAST}
        assert api(server, "POST", "/v2/training/jobs", body)[0] == 201
        done = server.jobs.wait("edited", timeout=ANSWER_GUARD)
        assert done.state == "done", done
    finally:
        server.close()
    record_path = tmp_path / "jobs" / "edited" / "queue.json"
    record = json.loads(record_path.read_text())
    record["files"]["train"] = [[str(outside / "in.1001.exr"), str(outside / "gt.1001.exr")]]
    record_path.write_text(json.dumps(record))
    server = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None, data_roots=(root,))
    try:
        status, job = api(server, "POST", "/v2/training/jobs/edited/resume", {"steps": 4})
        assert status == 200, job
        deadline = time.monotonic() + ANSWER_GUARD
        while server.jobs.status("edited").state in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        failed = server.jobs.status("edited")
        assert failed.state == "failed" and "no such file in the data roots" in str(failed.error)
    finally:
        server.close()
