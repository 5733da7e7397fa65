"""The real app in headless Chromium: the server starts, the Models page renders, a screenshot is kept."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

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


@pytest.fixture
def browser_page():
    """A Playwright page in the system Chromium (skipped, with the reason, where there is none)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (set MANIFPT_CHROMIUM to its path)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1500, "height": 1000})
        finally:
            browser.close()


@pytest.fixture
def app_server(gray_workspace_root: Path, tmp_path: Path) -> Iterator[str]:
    """The app served by a real `streamlit run` subprocess on a free port; yields its URL."""
    port = free_port()
    env = {**os.environ, "MANIFPT_WORKSPACE": str(gray_workspace_root)}
    log = open(tmp_path / "streamlit.log", "w+")
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    except (RuntimeError, TimeoutError) as e:
        log.seek(0)
        pytest.fail(f"{e}\n--- server log ---\n{log.read()}")
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


def screenshot_whole_app(page, path: Path) -> None:
    """A screenshot of the whole app: Streamlit scrolls inside its own container, so grow the viewport."""
    height = page.get_by_test_id("stMain").evaluate("e => e.scrollHeight")
    page.set_viewport_size({"width": page.viewport_size["width"], "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(500)  # relayout and plotly redraw at the new size
    page.screenshot(path=str(path), full_page=True)


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
