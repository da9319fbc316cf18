"""A training job's whole loss curve: kept in its folder as it trains, bounded, served by
``GET /v2/training/jobs/{name}/losses`` (owners only, across a server restart)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from frameserve.serve.auth.tokens import TokenFile
from frameserve.serve.auth.users import Role
from frameserve.serve.server import FrameServer
from frameserve.training import TrainingProgress
from frameserve.training.jobs.losses import LOSSES_FILE, LossLog, read_losses
from tests.support.servers import start_server
from tests.training.helpers import ANSWER_GUARD, SETTINGS, api, write_pairs

JOBS = "/v2/training/jobs"


def progress(step: int, loss: float = 0.5, validation: float | None = None) -> TrainingProgress:
    return TrainingProgress(
        step=step,
        total_steps=10_000,
        loss=loss,
        train_loss=loss,
        validation_loss=validation,
        learning_rate=1e-3,
        steps_per_second=10.0,
        eta_seconds=1.0,
        elapsed_seconds=float(step),
    )


# -- the file ----------------------------------------------------------------------------------


def test_the_log_keeps_each_step_and_reads_back(tmp_path: Path) -> None:
    log = LossLog(tmp_path)
    for step in range(1, 6):
        log.append(progress(step, 1.0 / step, 0.3 if step >= 4 else None))
    assert read_losses(tmp_path) == [
        (1, 1.0, None),
        (2, 0.5, None),
        (3, 1 / 3, None),
        (4, 0.25, 0.3),
        (5, 0.2, 0.3),
    ]
    log.append(progress(6, float("nan")))  # JSON has no NaN: kept as no value
    assert read_losses(tmp_path)[-1] == (6, None, None)
    with (tmp_path / LOSSES_FILE).open("a") as file:
        file.write('{"step": 7, "loss": 0.1')  # a line still being written is skipped
    assert [p[0] for p in read_losses(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert read_losses(tmp_path / "nowhere") == []


def test_the_log_is_thinned_to_its_limit_spread_over_every_step(tmp_path: Path) -> None:
    log = LossLog(tmp_path, limit=20)
    for step in range(1, 1001):
        log.append(progress(step))
        assert len(read_losses(tmp_path)) <= 20
    steps = [p[0] for p in read_losses(tmp_path)]
    assert steps[0] == 1 and steps[-1] == 1000 and len(steps) >= 10
    assert steps == sorted(set(steps))
    # spread over every step, not only the newest: no gap wider than a few limits' share
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    assert max(gaps) <= 4 * 1000 // 20, steps
    assert all(any(t * 200 < s <= (t + 1) * 200 for s in steps) for t in range(5)), steps


def test_a_run_resumed_from_an_older_checkpoint_replaces_the_lost_steps(tmp_path: Path) -> None:
    first = LossLog(tmp_path)
    for step in range(1, 11):
        first.append(progress(step, 1.0))
    again = LossLog(tmp_path)  # the next run, going on from the checkpoint at step 6
    again.append(progress(7, 0.25))
    again.append(progress(8, 0.2))
    assert read_losses(tmp_path) == [(s, 1.0, None) for s in range(1, 7)] + [
        (7, 0.25, None),
        (8, 0.2, None),
    ]


# -- the API -----------------------------------------------------------------------------------


def start(folder: Path) -> FrameServer:
    return start_server(
        jobs_folder=folder / "jobs", reload_interval=None, tokens_file=folder / "tokens.json"
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("losses")
    tokens = TokenFile(folder / "tokens.json")
    names = {"maya": Role.ARTIST, "leo": Role.ARTIST, "tara": Role.TD}
    return folder, {name: tokens.add(name, role) for name, role in names.items()}


def upload(server: FrameServer, token: str, path: str) -> dict[str, str]:
    status, answer = api(
        server,
        "POST",
        f"/v2/training/uploads?filename={Path(path).name}",
        raw=Path(path).read_bytes(),
        token=token,
    )
    assert status in (200, 201), answer
    return {"upload": answer["id"]}


def test_the_curve_grows_with_the_steps_survives_a_restart_and_is_the_owners(
    keys: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    folder, key = keys
    server = start(folder)
    try:
        [[source, target]] = write_pairs(tmp_path, 1)
        pair = [upload(server, key["maya"], p) for p in (source, target)]
        settings = {**SETTINGS, "steps": 400, "validation_interval": 5}
        body = {"name": "curvy", "pairs": [pair], "validation": [pair], "settings": settings}
        status, job = api(server, "POST", JOBS, body, token=key["maya"])
        assert status == 201, job

        seen: list[int] = []
        until = time.monotonic() + ANSWER_GUARD
        while time.monotonic() < until and len(set(seen)) < 3:
            status, answer = api(server, "GET", f"{JOBS}/curvy/losses", token=key["maya"])
            assert status == 200, answer
            if answer["points"] and (not seen or len(answer["points"]) > seen[-1]):
                seen.append(len(answer["points"]))
            time.sleep(0.05)
        assert len(seen) >= 3 and seen == sorted(seen), seen  # it grew as the job trained
        status, job = api(server, "POST", f"{JOBS}/curvy/cancel", token=key["maya"])
        assert status == 200, job
        assert server.jobs.wait("curvy", timeout=ANSWER_GUARD).state == "cancelled"
        status, answer = api(server, "GET", f"{JOBS}/curvy/losses", token=key["maya"])
        assert answer["job"] == "curvy"
        assert answer["columns"] == ["step", "loss", "validation_loss"]
        points = answer["points"]
        done = server.jobs.status("curvy").step
        assert [p[0] for p in points] == list(range(1, done + 1))  # every step run, in order
        assert all(isinstance(p[1], float) and p[1] > 0 for p in points)
        assert points[3][2] is None and isinstance(points[-1][2], float)  # validation from step 5
        assert points[-1][1] == pytest.approx(server.jobs.status("curvy").loss)

        # ownership: another artist is refused, a td reads it, an unknown job is a 404
        status, answer = api(server, "GET", f"{JOBS}/curvy/losses", token=key["leo"])
        assert status == 403 and "belongs to another user" in answer["error"]
        status, answer = api(server, "GET", f"{JOBS}/curvy/losses", token=key["tara"])
        assert status == 200 and answer["points"] == points
        status, answer = api(server, "GET", f"{JOBS}/nosuch/losses", token=key["tara"])
        assert status == 404 and "nosuch" in answer["error"]
        status, answer = api(server, "GET", f"{JOBS}/nosuch/losses", token=key["leo"])
        assert status == 404
        status, answer = api(server, "GET", f"{JOBS}/curvy/losses")  # no token
        assert status == 401
        status, answer = api(server, "POST", f"{JOBS}/curvy/losses", {}, token=key["maya"])
        assert status == 405
        for malformed in ("%00", "..", "a%2Fb", "x" * 300, "%ff%fe", "curvy%20"):
            status, answer = api(server, "GET", f"{JOBS}/{malformed}/losses", token=key["tara"])
            assert 400 <= status < 500, (malformed, status, answer)
        status, _ = api(server, "GET", f"{JOBS}/curvy/losses/more", token=key["tara"])
        assert status == 404
    finally:
        server.close()

    server = start(folder)  # the curve is read from the job's folder again
    try:
        status, answer = api(server, "GET", f"{JOBS}/curvy/losses", token=key["maya"])
        assert status == 200 and answer["points"] == points
        # resumed: the curve goes on from where it stopped
        status, job = api(
            server, "POST", f"{JOBS}/curvy/resume", {"steps": done + 5}, token=key["maya"]
        )
        assert status == 200, job
        assert server.jobs.wait("curvy", timeout=ANSWER_GUARD).state == "done"
        status, answer = api(server, "GET", f"{JOBS}/curvy/losses", token=key["maya"])
        assert answer["points"][:done] == points
        assert [p[0] for p in answer["points"]] == list(range(1, done + 6))
        # a deleted job's curve goes with it
        assert api(server, "DELETE", f"{JOBS}/curvy", token=key["maya"])[0] == 200
        assert api(server, "GET", f"{JOBS}/curvy/losses", token=key["maya"])[0] == 404
    finally:
        server.close()
