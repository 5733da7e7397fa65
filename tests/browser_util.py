"""Helpers of the browser tests: serve the app with `streamlit run`, drive it in the system Chromium."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("MANIFPT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Poll the server's health endpoint until it answers "ok"; fail early if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"streamlit did not become healthy within {timeout} s")


@contextlib.contextmanager
def chromium_page(width: int = 1500, height: int = 1000) -> Iterator:
    """A Playwright page in the system Chromium (the test is skipped, with the reason, where there is none)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (set MANIFPT_CHROMIUM to its path)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


@contextlib.contextmanager
def served_app(workspace_root: Path, log_path: Path) -> Iterator[str]:
    """The app served by a real `streamlit run` subprocess on a free port, over a workspace root; yields its URL."""
    port = free_port()
    env = {**os.environ, "MANIFPT_WORKSPACE": str(workspace_root)}
    log = open(log_path, "w+")
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, proc)
        except (RuntimeError, TimeoutError) as e:
            log.seek(0)
            pytest.fail(f"{e}\n--- server log ---\n{log.read()}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_for_app_run(page, timeout_ms: int = 60_000) -> None:
    """Wait until the app is connected and its script has finished running."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_ms)
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout_ms)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout_ms)


def open_page(page, title: str) -> None:
    """Click a page in the sidebar navigation and wait for its script to finish."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=60_000)
    wait_for_app_run(page)


def screenshot_whole_app(page, path: Path) -> None:
    """A screenshot of the whole app: Streamlit scrolls inside its own container, so grow the viewport."""
    height = page.get_by_test_id("stMain").evaluate("e => e.scrollHeight")
    page.set_viewport_size({"width": page.viewport_size["width"], "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(500)  # relayout and plotly redraw at the new size
    page.screenshot(path=str(path), full_page=True)


def drag_box(page, element, fx0: float, fy0: float, fx1: float, fy1: float) -> None:
    """Drag with the mouse across an element, from and to fractions of its size."""
    box = element.bounding_box()
    x0, y0 = box["x"] + fx0 * box["width"], box["y"] + fy0 * box["height"]
    x1, y1 = box["x"] + fx1 * box["width"], box["y"] + fy1 * box["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=12)  # plotly needs intermediate moves to see a drag
    page.mouse.up()


def choose_colouring(page, chart, column: str, shows: list[str]) -> None:
    """Pick "Colour by: column" in a fingerprint map's own dropdown; wait until its legend shows every entry of shows."""
    chart.locator(".updatemenu-header-group").first.click()
    chart.locator(".updatemenu-dropdown-button").filter(has_text=f"Colour by: {column}").first.click()
    page.wait_for_function(
        "([el, want]) => want.every(w => [...el.querySelectorAll('.legendtext')].some(e => e.textContent === w))",
        arg=[chart.element_handle(), list(shows)], timeout=30_000)


def legend_texts(chart) -> set[str]:
    """The entries of a plotly chart's legend."""
    legend = chart.locator(".legendtext")
    return {legend.nth(i).text_content() for i in range(legend.count())}


def show_page(page, title: str, chart: int) -> object:
    """Open a page at the usual viewport and wait for its chart number chart; returns the page's charts."""
    page.set_viewport_size({"width": 1500, "height": 1100})
    open_page(page, title)
    charts = page.get_by_test_id("stPlotlyChart")
    charts.nth(chart).locator(".main-svg").first.wait_for(timeout=60_000)
    return charts


def choose_segment(page, control: str, option: str) -> None:
    """Click an option of a segmented control (by their labels) and wait for the rerun it starts."""
    group = page.get_by_test_id("stMain").get_by_role("radiogroup", name=control, exact=True)
    group.get_by_role("radio", name=option, exact=True).click()
    page.wait_for_timeout(300)  # the rerun starts
    wait_for_app_run(page)


def small_png(source: Path, target: Path, *, width: int = 1400, max_bytes: int = 300_000) -> None:
    """A copy of a screenshot for the README: at most width pixels wide, in a 256-colour palette (under max_bytes)."""
    from PIL import Image

    img = Image.open(source).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    for colours in (256, 128, 64):
        img.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(target, optimize=True)
        if target.stat().st_size <= max_bytes:
            return
    raise AssertionError(f"{target} is {target.stat().st_size:,} bytes, over {max_bytes:,}")


def demo_workspace(tmp_path_factory) -> Path:
    """The analysed demo: MANIFPT_DEMO_WORKSPACE when set (only read), else built and analysed here (minutes; the
    test is skipped where the demo cannot be built)."""
    given = os.environ.get("MANIFPT_DEMO_WORKSPACE")
    if given:
        return Path(given)
    from fingerprint_core import demo
    from fingerprint_core.analysis.run import analyze
    from fingerprint_core.datasets import DatasetError
    from fingerprint_core.workspace import Workspace

    path = tmp_path_factory.mktemp("demo") / "demo"
    try:
        demo.build(path, device="cpu")
    except DatasetError as e:  # no Fashion-MNIST: scripts/setup.sh installs it
        pytest.skip(f"the demo cannot be built here: {e}")
    analyze(Workspace.open(path))
    return path
