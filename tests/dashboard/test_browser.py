"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real server.

These tests do not skip: without Chromium (``apt-get install -y --no-install-recommends
chromium``) or Playwright (``pip install playwright``; no ``playwright install`` needed) they
fail saying what is missing. Screenshots of each page are kept in
``$FRAMESERVE_TEST_ARTIFACTS/dashboard`` (default ``build/test-artifacts/dashboard``).
"""

from __future__ import annotations

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
from PIL import Image

from frameserve.serve.server import FrameServer

Team = tuple[FrameServer, dict[str, str]]

CHROMIUM = Path(os.environ.get("FRAMESERVE_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("FRAMESERVE_TEST_ARTIFACTS", "build/test-artifacts")) / "dashboard"
#: Longest wait for something to appear in the page, in milliseconds.
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium; the test fails (never skips) when it cannot be started."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the dashboard's browser tests need Playwright: pip install playwright "
            "(the test extras have it); Chromium comes from Debian, not 'playwright install'"
        )
    if not CHROMIUM.exists():
        pytest.fail(
            f"the dashboard's browser tests need Chromium at {CHROMIUM}: "
            "apt-get install -y --no-install-recommends chromium "
            "(or name another with $FRAMESERVE_CHROMIUM)"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Session:
    """A signed-in browser tab and the console errors it logged."""

    def __init__(self, browser: Any, server: FrameServer, token: str) -> None:
        self.context = browser.new_context(
            viewport={"width": 1400, "height": 1000}, accept_downloads=True
        )
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(server.http_url + "/")
        self.page.wait_for_selector("#signin:not([hidden])")
        self.page.fill("#token", token)
        self.page.click("#signin-form button")
        self.page.wait_for_selector("#nav:not([hidden])")

    def go(self, page: str) -> None:
        self.page.click(f'#nav a[data-page="{page}"]')
        self.page.wait_for_selector(f'#page[data-page="{page}"]')

    def shot(self, name: str, *, full_page: bool = True) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)

    def close(self) -> None:
        assert self.errors == [], self.errors
        self.context.close()


def api(server: FrameServer, token: str, path: str, body: bytes | None = None, **headers: str):
    """Call the API; status and body (errors too)."""
    request = urllib.request.Request(
        server.http_url + path,
        data=body,
        headers={"Authorization": f"Bearer {token}", **headers},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def infer_srgb(server: FrameServer, token: str, model: str, frame: np.ndarray) -> np.ndarray:
    """Run ``model`` on ``frame`` ([H, W, C] float32) through the API as the page does."""
    data = np.ascontiguousarray(frame, np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": list(frame.shape),
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"colourspace": "srgb", "binary_data_output": True},
        }
    ).encode()
    status, headers, body = api(
        server,
        token,
        f"/v2/models/{model}/infer",
        header + data,
        **{"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200, body[:300]
    length = int(headers["Inference-Header-Content-Length"])
    shape = json.loads(body[:length])["outputs"][0]["shape"]
    return np.frombuffer(body[length:], np.float32).reshape(shape)


def test_overview_loads_and_a_request_arrives_live(browser: Any, team: Team) -> None:
    server, tokens = team
    session = Session(browser, server, tokens["admin"])
    page = session.page
    page.wait_for_selector("#overview-cards .card")
    assert page.inner_text("#who") == "boss (admin)"
    assert "ready" in page.inner_text("#overview-cards")
    page.wait_for_selector("#page .uplot")  # the charts drew
    first_load = page.evaluate(
        """() => performance.getEntriesByType('navigation').concat(
            performance.getEntriesByType('resource').filter((e) => e.name.includes('/ui/')))
            .reduce((sum, e) => sum + e.decodedBodySize, 0)"""
    )
    assert 50_000 < first_load < 200_000, first_load  # the page's assets: under 200 KB
    print(f"first load of the dashboard's assets: {first_load} bytes")
    frame = np.full((16, 16, 3), 0.5, np.float32)
    infer_srgb(server, tokens["td"], "identity", frame)  # another user's request, by the API
    page.wait_for_selector("#recent td.model-name:text-is('identity')")  # came by the event stream
    assert "tina" in page.inner_text("#recent")
    assert page.inner_text("#recent tr:first-child td.size") == "16x16"  # width x height
    session.shot("overview")
    session.close()


def test_models_page_lists_the_builtins_and_failures_and_reloads_for_admins(
    browser: Any, team: Team
) -> None:
    server, tokens = team
    session = Session(browser, server, tokens["admin"])
    session.go("models")
    page = session.page
    page.wait_for_selector('.model[data-model="blur"]')
    for builtin in ("blur", "identity", "face_detect", "person_matte"):
        assert page.locator(f'.model[data-model="{builtin}"]').count() == 1, builtin
    blur = page.locator('.model[data-model="blur"]')
    assert "Gaussian Blur" in blur.inner_text() and "knob" in blur.inner_text()
    failed = page.locator('.model[data-model="broken_import"] .error')
    assert "broken on purpose" in failed.inner_text()
    assert "Apache-2.0" in page.locator('.model[data-model="face_detect"] .weights').inner_text()
    # a model used once is loaded and shows what its worker holds; an unused one is not loaded
    infer_srgb(server, tokens["td"], "convnet", np.full((8, 8, 3), 0.5, np.float32))
    memory = page.locator('.model[data-model="convnet"] .memory[data-loaded="yes"]')
    memory.wait_for()
    assert "loaded · holds" in memory.inner_text() and " MB" in memory.inner_text()
    assert "not loaded" in page.inner_text('.model[data-model="knobby"] .memory[data-loaded="no"]')
    blur.locator("button.reload").click()
    page.wait_for_selector('.model[data-model="blur"] span.dim:has-text("ready")')
    session.shot("models", full_page=False)  # (the whole list is a very long picture)
    session.close()


def test_try_blur_shows_the_apis_pixels_and_downloads_them_as_exr(
    browser: Any, team: Team, tmp_path: Path
) -> None:
    server, tokens = team
    session = Session(browser, server, tokens["artist"])
    session.go("try")
    page = session.page
    page.wait_for_selector("#try-model")
    assert page.input_value("#try-model") == "blur"
    page.click("#try-run")
    page.wait_for_selector("canvas.result")
    shown = page.evaluate(
        """() => {
        const read = (c) => Array.from(
            c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
        const input = document.querySelector('#try-results .view canvas');
        const result = document.querySelector('#try-results canvas.result');
        return {w: input.width, h: input.height, input: read(input), result: read(result)};
    }"""
    )
    height, width = shown["h"], shown["w"]
    rgba = np.array(shown["input"], np.uint8).reshape(height, width, 4)
    frame = rgba[..., :3].astype(np.float32) / 255  # blur takes RGB: what the page sends
    expected = infer_srgb(server, tokens["artist"], "blur", frame)
    # as the page converts: in double precision, halves rounded up (JavaScript's Math.round)
    expected_bytes = np.floor(np.clip(expected.astype(np.float64), 0, 1) * 255 + 0.5)
    result = np.array(shown["result"], np.uint8).reshape(height, width, 4)
    np.testing.assert_array_equal(result[..., :3], expected_bytes[..., :3])
    assert np.abs(result[..., :3].astype(int) - rgba[..., :3]).mean() > 1  # it did blur
    with page.expect_download() as download:
        page.click("#try-exr")
    path = tmp_path / "blur.exr"
    download.value.save_as(path)
    import OpenImageIO as oiio

    exr = oiio.ImageInput.open(str(path))
    pixels = exr.read_image("float")
    channels = list(exr.spec().channelnames)
    exr.close()
    assert channels[:3] == ["R", "G", "B"]
    np.testing.assert_array_equal(pixels[..., :3], expected[..., :3])
    page.fill("#wipe", "30")
    session.shot("try")
    session.close()


def _write_pairs(folder: Path) -> tuple[list[str], list[str]]:
    """Two small pairs to learn from: grainy crops of a photo, and the clean crops."""
    from skimage.data import astronaut

    photo = astronaut()
    rng = np.random.default_rng(0)
    inputs, targets = [], []
    for index, (y, x) in enumerate([(60, 180), (300, 120)]):
        clean = photo[y : y + 40, x : x + 48]
        grain = rng.normal(0, 20, clean.shape)
        source, target = folder / f"in.{index}.png", folder / f"gt.{index}.png"
        Image.fromarray(np.clip(clean + grain, 0, 255).astype(np.uint8)).save(source)
        Image.fromarray(clean).save(target)
        inputs.append(str(source))
        targets.append(str(target))
    return inputs, targets


def test_a_training_job_started_in_the_page_draws_its_curve_and_cancels(
    browser: Any, team: Team, tmp_path: Path
) -> None:
    server, tokens = team
    session = Session(browser, server, tokens["admin"])
    session.go("training")
    page = session.page
    inputs, targets = _write_pairs(tmp_path)
    page.fill("#job-name", "tiny")
    page.set_input_files("#job-inputs", inputs)
    page.set_input_files("#job-targets", targets)
    page.fill("#job-steps", "20000")
    page.fill("#job-crop", "16")
    page.fill("#job-sheets", "25")
    page.click("#job-start")
    page.wait_for_selector("#job-note:has-text('job tiny')")
    page.wait_for_selector('#jobs tr[data-job="tiny"]')
    # before its first contact sheet, the page shows no broken picture
    shown = page.evaluate(
        "() => { const i = document.querySelector('img.sheet');"
        " return i.getAttribute('src') ? 'loaded' : getComputedStyle(i).display; }"
    )
    assert shown in ("none", "loaded")

    def points() -> int:
        return int(page.get_attribute("#loss-chart", "data-points") or 0)

    page.wait_for_function(
        "() => Number(document.querySelector('#loss-chart')?.dataset.points || 0) >= 2",
        timeout=45_000,
    )
    first = points()
    page.wait_for_function(
        f"() => Number(document.querySelector('#loss-chart').dataset.points) > {first}"
    )
    page.wait_for_function("() => document.querySelector('img.sheet')?.naturalWidth > 0")
    # the job's settings: those set in the form, and the defaults
    settings = page.locator("#job-settings")
    assert settings.locator('tr[data-setting="steps"] td').nth(1).inner_text() == "20000"
    assert settings.locator('tr[data-setting="crop_size"] td').nth(1).inner_text() == "16"
    assert settings.locator('tr[data-setting="network"] td').nth(1).inner_text() == "small"
    session.shot("training")
    page.click('#job-detail button[data-action="cancel"]')
    page.wait_for_selector('#jobs tr[data-job="tiny"] td:text-is("cancelled")')
    status, _, body = api(server, tokens["admin"], "/v2/training/jobs/tiny")
    assert status == 200 and json.loads(body)["state"] == "cancelled"
    session.close()


def test_an_artist_sees_no_admin_controls_and_the_api_refuses_them(
    browser: Any, team: Team
) -> None:
    server, tokens = team
    session = Session(browser, server, tokens["artist"])
    session.go("models")
    page = session.page
    page.wait_for_selector('.model[data-model="blur"]')
    assert page.locator("button.reload").count() == 0
    session.go("training")
    page.wait_for_selector("#live.ok")
    time.sleep(0.6)  # a tick: the jobs the artist may see have arrived
    assert page.locator('#jobs tr[data-job="tiny"]').count() == 0  # the admin's job
    assert page.locator("#job-detail button").count() == 0
    status, _, _ = api(server, tokens["artist"], "/v2/repository/models/blur/load", b"")
    assert status == 403
    session.shot("artist-models")
    session.close()


def test_without_tokens_the_page_opens_without_signing_in(browser: Any, tmp_path: Path) -> None:
    from tests.support.servers import start_server

    server = start_server(jobs_folder=tmp_path / "jobs", reload_interval=None)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(server.http_url + "/#models")
        page.wait_for_selector('.model[data-model="blur"] button.reload')  # everyone is admin
        assert page.is_hidden("#signin") and page.is_hidden("#signout")
        assert "everyone is admin" in page.inner_text("#who")
        assert errors == []
    finally:
        context.close()
        server.close()
