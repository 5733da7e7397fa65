"""The foreign set dropped on the Attribute page of the demo as batches from one source: each foreign
generator's first 50 samples (AppTest, every model; a real browser, one model), and a known model's
test images as the control. The demo is built here unless MANIFPT_DEMO_WORKSPACE names one."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_util import open_page
from browser_util import chromium_page, served_app, wait_for_app_run
from browser_util import open_page as open_browser_page

pytestmark = [pytest.mark.slow, pytest.mark.demo]

FOREIGN = Path(__file__).resolve().parents[1] / "assets" / "foreign" / "models"
N = 50  # the set size: the largest calibrated one (docs/open-world.md gives the rates at 5 and 20)


def pngs(images: np.ndarray, stem: str) -> dict[str, bytes]:
    out = {}
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img.reshape(img.shape[-2:])).save(buf, "PNG")
        out[f"{stem}-{i:02d}.png"] = buf.getvalue()
    return out


def foreign_pngs(name: str) -> dict[str, bytes]:
    with np.load(FOREIGN / name / "samples.npz") as z:
        return pngs(z["images"][:N], name)


def set_box(at) -> str:
    boxes = [b.value for kind in (at.success, at.warning, at.info) for b in kind if "Set verdict" in b.value]
    assert len(boxes) == 1, boxes
    return boxes[0]


def as_one_set(monkeypatch, demo_workspace: Path, files: dict[str, bytes]) -> str:
    at = open_page(monkeypatch, demo_workspace.parent, "page_attribute.py")
    at.file_uploader(key="attr_upload").set_value([(n, d, "image/png") for n, d in files.items()]).run()
    at.toggle(key="attr_as_set").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    return set_box(at)


@pytest.mark.parametrize("name", sorted(p.name for p in FOREIGN.iterdir() if (p / "samples.npz").is_file()))
def test_each_foreign_model_dropped_as_one_set_is_unknown(monkeypatch, demo_workspace, name):
    box = as_one_set(monkeypatch, demo_workspace, foreign_pngs(name))
    assert "Set verdict: **unknown**" in box and f"{N} images" in box


def test_a_known_models_test_images_as_one_set_get_that_model(monkeypatch, demo_workspace):
    from fingerprint_core.attribution import split as split_mod
    from fingerprint_core.workspace import Workspace

    ws = Workspace.open(demo_workspace)
    model = "gan-pshuffle-hinge-bn-s0"
    table = split_mod.workspace_split(ws, seed=0)
    rows = table[(table["model"] == model) & (table["part"] == "test")]["index"].to_numpy()[:N]
    box = as_one_set(monkeypatch, demo_workspace, pngs(np.asarray(ws.images(model))[rows], model))
    assert f"Set verdict: known: **{model}**" in box.replace("\\", "")


@pytest.mark.browser
def test_a_foreign_model_as_one_set_in_the_browser(demo_workspace, tmp_path):
    name = "gan-tconv-lsgan-bn-w64z64-s13"
    files = foreign_pngs(name)
    with served_app(demo_workspace.parent, tmp_path / "streamlit.log") as url, chromium_page(1500, 1100) as page:
        page.goto(url)
        wait_for_app_run(page)
        open_browser_page(page, "Attribute")
        page.get_by_test_id("stFileUploader").locator("input[type=file]").set_input_files(
            [{"name": n, "mimeType": "image/png", "buffer": d} for n, d in files.items()])
        page.get_by_role("heading", name="Per image").wait_for(timeout=240_000)
        wait_for_app_run(page, 240_000)
        page.get_by_text("These images come from one source").click()
        page.get_by_role("heading", name="As one source").wait_for(timeout=120_000)
        wait_for_app_run(page, 120_000)
        text = page.get_by_test_id("stMain").inner_text()
        assert page.get_by_test_id("stException").count() == 0
        assert "Set verdict: unknown" in text and f"{N} images" in text
