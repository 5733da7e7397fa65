"""A colour 64 x 64 workspace in the real app in Chromium: every page opens, colour artifacts draw as signed RGB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_util import ARTIFACTS, choose_segment, chromium_page, open_page, served_app, wait_for_app_run
from fingerprint_core.cli import main
from gmdata import make_gm_dataset

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TITLES = ["Models", "Fingerprint map", "Spectra", "Design choices", "Model similarity", "Attribute", "Benchmark"]


@pytest.fixture(scope="module")
def colour_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("browser-colour")
    data = make_gm_dataset(base / "data", channels=3, size=64, n_real=120, n_per_model=20, bad_file=False)
    ws = base / "workspaces" / "colour64"
    assert main(["fingerprint", str(data), "-w", str(ws), "--device", "cpu", "-q"]) == 0
    assert main(["analyze", str(ws), "--levels", "raw,model", "--device", "cpu", "-q"]) == 0
    return ws.parent


@pytest.fixture
def app_url(colour_root: Path, tmp_path: Path) -> Iterator[str]:
    with served_app(colour_root, tmp_path / "streamlit.log") as url:
        yield url


def test_every_page_opens_on_a_colour_workspace(app_url: str) -> None:
    with chromium_page() as page:
        page.goto(app_url)
        wait_for_app_run(page)
        chart = page.get_by_test_id("stPlotlyChart").first
        chart.locator(".main-svg").first.wait_for(timeout=60_000)
        assert "3×64×64" in page.get_by_test_id("stMain").inner_text()
        choose_segment(page, "Colour artifacts as", "Signed RGB")
        page.get_by_test_id("stPlotlyChart").first.get_by_text("signed RGB, grey = 0").first.wait_for(timeout=30_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "colour_models_page.png"))
        for title in TITLES[1:]:
            open_page(page, title)
            assert page.get_by_test_id("stException").count() == 0, title
        open_page(page, "Spectra")
        choose_segment(page, "Channel", "G")
        assert page.get_by_test_id("stException").count() == 0
