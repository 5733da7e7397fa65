"""The app makes no request outside the machine that serves it: every page of the navigation, over a workspace
(analysed, with an attributor) and an upload, in headless Chromium, every request recorded and any to another host
blocked. The workspace, its models and the uploads have hostile names: no link or picture they hold goes live."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from browser_util import REPO, chromium_page, open_page, served_app, wait_for_app_run
from names_util import FILE_IMAGE, FILE_LINK, JOINER, hostile_root, model_png

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOCAL_SCHEMES = {"data", "blob", "about"}  # drawn by the browser itself, nothing goes out


def navigation_titles() -> list[str]:
    """The page titles of the app's st.navigation, read from app/main.py (every page, in order)."""
    titles = re.findall(r"st\.Page\([^)]*?title=\"([^\"]+)\"", (REPO / "app" / "main.py").read_text())
    assert len(titles) >= 6, titles
    return titles


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or parts.hostname in LOCAL_HOSTS


@pytest.fixture
def root(tmp_path_factory) -> Path:
    return hostile_root(tmp_path_factory)


def test_every_page_and_an_upload_make_no_request_outside_localhost(root: Path, tmp_path: Path) -> None:
    requests, sockets, blocked = [], [], []

    def route(r) -> None:
        if is_local(r.request.url):
            r.continue_()
        else:  # nothing leaves the machine, even while the test fails
            blocked.append(r.request.url)
            r.abort()

    with served_app(root, tmp_path / "streamlit.log") as url, chromium_page(width=1500, height=1100) as page:
        page.context.route("**/*", route)
        page.on("request", lambda r: requests.append(r.url))
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.goto(url)
        wait_for_app_run(page)
        for title in navigation_titles():
            open_page(page, title)
            charts = page.get_by_test_id("stPlotlyChart")
            if charts.count():  # plotly draws after the script ends
                charts.first.locator(".main-svg").first.wait_for(timeout=30_000)
            if title == "Attribute":
                sample = model_png(root)
                page.get_by_test_id("stFileUploader").locator("input[type=file]").set_input_files([
                    {"name": FILE_LINK, "mimeType": "image/png", "buffer": sample},
                    {"name": FILE_IMAGE, "mimeType": "image/png", "buffer": sample},
                ])
                page.get_by_role("heading", name="Per image").wait_for(timeout=120_000)
                wait_for_app_run(page, 120_000)
                page.get_by_test_id("stPlotlyChart").last.locator(".main-svg").first.wait_for(timeout=30_000)
                shown = page.get_by_test_id("stMain").inner_text().replace(JOINER, "")
                assert f"1. {FILE_LINK}" in shown and f"2. {FILE_IMAGE}" in shown  # the names, as text
            assert page.get_by_test_id("stException").count() == 0, title
        page.wait_for_timeout(500)  # a late favicon or font request
        referenced = page.evaluate(
            "[...document.querySelectorAll('link[href], script[src], img[src], iframe[src], source[src]')]"
            ".map(e => e.href || e.src)")
        hrefs = page.evaluate("[...document.querySelectorAll('a[href]')].map(e => e.href)")

    assert blocked == [] and [u for u in requests if not is_local(u)] == []
    assert sockets and all(is_local(u) for u in sockets)
    assert [u for u in referenced if not is_local(u)] == []  # the favicon included
    # the hostile names' links and pictures (to 127.0.0.1:9, or t.png beside the app) never went live
    assert [u for u in [*requests, *hrefs, *referenced] if ":9/" in u or re.search(r"/[tw]\.png$", u)] == []
