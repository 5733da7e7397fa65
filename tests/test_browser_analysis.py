"""The structure explorer in headless Chromium: a box drawn on the fingerprint map opens the grid of the
selected samples, and recolouring keeps it; the Spectra and Design choices pages render. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis_util import analysed_root
from browser_util import (
    ARTIFACTS,
    choose_colouring,
    choose_segment,
    chromium_page,
    drag_box,
    legend_texts,
    open_page,
    screenshot_whole_app,
    served_app,
    show_page,
    wait_for_app_run,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def app_server(tmp_path_factory, tmp_path: Path) -> Iterator[str]:
    """The app served over the analysed toy workspace; yields its URL."""
    with served_app(analysed_root(tmp_path_factory), tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture
def browser_page():
    with chromium_page(width=1500, height=1100) as page:
        yield page


def test_box_selection_on_the_map_opens_the_sample_grid(app_server: str, browser_page) -> None:
    page = browser_page
    page.goto(app_server)
    wait_for_app_run(page)
    open_page(page, "Fingerprint map")
    chart = page.get_by_test_id("stPlotlyChart").first
    plot_area = chart.locator(".nsewdrag").first  # plotly's drag layer over the plotting area
    plot_area.wait_for(timeout=30_000)
    assert page.get_by_test_id("stException").count() == 0
    assert "Select a region" in page.get_by_test_id("stMain").inner_text()
    choose_segment(page, "Level", "raw")  # the raw level: every sample (the learned one holds the test samples only)
    plot_area = chart.locator(".nsewdrag").first
    plot_area.wait_for(timeout=30_000)
    assert "126 samples from 5 sets in the rgb space, raw level" in page.get_by_test_id("stMain").inner_text()

    drag_box(page, plot_area, 0.01, 0.01, 0.99, 0.99)  # the whole map: every sample

    heading = page.get_by_role("heading", name=re.compile(r"^Selection: "))
    heading.wait_for(timeout=60_000)
    wait_for_app_run(page)
    assert heading.inner_text().startswith("Selection: 126 samples from 5 models")
    grid = page.get_by_test_id("stPlotlyChart").nth(1)
    grid.locator(".main-svg").first.wait_for(timeout=30_000)
    titles = grid.inner_text()
    for title in ("sample", "nearest real", "RGB artifact", "FREQ artifact"):
        assert title in titles
    assert page.get_by_role("button", name="Download CSV").is_visible()
    assert page.get_by_test_id("stException").count() == 0

    # recolouring is the chart's own dropdown: the legend changes, the selection and its grid stay
    choose_colouring(page, chart, "upsampling", ["bilinear_conv"])
    assert legend_texts(chart) == {"real", "transposed_conv", "bilinear_conv"}
    assert chart.locator(".legendtitletext").text_content() == "upsampling"
    assert heading.inner_text().startswith("Selection: 126 samples from 5 models")
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot_whole_app(page, ARTIFACTS / "map_selection.png")

    charts = show_page(page, "Spectra", chart=2)
    assert charts.count() == 3 and page.get_by_test_id("stException").count() == 0
    assert "real control" in charts.first.inner_text()
    screenshot_whole_app(page, ARTIFACTS / "spectra.png")

    charts = show_page(page, "Design choices", chart=1)
    main = page.get_by_test_id("stMain").inner_text()
    assert "What stands out" in main and "paper, Table 5" in charts.first.inner_text()
    assert page.get_by_test_id("stException").count() == 0
    screenshot_whole_app(page, ARTIFACTS / "design.png")
