"""Time, in headless Chromium, from choosing another colouring on the Fingerprint map to the redrawn map,
on a workspace with an analysis; beside it, the obvious alternative: a server rerun that sends a new figure
(what every recolouring cost before the colours moved into the chart; measured here by switching the space,
which ships a new map of as many points).

    python bench/map_recolour.py [WS]        # default: the demo workspace (manifpt demo; analyze)

Prints one row per change: seconds from the click until the new legend is drawn and the browser has painted
the next two frames. Needs Chromium (/usr/bin/chromium or $MANIFPT_CHROMIUM) and Playwright.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = os.environ.get("MANIFPT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
COLOURINGS = ("upsampling", "loss", "family", "normalization")  # then back to "model"
PAINTED = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"
LEGEND_SHOWS = """([w, fresh]) => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(p => !fresh || !p.dataset.old)
    .some(p => [...p.querySelectorAll('.legendtext')].some(e => e.textContent === w))"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def legend_marks(design, models: list[str]) -> dict[str, str]:
    """colouring -> a legend entry that only that colouring draws (a level no other column or model has)."""
    design = design[design["model"].isin(models)].astype(str)
    taken = {c: set(design[c]) for c in COLOURINGS if c in design}
    marks = {}
    for c, levels in taken.items():
        others = set(models).union(*(v for k, v in taken.items() if k != c))
        unique = sorted(levels - others)
        if unique:
            marks[c] = unique[0]
    return {**marks, "model": models[0]}


def recolour(page, colour: str, legend: str) -> float:
    """Seconds from choosing colour in the chart's dropdown to the painted map with its new legend."""
    chart = page.get_by_test_id("stPlotlyChart").first
    chart.locator(".updatemenu-header-group").first.click()
    item = chart.locator(".updatemenu-dropdown-button").filter(has_text=f"Colour by: {colour}").first
    item.wait_for()
    start = time.perf_counter()
    item.click()
    page.wait_for_function(LEGEND_SHOWS, arg=[legend, False], timeout=60_000)
    page.evaluate(PAINTED)
    return time.perf_counter() - start


def new_figure(page, space: str, legend: str) -> float:
    """Seconds from choosing another space to the painted new map (a rerun that ships a new figure)."""
    page.evaluate("() => document.querySelectorAll('.js-plotly-plot').forEach(p => p.dataset.old = '1')")
    button = page.get_by_role("radio", name=space, exact=True).first  # the Space control
    start = time.perf_counter()
    button.click()
    page.wait_for_function(LEGEND_SHOWS, arg=[legend, True], timeout=60_000)
    page.evaluate(PAINTED)
    return time.perf_counter() - start


def main() -> None:
    from playwright.sync_api import sync_playwright

    from fingerprint_core.analysis.run import Analysis
    from fingerprint_core.demo import default_workspace
    from fingerprint_core.workspace import Workspace

    ws = Path(sys.argv[1]) if len(sys.argv) > 1 else default_workspace()
    opened = Workspace.open(ws)
    first_model = opened.model_names()[0]
    steps = legend_marks(opened.design(), opened.model_names())
    analysis = Analysis.load(opened)
    spaces = analysis.spaces
    n = len(analysis.fingerprint_map(spaces[0]))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=REPO, env={**os.environ, "MANIFPT_WORKSPACE": str(ws)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        time.sleep(8)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"http://localhost:{port}/page_map")
            page.wait_for_selector(".js-plotly-plot .legendtext", timeout=180_000)
            print(f"workspace {ws}: {n:,} points on the map, headless Chromium (software WebGL)\n")
            print(f"{'change':<28} {'to':<20} {'seconds':>8}")
            for _ in range(2):
                for colour, legend in steps.items():
                    time.sleep(2)
                    rows.append(("recolour (chart dropdown)", colour, recolour(page, colour, legend)))
                    print(f"{rows[-1][0]:<28} {rows[-1][1]:<20} {rows[-1][2]:>8.2f}", flush=True)
            for space in [*spaces[1:], spaces[0]] * 2:
                time.sleep(2)
                rows.append(("new figure from the server", f"space {space}", new_figure(page, space, first_model)))
                print(f"{rows[-1][0]:<28} {rows[-1][1]:<20} {rows[-1][2]:>8.2f}", flush=True)
            browser.close()
    finally:
        server.terminate()
    print()
    for what in dict.fromkeys(r[0] for r in rows):
        t = sorted(r[2] for r in rows if r[0] == what)
        print(f"{what:<28} median {t[len(t) // 2]:.2f} s, worst {t[-1]:.2f} s over {len(t)}")


if __name__ == "__main__":
    main()
