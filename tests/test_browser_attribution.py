"""The Attribute and Benchmark pages in headless Chromium: files dropped on the uploader come back as prediction
cards (a bad one as a message naming it); the benchmark renders. Screenshots go to test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_util import ARTIFACTS, chromium_page, open_page, screenshot_whole_app, served_app, wait_for_app_run
from test_app_attribution import attribution_root, sample_png

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def root(tmp_path_factory) -> Path:
    return attribution_root(tmp_path_factory)


@pytest.fixture
def app_server(root: Path, tmp_path: Path) -> Iterator[str]:
    """The app served over the trained toy workspace (with its benchmark beside it); yields its URL."""
    with served_app(root, tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture
def browser_page():
    with chromium_page(width=1500, height=1100) as page:
        yield page


def test_dropped_files_come_back_as_prediction_cards(app_server: str, browser_page, root: Path) -> None:
    page = browser_page
    page.goto(app_server)
    wait_for_app_run(page)
    open_page(page, "Attribute")
    dropzone = page.get_by_test_id("stFileUploader").locator("input[type=file]")

    dropzone.set_input_files([
        {"name": "from-gan.png", "mimeType": "image/png", "buffer": sample_png(root, "toy_gan")},
        {"name": "from-rows.png", "mimeType": "image/png", "buffer": sample_png(root, "toy_rows", 3)},
        {"name": "letter.png", "mimeType": "image/png", "buffer": b"Dear reviewer, this is not a picture.\n"},
    ])

    page.get_by_role("heading", name="Per image").wait_for(timeout=120_000)
    wait_for_app_run(page, 120_000)
    main = page.get_by_test_id("stMain")
    assert page.get_by_test_id("stException").count() == 0
    assert main.get_by_text("1. from-gan.png").is_visible() and main.get_by_text("2. from-rows.png").is_visible()
    error = page.get_by_test_id("stAlertContentError")
    assert error.count() == 1 and "letter.png: not an image" in error.inner_text()
    text = main.inner_text()
    assert "open-set score" in text and "p(real)" in text and "Design choices" in text and "upsampling:" in text
    # a top-models chart per card, plus the batch chart
    top_charts = [c for c in page.get_by_test_id("stPlotlyChart").all() if "top models" in c.inner_text()]
    assert len(top_charts) == 2
    assert page.get_by_role("button", name="Download CSV").is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot_whole_app(page, ARTIFACTS / "attribute.png")

    page.set_viewport_size({"width": 1500, "height": 1100})
    open_page(page, "Benchmark")
    page.get_by_test_id("stPlotlyChart").nth(1).locator(".main-svg").first.wait_for(timeout=30_000)
    main_text = page.get_by_test_id("stMain").inner_text()
    assert "What the numbers say" in main_text and "a · closed set" in main_text
    # the results table, and the calibration table (ECE before / after temperature scaling) with its diagram
    assert page.get_by_test_id("stDataFrame").count() == 2 and page.get_by_test_id("stException").count() == 0
    assert "Calibration of the attributors" in main_text and "rgb: reliability after scaling" in main_text
    screenshot_whole_app(page, ARTIFACTS / "benchmark.png")
