"""Time, in headless Chromium, from choosing another colouring on the Fingerprint map to the redrawn
legend (server rerun + figure transfer + WebGL redraw), on a workspace with an analysis.

    python bench/map_recolour.py [WS]        # default: the demo workspace (manifpt demo; analyze)

Prints one row per recolouring. Needs Chromium (/usr/bin/chromium or $MANIFPT_CHROMIUM) and Playwright.
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
# colouring -> a legend entry that only that colouring draws
STEPS = {"upsampling": "pixel_shuffle", "loss": "hinge", "family": "diffusion", "model": None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from playwright.sync_api import sync_playwright

    from fingerprint_core.demo import default_workspace
    from fingerprint_core.workspace import Workspace

    ws = Path(sys.argv[1]) if len(sys.argv) > 1 else default_workspace()
    from fingerprint_core.analysis.run import Analysis

    opened = Workspace.open(ws)
    first_model = opened.model_names()[0]
    n = len(Analysis.load(opened).fingerprint_map(opened.space_names()[0]))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=REPO, env={**os.environ, "MANIFPT_WORKSPACE": str(ws)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(8)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"http://localhost:{port}/page_map")
            page.wait_for_selector(".js-plotly-plot .legendtext", timeout=180_000)
            print(f"workspace {ws}: {n:,} points on the map, headless Chromium (software WebGL)")
            print(f"{'colour by':<12} {'seconds to the redrawn legend':>30}")
            for colour, legend in STEPS.items():
                time.sleep(2)
                page.locator('[data-testid="stSelectbox"]').filter(has_text="Colour by").locator("input").first.click(force=True)
                start = time.perf_counter()
                page.get_by_role("option", name=colour, exact=True).click()
                want = legend or first_model
                page.wait_for_function(
                    "w => [...document.querySelectorAll('.js-plotly-plot .legendtext')].some(e => e.textContent === w)",
                    arg=want, timeout=60_000)
                print(f"{colour:<12} {time.perf_counter() - start:>30.2f}")
            browser.close()
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
