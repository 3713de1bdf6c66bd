"""The feedback page in a real headless Chromium (Debian's, driven by Playwright; never downloaded).

Starts `mimic-feedback`'s app on a free 127.0.0.1 port for a tiny trained attention_branch run,
then, as a user would: show a prediction, zoom and probe, draw an include and an exclude region
(and a polygon, selected and deleted), switch to the overlay, retrain, show the differences,
accept, roll back — checking the page and the API at each step. Screenshots go to
``test-artifacts/feedback/``.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = os.environ.get("MIMIC_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set MIMIC_CHROMIUM)",
                allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "feedback"
TOKEN = "e2e-token"
CANVAS = 384  # CSS pixels of the page's canvases


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mimic_runner.feedback.runs import train_run

    return train_run(tmp_path_factory.mktemp("e2e"), [
        "model=attention_branch", "trainer=smoke", "data.synth.params.n=240",
        "data.image_size=64"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(trained_run: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    import uvicorn

    from mimic_runner.feedback.app import create_app
    from mimic_runner.feedback.session import FeedbackSession

    session = FeedbackSession(trained_run, workspace=tmp_path / "ws", author="e2e")
    app = create_app(session, token=TOKEN, allowed_hosts=["127.0.0.1", "localhost"])
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    base = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=120)
    try:
        yield {"url": base, "session": session, "api": api}
    finally:
        api.close()
        srv.should_exit = True
        thread.join(30)


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _canvas_point(page: Any, selector: str, cx: float, cy: float) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    return box["x"] + cx * box["width"] / CANVAS, box["y"] + cy * box["height"] / CANVAS


def _drag(page: Any, selector: str, start: tuple[float, float], end: tuple[float, float]
          ) -> None:
    x0, y0 = _canvas_point(page, selector, *start)
    x1, y1 = _canvas_point(page, selector, *end)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()


def test_feedback_page_end_to_end(server: dict[str, Any]) -> None:
    api, session = server["api"], server["session"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        # Without the token the page is refused (a separate page: its console error is expected).
        refused = browser.new_page()
        assert refused.goto(server["url"] + "/").status == 401
        refused.close()
        page = browser.new_page(viewport={"width": 1480, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: d.accept())
        external: list[str] = []
        page.on("request", lambda r: external.append(r.url)
                if not r.url.startswith(server["url"]) else None)
        try:
            # /?token= sets the cookie and redirects to the page.
            page.goto(f"{server['url']}/?token={TOKEN}")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            first = page.locator("#image-list button").first
            image_id = first.get_attribute("data-id")
            assert image_id and image_id in session.index
            assert page.locator("#version-badge").inner_text().startswith("current v1")
            _shot(page, "01-loaded")

            # Show prediction: the page agrees with the API.
            page.click("#show-prediction")
            page.wait_for_selector("#predicted-class")
            pred = api.get(f"/api/images/{image_id}/prediction").json()
            text = page.locator("#predicted-class").inner_text()
            assert f"Predicted: {pred['predicted_name']}" in text
            assert f"label: {pred['label_name']}" in text

            # Zoom (buttons and wheel) and probe: values under the cursor match the data.
            page.click("#zoom-in")
            page.click("#zoom-in")
            assert page.locator("#zoom-level").inner_text() == "156%"
            x, y = _canvas_point(page, "#image-canvas", 200, 170)
            page.mouse.move(x, y)
            page.mouse.wheel(0, -120)
            assert page.locator("#zoom-level").inner_text() == "195%"
            page.mouse.move(x + 1, y + 1)
            probe = page.locator("#probe").inner_text()
            m = re.match(r"x (\d+), y (\d+) · pixel (\d+) · attention ([\d.]+)", probe)
            assert m, probe
            px, py, value, att = int(m[1]), int(m[2]), int(m[3]), float(m[4])
            assert value == int(session.image_uint8(image_id)[0, py, px])
            assert abs(att - session.attention(image_id)[py, px]) <= 5e-4  # shown to 3 places
            _shot(page, "02-zoom-probe")
            page.click("#zoom-reset")

            # Draw: an include rectangle and an exclude ellipse (mouse drags on the canvas).
            page.click(".tool[data-tool='rect']")
            page.check("input[name='kind'][value='include']")
            _drag(page, "#image-canvas", (96, 120), (288, 300))
            page.wait_for_selector("#roi-list li:nth-child(1)")
            page.click(".tool[data-tool='ellipse']")
            page.check("input[name='kind'][value='exclude']")
            _drag(page, "#attention-canvas", (10, 10), (80, 70))  # either canvas works
            page.wait_for_selector("#roi-list li:nth-child(2)")
            rois = api.get("/api/rois", params={"image_id": image_id}).json()
            assert [(r["shape"], r["kind"]) for r in rois] == [("rect", "include"),
                                                               ("ellipse", "exclude")]
            (x0, y0), (x1, y1) = rois[0]["points"]
            assert abs(x0 - 96 / CANVAS) < 0.01 and abs(y0 - 120 / CANVAS) < 0.01
            assert abs(x1 - 288 / CANVAS) < 0.01 and abs(y1 - 300 / CANVAS) < 0.01
            # A polygon (clicks, double-click closes), selected and deleted again.
            page.click(".tool[data-tool='polygon']")
            for cx, cy in ((300, 40), (360, 60), (330, 120)):
                page.mouse.click(*_canvas_point(page, "#image-canvas", cx, cy))
            page.mouse.dblclick(*_canvas_point(page, "#image-canvas", 330, 120))
            page.wait_for_selector("#roi-list li:nth-child(3)")
            assert api.get("/api/rois").json()[-1]["shape"] == "polygon"
            page.click(".tool[data-tool='select']")
            page.mouse.click(*_canvas_point(page, "#image-canvas", 330, 75))
            page.wait_for_selector("#roi-list li.selected")
            page.click("#delete-roi")
            page.wait_for_function("document.querySelectorAll('#roi-list li').length === 2")
            assert len(api.get("/api/rois").json()) == 2
            _shot(page, "03-rois")

            page.check("input[name='view'][value='overlay']")
            page.locator("#opacity").fill("0.7")
            page.check("#stretch")
            assert "(stretched)" in page.locator("#attention-range").inner_text()
            assert not page.locator("#attention-canvas").is_visible()
            _shot(page, "04-overlay")
            page.check("input[name='view'][value='side']")

            # Retrain (tiny) with progress polling; a candidate appears.
            page.fill("#retrain-form input[name='epochs']", "1")
            page.fill("#retrain-form input[name='max_batches']", "2")
            page.click("#retrain")
            page.wait_for_selector("#retrain-message[data-state='done']", timeout=300_000)
            assert page.locator("#retrain-progress").evaluate("e => e.value") == 1
            page.wait_for_function(
                "document.querySelector('#version-badge').textContent.includes('candidate v2')")
            status = api.get("/api/status").json()
            assert status["candidate"]["id"] == 2 and status["current"]["id"] == 1
            _shot(page, "05-retrained")

            # Differences: the table shows what the API computes.
            page.click("#show-diff")
            page.wait_for_selector("#diff:not([hidden]) #diff-summary tr:nth-child(3)")
            diff = api.get("/api/diff", params={"heldout": "val"}).json()
            summary = page.locator("#diff-summary").inner_text()
            assert "v1" in summary and "v2" in summary
            acc = diff["heldout"]["accuracy"]
            assert f"{acc['before']:.3f}" in summary and f"{acc['after']:.3f}" in summary
            _shot(page, "06-diff")

            # Accept, then roll back to byte-identical weights.
            weights_v1 = status["weights_sha256"]
            page.click("#accept")
            page.wait_for_function(
                "document.querySelector('#version-badge').dataset.current === '2'")
            # The handler reloads the attention map before it reports; wait for the report, or
            # the next click would race it (seen on a loaded CI machine).
            page.wait_for_function(
                "document.querySelector('#status').innerText.includes('accepted: version 2')")
            assert api.get("/api/status").json()["current"]["id"] == 2
            _shot(page, "07-accepted")
            page.click("#rollback")
            page.wait_for_function(
                "document.querySelector('#version-badge').dataset.current === '1'")
            back = api.get("/api/status").json()
            assert back["current"]["id"] == 1 and back["weights_sha256"] == weights_v1
            assert page.locator("#versions tr[data-version='2']").get_attribute(
                "data-status") == "rolled_back"
            page.wait_for_function(
                "document.querySelector('#status').innerText.includes('rolled back version 2')")
            assert page.locator("#diff").is_hidden()  # stale differences are not left on show
            _shot(page, "08-rolled-back")
        finally:
            if errors or external:
                _shot(page, "99-failure")
            browser.close()
    assert not errors, errors
    assert not external, external  # everything was served locally
