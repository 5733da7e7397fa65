"""A background job in headless Chromium: "Run the analysis here" starts `manifpt analyze` in its own process;
the page follows it, a page switch and a closed tab do not stop it, and the map appears when it is done."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_util import ARTIFACTS, chromium_page, open_page, screenshot_whole_app, served_app, wait_for_app_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUNNING = "The analysis runs in the background…"


@pytest.fixture
def ws(gray_workspace_root, tmp_path) -> Path:
    """A private copy of the toy grayscale workspace, not analysed yet, alone in its root."""
    return Path(shutil.copytree(gray_workspace_root / "gm-gray", tmp_path / "root" / "gm-gray"))


@pytest.fixture
def app_server(ws: Path, tmp_path: Path) -> Iterator[str]:
    with served_app(ws.parent, tmp_path / "streamlit.log") as url:
        yield url


def test_an_analysis_started_here_survives_a_page_switch_and_a_closed_tab(app_server: str, ws: Path) -> None:
    from fingerprint_core import jobs

    with chromium_page(width=1500, height=1100) as page:
        page.goto(app_server)
        wait_for_app_run(page)
        open_page(page, "Fingerprint map")
        assert "has no analysis yet" in page.get_by_test_id("stMain").inner_text()

        page.get_by_role("button", name="Run the analysis here").click()

        page.get_by_text(RUNNING).wait_for(timeout=30_000)
        assert page.get_by_role("button", name="Run the analysis here").is_disabled()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "job-running.png"))
        open_page(page, "Models")
        assert jobs.status(ws, "analyze").running  # read by another process than the app's: from the record
        open_page(page, "Fingerprint map")
        page.locator(f"text={RUNNING}").or_(page.get_by_test_id("stPlotlyChart")).first.wait_for(timeout=30_000)
        tab = page.context.browser.new_page(viewport={"width": 1500, "height": 1100})
        page.close()  # the tab that started it

        tab.goto(app_server)
        wait_for_app_run(tab)
        open_page(tab, "Fingerprint map")
        tab.get_by_test_id("stPlotlyChart").locator(".main-svg").first.wait_for(timeout=300_000)
        wait_for_app_run(tab)

        done = jobs.status(ws, "analyze")
        assert done.state == "finished", done.error
        assert tab.get_by_test_id("stException").count() == 0
        assert tab.get_by_text(RUNNING).count() == 0 and "has no analysis yet" not in tab.get_by_test_id("stMain").inner_text()
        screenshot_whole_app(tab, ARTIFACTS / "job-finished.png")
