"""A training job's limits hold before the work: attacks on a real server that would have held
gigabytes, and the refusals (or the bounded work) that happen instead.

Memory is measured as the growth of this process's peak resident memory (the server runs in
it): a refused request must not decode what it named.
"""

from __future__ import annotations

import gc
import itertools
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from frameserve.serve.server import FrameServer
from tests.support.servers import start_server
from tests.training.helpers import (
    ANSWER_GUARD,
    LIVENESS_BOUND,
    SETTINGS,
    PeakMemory,
    api,
    door_answer_times,
    files_under,
    png_of_zeros,
    write_pairs,
)

FAST = {**SETTINGS, "steps": 2}
LONG = {**SETTINGS, "steps": 100_000}
#: Peak memory a refused request may add (threads, buffers, logging): far below what decoding
#: the frames it names would take.
SMALL_GROWTH = 150 << 20


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    write_pairs(folder, 2)
    return folder


def serve(tmp_path: Path, root: Path, **limits: object) -> FrameServer:
    return start_server(
        jobs_folder=tmp_path / "jobs", reload_interval=None, data_roots=(root,), **limits
    )


@pytest.fixture
def server(tmp_path: Path, root: Path) -> Iterator[FrameServer]:
    running = serve(tmp_path, root)
    yield running
    running.close()


def too_large(server: FrameServer, body: dict[str, object], *fragments: str) -> str:
    """POST ``body``; assert a 413 naming ``fragments`` that leaves no job; return it."""
    status, answer = api(server, "POST", "/v2/training/jobs", body)
    assert status == 413, answer
    message = str(answer["error"])
    for fragment in fragments:
        assert fragment in message, message
    assert files_under(server.jobs.folder) == []
    return message


def test_a_frame_above_the_pixel_cap_is_refused_from_its_header(
    server: FrameServer, root: Path
) -> None:
    # 40000 x 40000 claimed by a 5 MB file: decoding it would take 19 GB of float32.
    huge = png_of_zeros(root / "huge.png", 40000, 40000, rows=4, padding=5 << 20)
    with PeakMemory() as peak:
        too_large(
            server,
            {"name": "x", "pairs": [[str(huge), str(huge)]]},
            "huge.png",
            "40000x40000",
            "--max-frame-pixels",
        )
    assert peak.growth < SMALL_GROWTH, peak.growth
    labels = root / "labels"
    for name in ("day", "night"):
        (labels / name).mkdir(parents=True)
        shutil.copy(root / "in.1001.exr", labels / name / "a.exr")
    (labels / "night" / "huge.png").hardlink_to(huge)  # reached through a label job
    too_large(server, {"name": "x", "labels": str(labels)}, "huge.png", "40000x40000")


def test_the_pixel_cap_is_the_servers_setting(tmp_path: Path, root: Path) -> None:
    big = png_of_zeros(root / "big.png", 8000, 8000)  # 187 KB; 768 MB decoded
    server = serve(tmp_path, root, max_frame_pixels=4096 * 4096)
    try:
        with PeakMemory() as peak:
            too_large(server, {"name": "x", "pairs": [[str(big), str(big)]]}, "8000x8000")
        assert peak.growth < SMALL_GROWTH, peak.growth
    finally:
        server.close()


def test_each_name_counts_and_one_file_is_decoded_once(tmp_path: Path, root: Path) -> None:
    frame = str(root / "in.1001.exr")
    server = serve(tmp_path, root, max_job_frames=100)
    try:
        too_large(server, {"name": "x", "pairs": [[frame, frame]] * 200}, "more than 100")
        pair = [frame, str(root / "gt.1001.exr")]
        status, job = api(
            server, "POST", "/v2/training/jobs", {"name": "same", "pairs": [pair] * 25,
                                                  "settings": LONG}
        )  # fmt: skip
        assert status == 201, job
        held = server.jobs.held_data("same")
        assert held is not None
        inputs = {id(pair.input) for pair in held.train}
        targets = {id(pair.target) for pair in held.train}
        assert len(inputs) == len(targets) == 1  # one array per file, shared by 25 pairs
        api(server, "POST", "/v2/training/jobs/same/cancel")
    finally:
        server.close()


def test_the_bytes_a_job_holds_are_capped(tmp_path: Path, root: Path) -> None:
    frames = [str(root / "in.1001.exr"), str(root / "gt.1001.exr")]
    one_frame = 40 * 48 * 3 * 4  # float32 bytes of each test frame
    server = serve(tmp_path, root, max_job_bytes=int(1.5 * one_frame))
    try:
        too_large(server, {"name": "x", "pairs": [frames]}, "bytes a job may hold")
        same = {"name": "same", "pairs": [[frames[0], frames[0]]] * 3, "settings": FAST}
        status, job = api(server, "POST", "/v2/training/jobs", same)
        assert status == 201, job  # one file named six times is held once
    finally:
        server.close()


def test_value_tables_are_read_within_their_limits(tmp_path: Path, root: Path) -> None:
    server = serve(tmp_path, root, max_table_bytes=1000, max_table_rows=3)
    try:
        rows = "".join(f"in.1001.exr,{index}\n" for index in range(200))
        (root / "long.csv").write_text(rows)  # 3 KB
        too_large(server, {"name": "x", "values": str(root / "long.csv")}, "1000 bytes")
        (root / "rows.csv").write_text(rows[: 16 * 5])  # 5 rows, 80 bytes
        too_large(server, {"name": "x", "values": str(root / "rows.csv")}, "5 rows", "3")
        (root / "latin.csv").write_bytes("caf\xe9.exr,1\n".encode("latin-1"))
        status, answer = api(
            server, "POST", "/v2/training/jobs", {"name": "x", "values": str(root / "latin.csv")}
        )
        assert status == 400 and "UTF-8" in answer["error"], answer
        assert files_under(server.jobs.folder) == []
    finally:
        server.close()


def test_a_stopped_or_deleted_job_holds_no_frames(server: FrameServer, root: Path) -> None:
    pair = [str(root / "in.1001.exr"), str(root / "gt.1001.exr")]
    body = {"name": "held", "pairs": [pair, pair[::-1]], "settings": LONG}
    assert api(server, "POST", "/v2/training/jobs", body)[0] == 201
    held = server.jobs.held_data("held")
    assert held is not None
    arrays = [weakref.ref(a) for p in held.train for a in (p.input, p.target)]
    data = weakref.ref(held)
    del held
    deadline = time.monotonic() + ANSWER_GUARD
    while server.jobs.status("held").step < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    status, stopped = api(server, "POST", "/v2/training/jobs/held/cancel")
    assert status == 200, stopped
    server.jobs.wait("held", timeout=ANSWER_GUARD)
    gc.collect()
    assert server.jobs.held_data("held") is None  # dropped when it stopped
    assert data() is None and all(ref() is None for ref in arrays)
    status, resumed = api(server, "POST", "/v2/training/jobs/held/resume", {"steps": 100_000})
    assert status == 200, resumed  # reads its frames again
    while server.jobs.held_data("held") is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    again = server.jobs.held_data("held")
    assert again is not None
    arrays = [weakref.ref(a) for p in again.train for a in (p.input, p.target)]
    del again
    api(server, "POST", "/v2/training/jobs/held/cancel")
    server.jobs.wait("held", timeout=ANSWER_GUARD)
    assert api(server, "DELETE", "/v2/training/jobs/held")[0] == 200
    gc.collect()
    assert all(ref() is None for ref in arrays), "a deleted job's frames are still held"


def test_reading_big_frames_never_freezes_the_doors(tmp_path: Path, root: Path) -> None:
    big = png_of_zeros(root / "big.0.png", 2000, 2000)
    names = [str(big)]
    for index in range(1, 4):  # distinct files: each is decoded
        copy = root / f"big.{index}.png"
        shutil.copyfile(big, copy)
        names.append(str(copy))
    server = serve(tmp_path, root)
    try:
        answers: list[tuple[int, object]] = []
        pairs = [[a, b] for a, b in itertools.pairwise(names)]
        body = {"name": "big", "pairs": pairs, "settings": {**FAST, "crop_size": 16}}
        sender = threading.Thread(
            target=lambda: answers.append(api(server, "POST", "/v2/training/jobs", body))
        )
        sender.start()
        deadline = time.monotonic() + ANSWER_GUARD
        while not (server.jobs.folder / "big").exists():  # the reading has begun
            assert time.monotonic() < deadline
            time.sleep(0.005)
        while sender.is_alive():
            http_seconds, mlclient_seconds = door_answer_times(server)  # a liveness check
            assert http_seconds < LIVENESS_BOUND and mlclient_seconds < LIVENESS_BOUND
            assert time.monotonic() < deadline
        [(status, job)] = answers
        assert status == 201, job
        api(server, "POST", "/v2/training/jobs/big/cancel")
    finally:
        server.close()


def test_a_reading_that_takes_too_long_is_refused_and_cleaned_up(
    tmp_path: Path, root: Path
) -> None:
    big = png_of_zeros(root / "big.0.png", 2500, 2500)
    names = [str(big)]
    for index in range(1, 8):
        shutil.copyfile(big, root / f"big.{index}.png")
        names.append(str(root / f"big.{index}.png"))
    server = serve(tmp_path, root, decode_timeout=0.2)
    try:
        body = {"name": "tardy", "pairs": [[a, a] for a in names], "settings": FAST}
        started = time.monotonic()
        status, answer = api(server, "POST", "/v2/training/jobs", body)
        assert status == 400 and "--decode-timeout" in answer["error"], answer
        assert time.monotonic() - started < ANSWER_GUARD
        deadline = time.monotonic() + ANSWER_GUARD
        while files_under(server.jobs.folder):  # the reading stops and cleans up
            assert time.monotonic() < deadline
            time.sleep(0.02)
        quick = {"name": "tardy", "pairs": [[str(root / "in.1001.exr"), str(root / "gt.1001.exr")]],
                 "settings": FAST}  # fmt: skip
        while True:  # the name is free again once the reading has stopped
            status, job = api(server, "POST", "/v2/training/jobs", quick)
            if status != 409:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert status == 201, job
    finally:
        server.close()
