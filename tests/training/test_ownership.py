"""Jobs and uploads belong to who made them: a real server with tokens, artists and a TD.

An artist sees and changes only their own jobs (another's is a 403: its name is public, as the
id of the model it serves) and their own uploads (another's is a 404: an upload's id is the
hash of a file, and must not tell who holds it); a TD sees and changes everyone's and downloads
packages. Without tokens everyone is an admin, as before, and jobs belong to ``-``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from frameserve.serve.auth.tokens import TokenFile
from frameserve.serve.auth.users import Role
from frameserve.serve.server import FrameServer
from tests.support.servers import start_server
from tests.training.helpers import ANSWER_GUARD, SETTINGS, api, write_pairs

FAST = {**SETTINGS, "steps": 2}
UPLOADS = "/v2/training/uploads"
JOBS = "/v2/training/jobs"


@pytest.fixture
def team(tmp_path: Path) -> Iterator[tuple[FrameServer, dict[str, str]]]:
    tokens = TokenFile(tmp_path / "tokens.json")
    names = {"maya": Role.ARTIST, "leo": Role.ARTIST, "tara": Role.TD}
    keys = {name: tokens.add(name, role) for name, role in names.items()}
    server = start_server(
        jobs_folder=tmp_path / "jobs", reload_interval=None, tokens_file=tmp_path / "tokens.json"
    )
    yield server, keys
    server.close()


def upload(server: FrameServer, token: str, source: str) -> str:
    name = Path(source).name
    status, answer = api(
        server, "POST", f"{UPLOADS}?filename={name}", raw=Path(source).read_bytes(), token=token
    )
    assert status in (200, 201), answer
    return str(answer["id"])


def test_an_artist_sees_and_changes_only_their_own_jobs(
    team: tuple[FrameServer, dict[str, str]], tmp_path: Path
) -> None:
    server, keys = team
    [[source, target]] = write_pairs(tmp_path, 1)
    frames = [{"upload": upload(server, keys["maya"], p)} for p in (source, target)]
    body = {"name": "mayas", "pairs": [frames], "settings": FAST}
    status, job = api(server, "POST", JOBS, body, token=keys["maya"])
    assert status == 201 and job["owner"] == "maya", job
    assert server.jobs.wait("mayas", timeout=ANSWER_GUARD).state == "done"

    status, listed = api(server, "GET", JOBS, token=keys["leo"])
    assert status == 200 and listed["jobs"] == []  # not even listed
    for method, action, body_sent in (
        ("GET", "", None),
        ("GET", "/contact_sheet", None),
        ("POST", "/resume", {"steps": 4}),
        ("POST", "/cancel", None),
        ("DELETE", "", None),
    ):
        status, answer = api(server, method, f"{JOBS}/mayas{action}", body_sent, token=keys["leo"])
        assert status == 403, (method, action, answer)
        assert "belongs to another user" in answer["error"] and "td" in answer["error"]
        assert "maya" not in answer["error"].replace("'mayas'", "")  # the owner is not named
    assert server.jobs.status("mayas").state == "done"  # nothing was changed

    status, listed = api(server, "GET", JOBS, token=keys["maya"])
    assert [j["name"] for j in listed["jobs"]] == ["mayas"]
    status, answer = api(server, "GET", f"{JOBS}/mayas/package", token=keys["maya"])
    assert status == 403 and "td" in answer["error"]  # packages need a TD

    status, listed = api(server, "GET", JOBS, token=keys["tara"])  # a TD sees every job
    assert [j["name"] for j in listed["jobs"]] == ["mayas"]
    status, package = api(server, "GET", f"{JOBS}/mayas/package", token=keys["tara"])
    assert status == 200 and package[:2] == b"PK"
    status, answer = api(server, "DELETE", f"{JOBS}/mayas", token=keys["tara"])
    assert status == 200, answer


def test_uploads_belong_to_their_uploaders(
    team: tuple[FrameServer, dict[str, str]], tmp_path: Path
) -> None:
    server, keys = team
    [[source, target]] = write_pairs(tmp_path, 1)
    mayas = upload(server, keys["maya"], source)
    status, listed = api(server, "GET", UPLOADS, token=keys["leo"])
    assert status == 200 and listed["uploads"] == []
    status, answer = api(server, "GET", f"{UPLOADS}/{mayas}", token=keys["leo"])
    assert status == 404  # as if it were not there: the id tells nothing of maya's files
    missing = api(server, "GET", f"{UPLOADS}/{'0' * 32}", token=keys["leo"])[1]
    assert answer["error"].replace(mayas, "ID") == missing["error"].replace("0" * 32, "ID")
    assert api(server, "DELETE", f"{UPLOADS}/{mayas}", token=keys["leo"])[0] == 404
    body = {"name": "leos", "pairs": [[{"upload": mayas}, {"upload": mayas}]], "settings": FAST}
    status, answer = api(server, "POST", JOBS, body, token=keys["leo"])
    assert status == 400 and mayas in answer["error"]  # cannot train on maya's upload
    assert server.jobs.uploads.get(mayas).path.exists()

    assert upload(server, keys["leo"], source) == mayas  # leo has the file: now leo's too
    assert [u["id"] for u in api(server, "GET", UPLOADS, token=keys["leo"])[1]["uploads"]] == [
        mayas
    ]
    assert api(server, "DELETE", f"{UPLOADS}/{mayas}", token=keys["leo"])[0] == 200
    status, kept = api(server, "GET", f"{UPLOADS}/{mayas}", token=keys["maya"])
    assert status == 200 and kept["id"] == mayas  # leo's delete left maya's upload
    assert api(server, "GET", f"{UPLOADS}/{mayas}", token=keys["leo"])[0] == 404

    upload(server, keys["leo"], target)
    status, listed = api(server, "GET", UPLOADS, token=keys["tara"])  # a TD sees them all
    assert len(listed["uploads"]) == 2


def test_without_tokens_everyone_is_an_admin_and_jobs_belong_to_dash(tmp_path: Path) -> None:
    server = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None)
    try:
        [[source, target]] = write_pairs(tmp_path, 1)
        frames = [{"upload": upload(server, "", p)} for p in (source, target)]
        status, job = api(server, "POST", JOBS, {"name": "open", "pairs": [frames],
                                                 "settings": FAST})  # fmt: skip
        assert status == 201 and job["owner"] == "-"
        assert server.jobs.wait("open", timeout=ANSWER_GUARD).state == "done"
        status, package = api(server, "GET", f"{JOBS}/open/package")
        assert status == 200 and package[:2] == b"PK"
    finally:
        server.close()
