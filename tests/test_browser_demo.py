"""The structure explorer on the real demo (25 zoo models + Fashion-MNIST, 60,000 fingerprints per space)
in headless Chromium: the map recolours and a box selects samples, the Spectra and Design choices pages
render. Screenshots go to test-artifacts/demo-*.png.

The demo is built and analysed here (about 7 minutes on a 2-core CPU), unless MANIFPT_DEMO_WORKSPACE
names one already built and analysed (`manifpt demo`, then `manifpt analyze`); the test only reads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

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

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.demo]



@pytest.fixture
def app_server(demo_workspace: Path, tmp_path: Path) -> Iterator[str]:
    with served_app(demo_workspace, tmp_path / "streamlit.log") as url:
        yield url


def test_the_structure_explorer_on_the_demo(app_server: str, demo_workspace: Path) -> None:
    from fingerprint_core.workspace import Workspace

    ws = Workspace.open(demo_workspace)
    n_models = len(ws.model_names())
    with chromium_page(width=1500, height=1100) as page:
        page.goto(app_server)
        wait_for_app_run(page)
        open_page(page, "Fingerprint map")
        chart = page.get_by_test_id("stPlotlyChart").first
        chart.locator(".legendtext").first.wait_for(timeout=120_000)
        choose_segment(page, "Level", "raw")  # every sample (the map opens at the learned level: test samples only)
        chart.locator(".legendtext").first.wait_for(timeout=120_000)
        main = page.get_by_test_id("stMain").inner_text()
        n_points = int(re.search(r"([\d,]+) samples from (\d+) sets", main).group(1).replace(",", ""))
        assert n_points == len(ws.images("real")) + sum(len(ws.images(m)) for m in ws.model_names())
        assert f"samples from {n_models + 1} sets" in main
        assert len(legend_texts(chart)) >= n_models  # coloured by model (the legend may scroll)

        design = ws.design()
        levels = set(design.loc[design["model"].isin(ws.model_names()), "upsampling"].astype(str))
        choose_colouring(page, chart, "upsampling", sorted(levels))
        assert legend_texts(chart) == levels | {"real"}

        drag_box(page, chart.locator(".nsewdrag").first, 0.3, 0.3, 0.6, 0.6)
        heading = page.get_by_role("heading", name=re.compile(r"^Selection: "))
        heading.wait_for(timeout=60_000)
        wait_for_app_run(page)
        selected = int(re.match(r"Selection: ([\d,]+) samples", heading.inner_text()).group(1).replace(",", ""))
        assert 0 < selected < n_points
        grid = page.get_by_test_id("stPlotlyChart").nth(1)
        grid.locator(".main-svg").first.wait_for(timeout=30_000)
        assert "nearest real" in grid.inner_text()
        assert legend_texts(chart) == levels | {"real"}  # selecting kept the colouring: the map was not redrawn
        assert page.get_by_test_id("stException").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot_whole_app(page, ARTIFACTS / "demo-map.png")

        charts = show_page(page, "Spectra", chart=2)
        assert page.get_by_test_id("stException").count() == 0
        assert "real control" in charts.first.inner_text()
        screenshot_whole_app(page, ARTIFACTS / "demo-spectra.png")

        charts = show_page(page, "Design choices", chart=1)
        nmi = charts.first.inner_text()
        assert "paper, Table 5" in nmi and all(s in nmi for s in ("rgb", "freq", "sl", "ssl"))
        assert "What stands out" in page.get_by_test_id("stMain").inner_text()
        assert page.get_by_test_id("stException").count() == 0
        screenshot_whole_app(page, ARTIFACTS / "demo-design.png")
