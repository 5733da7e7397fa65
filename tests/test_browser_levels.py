"""The fingerprint levels on the real demo in headless Chromium: the map opens at the learned level (the test
samples only) and switches to raw (every sample); the Model similarity heatmap names every model on both axes, in
dendrogram order and sorted by a factor. Screenshots go to test-artifacts/levels-*.png, and the README's two to
docs/screenshot-map-learned.png and docs/screenshot-similarity.png.

The demo is built and analysed here unless MANIFPT_DEMO_WORKSPACE names one already analysed with its levels
(`manifpt demo`, then `manifpt analyze`); the test only reads it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_util import (
    ARTIFACTS,
    REPO,
    choose_colouring,
    choose_segment,
    chromium_page,
    drag_box,
    legend_texts,
    open_page,
    served_app,
    small_png,
    wait_for_app_run,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.demo]
DOCS = REPO / "docs"



@pytest.fixture
def app_server(demo_workspace: Path, tmp_path: Path) -> Iterator[str]:
    with served_app(demo_workspace, tmp_path / "streamlit.log") as url:
        yield url


def shown_count(page, what: str) -> tuple[int, int, str, str]:
    """(points, sets, space, level) from the caption under the map, e.g. "12,000 held-out test samples from 26 sets
    in the rgb space, learned level"."""
    text = page.get_by_test_id("stMain").inner_text()
    m = re.search(rf"([\d,]+) {what} from (\d+) sets in the (\w+) space, (\w+) level", text)
    assert m, text[:2000]
    return int(m.group(1).replace(",", "")), int(m.group(2)), m.group(3), m.group(4)


def axis_labels(chart, axis: str) -> list[str]:
    """Every tick label on the chart's axes of one kind ("x" or "y"), strips included."""
    ticks = chart.locator(f".{axis}tick text")
    return [ticks.nth(i).text_content() for i in range(ticks.count())]


def snapshot(page, name: str, readme: Path) -> None:
    """The viewport as test-artifacts/<name>.png, and a small copy for the README."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(800)  # plotly's last redraw
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    small_png(ARTIFACTS / f"{name}.png", readme)


def test_map_levels_and_the_model_similarity_heatmap_on_the_demo(app_server: str, demo_workspace: Path) -> None:
    from fingerprint_core.analysis.run import Analysis
    from fingerprint_core.workspace import Workspace

    analysis = Analysis.load(Workspace.open(demo_workspace))
    assert analysis is not None, "the demo has no current analysis: run `manifpt analyze` on it"
    space = analysis.spaces[0]
    assert analysis.map_levels(space) == ["learned", "raw"], "the demo's analysis has no learned map"
    models = list(analysis.levels["model"]["models"])
    with chromium_page(width=1500, height=1100) as page:
        page.goto(app_server)
        wait_for_app_run(page)
        open_page(page, "Fingerprint map")
        chart = page.get_by_test_id("stPlotlyChart").first
        chart.locator(".legendtext").first.wait_for(timeout=120_000)
        n, sets, shown_space, level = shown_count(page, "held-out test samples")
        assert (shown_space, level) == (space, "learned")
        assert n == len(analysis.fingerprint_map(space, "learned")) and sets == len(models) + 1
        main = page.get_by_test_id("stMain").inner_text()
        assert "Purity:" in main and "never trained on them" in main
        assert page.get_by_test_id("stException").count() == 0
        snapshot(page, "levels-map-learned", DOCS / "screenshot-map-learned.png")
        # the learned map keeps the in-browser recolouring and the box selection of the raw one
        design = Workspace.open(demo_workspace).design().astype(str)
        ups = set(design.loc[design["model"].isin(models), "upsampling"])
        choose_colouring(page, chart, "upsampling", sorted(ups))
        assert legend_texts(chart) == ups | {"real"}
        drag_box(page, chart.locator(".nsewdrag").first, 0.3, 0.3, 0.6, 0.6)
        heading = page.get_by_role("heading", name=re.compile(r"^Selection: "))
        heading.wait_for(timeout=60_000)
        wait_for_app_run(page)
        selected = int(re.match(r"Selection: ([\d,]+) samples", heading.inner_text()).group(1).replace(",", ""))
        assert 0 < selected < n
        assert legend_texts(chart) == ups | {"real"}  # selecting did not redraw the map

        choose_segment(page, "Level", "raw")
        chart = page.get_by_test_id("stPlotlyChart").first
        chart.locator(".legendtext").first.wait_for(timeout=120_000)
        n_raw, _, _, level = shown_count(page, "samples")
        assert level == "raw" and n_raw == len(analysis.fingerprint_map(space, "raw")) > n
        assert page.get_by_test_id("stException").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "levels-map-raw.png"))

        page.set_viewport_size({"width": 1500, "height": 1250})
        open_page(page, "Model similarity")
        heat = page.get_by_test_id("stPlotlyChart").first
        heat.locator(".main-svg").first.wait_for(timeout=60_000)
        xs, ys = axis_labels(heat, "x"), axis_labels(heat, "y")
        for labels in (xs, ys):  # every model named once on each axis (the strips add the factor names)
            assert sorted(m for m in labels if m in models) == sorted(models)
        assert [m for m in xs if m in models] == list(analysis.levels["model"]["order"][space])  # dendrogram order
        assert page.get_by_test_id("stException").count() == 0
        snapshot(page, "levels-similarity", DOCS / "screenshot-similarity.png")

        page.get_by_test_id("stMain").get_by_role("combobox").first.click()  # Order: by upsampling
        page.get_by_role("option", name="by upsampling, then dendrogram").click()
        wait_for_app_run(page)
        choose_segment(page, "Distance", "energy distance of artifacts")
        heat = page.get_by_test_id("stPlotlyChart").first
        heat.locator(".main-svg").first.wait_for(timeout=60_000)
        xs = [m for m in axis_labels(heat, "x") if m in models]
        level = design.set_index("model")["upsampling"]
        assert sorted(xs) == sorted(models) and [level[m] for m in xs] == sorted(level[m] for m in xs)
        assert page.get_by_test_id("stException").count() == 0
        page.screenshot(path=str(ARTIFACTS / "levels-similarity-by-upsampling.png"))
