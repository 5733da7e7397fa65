"""The Streamlit app, headless (AppTest), and its pure figure builders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app import figures

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"


def run_app(monkeypatch: pytest.MonkeyPatch, root: Path) -> AppTest:
    """The app run once against a workspace root (AppTest runs in-process, so the env var reaches it)."""
    monkeypatch.setenv("MANIFPT_WORKSPACE", str(root))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def grid_figure(at: AppTest) -> dict:
    """The plotly figure of the sample grid, as plotly JSON."""
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def test_empty_root_explains_how_to_create_a_workspace(monkeypatch, tmp_path):
    root = tmp_path / "no workspaces here"
    at = run_app(monkeypatch, root)

    assert "No workspace yet" in at.info[0].value
    commands = [c.value for c in at.code]
    assert any(c.startswith("manifpt fingerprint DATA_ROOT -w ") and str(root) in c for c in commands)
    assert not at.get("plotly_chart") and not at.dataframe


def test_models_page_with_grayscale_workspace(monkeypatch, gray_workspace_root):
    at = run_app(monkeypatch, gray_workspace_root)

    assert at.sidebar.selectbox[0].value.endswith("gm-gray")
    design = at.dataframe[0].value
    assert list(design["model"]) == ["toy_gan", "toy_vae", "real"]
    assert list(design["samples"]) == [24, 24, 30]
    assert list(design["skipped files"]) == [1, 0, 0]
    assert {"mean d² rgb", "mean d² freq"} <= set(design.columns)
    assert (design["mean d² rgb"] > 0).all()
    assert "1×16×16" in at.caption[0].value

    fig = grid_figure(at)
    kinds = [t["type"] for t in fig["data"]]
    assert kinds.count("image") == 2 * 8 and kinds.count("heatmap") == 2 * 8  # 8 rows, 4 columns
    titles = " ".join(a["text"] for a in fig["layout"]["annotations"])
    assert "nearest real" in titles and "RGB artifact" in titles and "FREQ artifact" in titles
    rgb = fig["layout"]["coloraxis"]
    assert rgb["cmin"] == -rgb["cmax"] and rgb["cmax"] > 0 and "±" in rgb["colorbar"]["title"]["text"]
    details = at.dataframe[-1].value
    assert len(details) == 8 and details["file"].str.startswith("models/toy_gan/").all()

    model = at.selectbox(key=f"model@{gray_workspace_root / 'gm-gray'}")
    model.set_value("toy_vae").run()
    assert not at.exception
    assert at.dataframe[-1].value["file"].str.startswith("models/toy_vae/").all()

    at.slider(key="models_k").set_value(4).run()
    assert not at.exception
    assert [t["type"] for t in grid_figure(at)["data"]].count("heatmap") == 2 * 4


def test_shuffle_draws_other_samples(monkeypatch, gray_workspace_root):
    at = run_app(monkeypatch, gray_workspace_root)
    before = list(at.dataframe[-1].value["sample"])

    at.button[0].click().run()

    assert not at.exception and at.number_input(key="models_seed").value == 1
    assert list(at.dataframe[-1].value["sample"]) != before


def test_models_page_with_rgb_workspace(monkeypatch, rgb_workspace_root):
    at = run_app(monkeypatch, rgb_workspace_root)

    assert "3×16×16" in at.caption[0].value
    fig = grid_figure(at)
    titles = " ".join(a["text"] for a in fig["layout"]["annotations"])
    assert "mean of 3 channels" in titles
    at.radio(key="models_nearest_space").set_value("freq").run()
    assert not at.exception
    assert "(freq space)" in " ".join(a["text"] for a in grid_figure(at)["layout"]["annotations"])


def test_skipped_files_are_listed_with_their_reason(monkeypatch, gray_workspace_root):
    at = run_app(monkeypatch, gray_workspace_root)

    expander = at.expander[0]
    assert "Skipped files (1)" in expander.label
    bad = expander.dataframe[0].value
    assert list(bad["file"]) == ["models/toy_gan/bad.png"]
    assert "not an image" in bad["reason"][0]


def test_sidebar_picks_among_the_workspaces_under_the_root(monkeypatch, gray_workspace_root,
                                                           rgb_workspace_root, tmp_path):
    (tmp_path / "a-gray").symlink_to(gray_workspace_root / "gm-gray")
    (tmp_path / "b-rgb").symlink_to(rgb_workspace_root / "gm-rgb")
    (tmp_path / "not-a-workspace").mkdir()
    at = run_app(monkeypatch, tmp_path)
    picker = at.sidebar.selectbox(key="workspace")
    assert picker.options == ["a-gray", "b-rgb"] and "1×16×16" in at.caption[0].value

    picker.set_value(str(tmp_path / "b-rgb")).run()

    assert not at.exception
    assert "3×16×16" in at.caption[0].value
    assert at.session_state["workspace"] == str(tmp_path / "b-rgb")


def test_root_that_is_itself_a_workspace_is_the_only_choice(monkeypatch, gray_workspace_root):
    at = run_app(monkeypatch, gray_workspace_root / "gm-gray")

    assert at.sidebar.selectbox[0].options == ["gm-gray"]
    assert at.get("plotly_chart")


def test_missing_space_is_said_not_failed(monkeypatch, gray_workspace_root, tmp_path):
    # the same workspace as if fingerprinted in rgb only: the manifest no longer names freq entries
    ws = tmp_path / "rgb-only"
    shutil.copytree(gray_workspace_root / "gm-gray", ws)
    manifest = json.loads((ws / "workspace.json").read_text())
    manifest["config"]["spaces"] = ["rgb"]
    for entry in manifest["models"].values():
        entry["spaces"].pop("freq", None)
    (ws / "workspace.json").write_text(json.dumps(manifest))

    at = run_app(monkeypatch, ws)

    assert any("No FREQ fingerprint" in i.value for i in at.info)
    assert "mean d² freq" not in at.dataframe[0].value.columns
    fig = grid_figure(at)
    assert [t["type"] for t in fig["data"]].count("heatmap") == 8
    assert any("no FREQ" in a["text"] for a in fig["layout"]["annotations"])


def test_unreadable_workspace_gives_a_message_not_a_traceback(monkeypatch, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "workspace.json").write_text('{"schema_version": 99}')

    at = run_app(monkeypatch, tmp_path)

    assert "cannot be opened" in at.error[0].value and "schema version" in at.error[0].value


# ---- figures, without streamlit ---------------------------------------------------------------


def test_sample_grid_large_images_go_out_as_colour_mapped_pngs():
    rng = np.random.default_rng(0)
    k, c, h, w = 3, 3, 96, 96
    imgs = rng.integers(0, 256, (k, c, h, w), dtype=np.uint8)
    arts = rng.normal(0, 0.1, (k, c, h, w)).astype(np.float16)

    fig = figures.sample_grid(imgs, imgs, {"rgb": arts, "freq": arts}).to_plotly_json()

    kinds = [t["type"] for t in fig["data"]]
    assert "heatmap" not in kinds and kinds.count("image") == 4 * k
    assert all(t["source"].startswith("data:image/png;base64,") for t in fig["data"] if t["type"] == "image")
    assert fig["layout"]["coloraxis2"]["cmax"] == -fig["layout"]["coloraxis2"]["cmin"] > 0


def test_colormapped_centres_zero_on_white_and_clips():
    out = figures.colormapped(np.array([[-5.0, 0.0, 5.0]]), half_range=1.0)
    assert out.shape == (3, 1, 3) and out.dtype == np.uint8
    blue, white, red = out[:, 0, 0], out[:, 0, 1], out[:, 0, 2]
    assert white.min() > 230 and blue[2] > blue[0] and red[0] > red[2]


def test_symmetric_range_ignores_outliers_and_never_returns_zero():
    values = np.concatenate([np.full(999, 0.1), [50.0]])
    assert figures.symmetric_range(values) == pytest.approx(0.1)
    assert figures.symmetric_range(np.zeros(10)) == 1.0
