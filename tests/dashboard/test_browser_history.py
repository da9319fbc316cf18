"""In a real browser (as :mod:`tests.dashboard.test_browser`): a job's whole loss curve shows
when the training page opens after the job ran, and the overview shows a model busy while a
slow request runs on it, idle after."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from frameserve.serve.server import FrameServer
from tests.dashboard.test_browser import Session, api, browser  # noqa: F401 (a fixture)
from tests.dashboard.test_details import infer_http
from tests.training.helpers import ANSWER_GUARD, SETTINGS, write_pairs

Team = tuple[FrameServer, dict[str, str]]


def test_the_training_page_opened_after_a_job_ran_shows_its_whole_curve(
    browser: Any,  # noqa: F811
    team: Team,
    tmp_path: Path,
) -> None:
    server, tokens = team
    [pair] = write_pairs(tmp_path, 1)
    frames = []
    for path in pair:  # uploaded, as the page sends frames
        status, _, answer = api(
            server,
            tokens["admin"],
            f"/v2/training/uploads?filename={Path(path).name}",
            Path(path).read_bytes(),
        )
        assert status in (200, 201), answer
        frames.append({"upload": json.loads(answer)["id"]})
    settings = {**SETTINGS, "steps": 30, "contact_sheet_interval": 0}
    body = json.dumps({"name": "ran", "pairs": [frames], "settings": settings}).encode()
    status, _, answer = api(server, tokens["admin"], "/v2/training/jobs", body)
    assert status == 201, answer
    assert server.jobs.wait("ran", timeout=ANSWER_GUARD).state == "done"
    status, _, answer = api(server, tokens["admin"], "/v2/training/jobs/ran/losses")
    kept = json.loads(answer)["points"]
    assert status == 200 and len(kept) == 30

    session = Session(browser, server, tokens["admin"])  # no page looked while it trained
    session.go("training")
    page = session.page
    page.click('#jobs tr[data-job="ran"]')
    page.wait_for_selector('#loss-chart[data-loaded="true"]')
    assert page.get_attribute("#loss-chart", "data-points") == "30"  # every step, not the last
    session.shot("training-history")
    session.close()


def test_the_overview_shows_a_model_busy_while_it_runs_then_idle(
    browser: Any,  # noqa: F811
    team: Team,
) -> None:
    server, tokens = team
    session = Session(browser, server, tokens["td"])
    session.go("overview")
    page = session.page
    page.wait_for_selector('td.activity[data-model="slow"]')
    sender = threading.Thread(
        target=infer_http, args=(server, tokens["td"], "slow", [8, 8, 3], {"seconds": 3.0})
    )
    sender.start()
    try:
        page.wait_for_selector('td.activity[data-model="slow"]:text-is("busy")')
        busy, _idle = page.inner_text("#workers-busy-idle").split(" / ")
        assert busy == "1"
        session.shot("overview-busy")
    finally:
        sender.join(60)
    page.wait_for_selector('td.activity[data-model="slow"]:text-is("idle")')
    assert page.inner_text("#workers-busy-idle").startswith("0 / ")
    session.close()
