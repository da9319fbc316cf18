"""Uploading training frames over HTTP: checks, atomic storage, jobs that name uploads, ageing."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from frameserve.client import (
    BadRequestError,
    Client,
    HTTPStatusError,
    NotFoundError,
    PayloadTooLargeError,
)
from frameserve.errors import RequestTooLargeError, StorageFullError, UploadError
from frameserve.media.imageio import read_image, write_image
from frameserve.serve.server import FrameServer
from frameserve.training.uploads import UploadStore, upload_id
from tests.support.servers import start_server
from tests.training.helpers import SETTINGS, dead_pid, write_pairs

FAST = {**SETTINGS, "steps": 4}


@pytest.fixture
def upload_server(tmp_path: Path) -> Iterator[FrameServer]:
    running = start_server(
        jobs_folder=tmp_path / "jobs", reload_interval=None, data_roots=(tmp_path,)
    )
    yield running
    running.close()


def post(server: FrameServer, path: str, data: bytes) -> tuple[int, dict[str, Any]]:
    """POST raw bytes; return the status and the JSON answer."""
    request = urllib.request.Request(server.http_url + path, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
        exc.close()
        return exc.code, body


def uploads_folder(server: FrameServer) -> Path:
    return server.jobs.uploads.folder


def stored_names(server: FrameServer) -> list[str]:
    """Everything in the uploads folder, hidden files included."""
    folder = uploads_folder(server)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_upload_is_checked_stored_once_and_listed(
    upload_server: FrameServer, tmp_path: Path
) -> None:
    [[source, _]] = write_pairs(tmp_path, 1)
    data = Path(source).read_bytes()
    with Client(upload_server.http_url) as client:
        first = client.training.upload(source)
        assert first.id == hashlib.sha256(data).hexdigest()[:32] == upload_id(data)
        assert (first.filename, first.size) == ("in.1001.exr", len(data))
        assert (first.width, first.height, first.channels) == (48, 40, ("R", "G", "B"))
        assert first.expires is not None and first.expires > first.uploaded
        again = client.training.upload(data, filename="in.1001.exr")
        assert again.id == first.id  # the same bytes are stored once
        assert [u.id for u in client.training.uploads()] == [first.id]
    stored = uploads_folder(upload_server) / first.id / "in.1001.exr"
    assert stored.read_bytes() == data
    assert stored_names(upload_server) == [first.id]  # no temporary left behind
    np.testing.assert_array_equal(read_image(stored).pixels, read_image(source).pixels)


def test_bad_uploads_get_400_naming_the_problem_and_leave_nothing(
    upload_server: FrameServer, tmp_path: Path
) -> None:
    [[source, _]] = write_pairs(tmp_path, 1)
    exr = Path(source).read_bytes()
    png = tmp_path / "frame.png"
    write_image(png, np.random.default_rng(0).random((3, 16, 16), dtype=np.float32))
    cases = [
        ("/v2/training/uploads?filename=frame.png", exr, "is not a PNG file"),
        ("/v2/training/uploads?filename=frame.exr", png.read_bytes(), "is not an OpenEXR file"),
        ("/v2/training/uploads?filename=cut.exr", exr[: len(exr) // 2], "cannot be read"),
        ("/v2/training/uploads?filename=notes.txt", exr, "image extension"),
        ("/v2/training/uploads?filename=..%2Fescape.exr", exr, "plain file name"),
        ("/v2/training/uploads?filename=empty.exr", b"", "empty"),
        ("/v2/training/uploads", exr, "file name"),
        ("/v2/training/uploads?filename=a.exr&filename=b.exr", exr, "once"),
    ]
    for path, data, problem in cases:
        status, answer = post(upload_server, path, data)
        assert status == 400 and problem in answer["error"], (path, answer)
    assert stored_names(upload_server) == []  # nothing half-written
    with Client(upload_server.http_url) as client, pytest.raises(NotFoundError, match="0000"):
        client.training.delete_upload("0" * 32)


def test_uploads_above_the_size_cap_get_413(tmp_path: Path) -> None:
    server = start_server(
        jobs_folder=tmp_path / "jobs", reload_interval=None, max_frame_bytes=1 << 10
    )
    try:
        limit = server.jobs.uploads.max_file_bytes  # 1 KiB frames + 1 MiB for file headers
        png = tmp_path / "big.png"
        noise = np.random.default_rng(1).random((3, 700, 700), dtype=np.float32)
        write_image(png, noise)  # random pixels do not compress: well above the limit
        assert png.stat().st_size > limit
        with Client(server.http_url) as client, pytest.raises(PayloadTooLargeError) as caught:
            client.training.upload(png)
        assert str(limit) in caught.value.message
        assert stored_names(server) == []
    finally:
        server.close()


def test_storage_cap_gives_507(upload_server: FrameServer, tmp_path: Path) -> None:
    [[source, target]] = write_pairs(tmp_path, 1)
    upload_server.jobs.uploads.max_total_bytes = Path(source).stat().st_size + 10
    with Client(upload_server.http_url) as client:
        kept = client.training.upload(source)
        with pytest.raises(HTTPStatusError, match="delete the uploads") as caught:
            client.training.upload(target)
        assert caught.value.status == 507
        client.training.delete_upload(kept)
        assert client.training.upload(target).filename == "gt.1001.exr"


def test_job_trains_on_uploads_and_keeps_them_after_they_go(
    upload_server: FrameServer, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path, 3)
    with Client(upload_server.http_url) as client:
        job = client.training.submit(
            "uploaded", pairs[:2], validation=pairs[2:], settings=FAST, upload=True
        )
        assert job.state in ("queued", "running", "done")
        done = client.training.wait("uploaded", interval=0.05, timeout=60)
        assert done.state == "done" and done.step == 4, done
        assert done.validation_loss is not None
        uploads = client.training.uploads()
        assert sorted(u.filename for u in uploads) == sorted(
            Path(p).name for pair in pairs for p in pair
        )
        for upload in uploads:  # the job has its own links: the uploads may go
            client.training.delete_upload(upload)
        assert client.training.uploads() == [] and stored_names(upload_server) == []
        frames = upload_server.jobs.job_folder("uploaded") / "frames"
        assert len(list(frames.glob("*/*.exr"))) == 6
        resumed = client.training.resume("uploaded", steps=6)  # reads the frames again
        assert resumed.state in ("queued", "running", "done")
        finished = client.training.wait("uploaded", interval=0.05, timeout=60)
        assert finished.state == "done" and finished.step == 6, finished
        frame = read_image(pairs[0][0]).pixels.transpose(1, 2, 0)
        assert client.infer("uploaded", frame).frame.shape == (40, 48, 3)
        folder = upload_server.jobs.job_folder("uploaded")
        client.training.delete("uploaded")  # the job, its model and its frames go
        assert not folder.exists() and "uploaded" not in [m.name for m in client.models()]
        with pytest.raises(NotFoundError):
            client.training.job("uploaded")


def test_a_failed_submission_leaves_neither_job_nor_uploads(
    upload_server: FrameServer, tmp_path: Path
) -> None:
    pairs = write_pairs(tmp_path, 1)
    with Client(upload_server.http_url) as client:
        with pytest.raises(BadRequestError, match="crop_size"):
            client.training.submit(
                "too_big", pairs, settings={**FAST, "crop_size": 256}, upload=True
            )
        assert client.training.uploads() == []
        with pytest.raises(NotFoundError):
            client.training.job("too_big")
        missing = {"name": "ghost", "pairs": [[{"upload": "ab" * 16}, {"upload": "cd" * 16}]]}
        status, answer = post(upload_server, "/v2/training/jobs", json.dumps(missing).encode())
        assert status == 400 and "ab" * 16 in answer["error"], answer
        status, answer = post(
            upload_server,
            "/v2/training/jobs",
            json.dumps({"name": "odd", "pairs": [[{"file": "x"}, "y"]]}).encode(),
        )
        assert status == 400 and "upload" in answer["error"], answer
    assert not (upload_server.jobs.folder / "too_big").exists()
    assert not (upload_server.jobs.folder / "ghost").exists()


def test_store_ages_out_uploads_and_killed_writes(tmp_path: Path) -> None:
    [[source, target]] = write_pairs(tmp_path, 1)
    store = UploadStore(tmp_path / "uploads", max_age=60.0)
    old, new = store.put(Path(source).read_bytes(), "in.exr")
    assert new
    young, _ = store.put(Path(target).read_bytes(), "gt.exr")
    staged = store.folder / f".upload.tmp-{dead_pid()}-0123456789ab"  # named as temporaries
    legacy = store.folder / ".tmp-killed"  # as earlier versions named staging folders
    for leftover in (staged, legacy):
        leftover.mkdir()
        (leftover / "half.exr").write_bytes(b"v/1\x01")
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    under_way = store.folder / f".upload.tmp-{os.getpid()}-abcdefabcdef"
    under_way.mkdir()
    record_cut_short = store.folder / old.id / f".upload.tmp-{dead_pid()}-0123456789ab.json"
    record_cut_short.write_text('{"filename": "in.ex')
    claimed = store.claim(old.id, tmp_path / "job" / "frames")
    assert store.prune() == 0  # killed writes go at once, a write under way stays
    assert not staged.exists() and not legacy.exists() and not record_cut_short.exists()
    assert under_way.exists()
    under_way.rmdir()
    assert store.prune(now=time.time() + 120) == 2
    assert store.uploads() == [] and sorted(os.listdir(store.folder)) == []
    assert claimed.read_bytes() == Path(source).read_bytes()  # the job's link stays
    assert young.id != old.id


def test_store_refuses_what_it_cannot_keep(tmp_path: Path) -> None:
    [[source, _]] = write_pairs(tmp_path, 1)
    data = Path(source).read_bytes()
    small = UploadStore(tmp_path / "a", max_file_bytes=100)
    with pytest.raises(RequestTooLargeError, match="above the limit of 100 bytes"):
        small.put(data, "in.exr")
    full = UploadStore(tmp_path / "b", max_total_bytes=100)
    with pytest.raises(StorageFullError):
        full.put(data, "in.exr")
    with pytest.raises(UploadError, match="JPEG"):
        full.put(data, "in.jpg")
    assert not any(p for p in (tmp_path / "b").iterdir())


def test_store_recovers_from_a_record_cut_short(tmp_path: Path) -> None:
    [[source, _]] = write_pairs(tmp_path, 1)
    data = Path(source).read_bytes()
    store = UploadStore(tmp_path / "uploads")
    broken = store.folder / upload_id(data)
    broken.mkdir(parents=True)
    (broken / "upload.json").write_text('{"filename": "in.ex')  # a killed write
    assert store.uploads() == []
    upload, new = store.put(data, "in.exr")  # stored afresh over the broken one
    assert new and upload.id == broken.name and store.get(upload.id).size == len(data)
    other = store.folder / ("f" * 32)
    other.mkdir()
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    store.prune()
    assert sorted(os.listdir(store.folder)) == [upload.id]
