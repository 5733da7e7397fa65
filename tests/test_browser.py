"""The real app in headless Chromium: the server starts, the Models page renders, a screenshot is kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_util import ARTIFACTS, chromium_page, screenshot_whole_app, served_app, wait_for_app_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def browser_page():
    """A Playwright page in the system Chromium (skipped, with the reason, where there is none)."""
    with chromium_page() as page:
        yield page


@pytest.fixture
def app_server(gray_workspace_root: Path, tmp_path: Path) -> Iterator[str]:
    """The app served by a real `streamlit run` subprocess on a free port; yields its URL."""
    with served_app(gray_workspace_root, tmp_path / "streamlit.log") as url:
        yield url


def test_models_page_in_chromium(app_server: str, browser_page) -> None:
    page = browser_page
    page.goto(app_server)
    wait_for_app_run(page)
    chart = page.get_by_test_id("stPlotlyChart")
    chart.first.wait_for(state="visible", timeout=30_000)
    chart.first.locator(".main-svg").first.wait_for(timeout=30_000)

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot_whole_app(page, ARTIFACTS / "models_page.png")

    assert page.get_by_role("heading", name="Models").is_visible()
    assert page.get_by_test_id("stException").count() == 0
    main = page.get_by_test_id("stMain").inner_text()
    assert "Workspace gm-gray" in main
    assert chart.count() == 1
    # the four columns of the grid, with a colour bar over each artifact column
    titles = chart.first.inner_text()
    for title in ("sample", "nearest real", "RGB artifact", "FREQ artifact", "range ±"):
        assert title in titles
    assert chart.first.locator(".colorbar").count() == 2
    # st.dataframe draws on a canvas; its accessible grid holds the cell texts
    cells = page.get_by_test_id("stDataFrame").first.get_by_role("gridcell", include_hidden=True).all_text_contents()
    assert {"toy_gan", "toy_vae", "real"} <= set(cells)
