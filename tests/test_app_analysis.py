"""The structure explorer pages (Fingerprint map, Spectra, Design choices), headless, and their figure builders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis_util import NAME, analysed_root
from app import figures_analysis as fa
from app_util import charts, decode, open_page

PAGES = ("page_map.py", "page_spectra.py", "page_design.py")
MODELS = ["toy_gan", "toy_vae", "toy_gan_b", "toy_vae_b"]


@pytest.fixture(scope="session")
def analysed_workspace_root(tmp_path_factory) -> Path:
    return analysed_root(tmp_path_factory)


@pytest.fixture
def analysed_ws(analysed_workspace_root) -> Path:
    return analysed_workspace_root / NAME


def workspace_stamp(path: Path) -> str:
    from app import state

    return state.stamp(str(path))


# ---- no analysis yet, or a stale one ------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_page_without_analysis_says_so_and_gives_the_command(monkeypatch, gray_workspace_root, page):
    at = open_page(monkeypatch, gray_workspace_root, page)

    ws = gray_workspace_root / "gm-gray"
    assert "has no analysis yet" in at.info[0].value
    assert [c.value for c in at.code] == [f"manifpt analyze {ws}"]
    assert at.button(key="run_analysis").label == "Run the analysis here"
    assert not at.get("plotly_chart")


@pytest.mark.slow
def test_stale_analysis_is_reported_as_out_of_date(monkeypatch, analysed_ws, tmp_path):
    from fingerprint_core.workspace import Workspace

    shutil.copytree(analysed_ws, tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    design = ws.design()
    design["depth"] = "4"  # models.csv gained a column since the analysis ran
    ws.manifest["design"] = ws.write_table("design", design)
    ws.commit()

    at = open_page(monkeypatch, tmp_path / "ws", "page_design.py")

    assert "out of date" in at.warning[0].value
    assert at.code[0].value == f"manifpt analyze {tmp_path / 'ws'}"
    assert not at.get("plotly_chart")


@pytest.mark.slow
def test_run_button_starts_a_background_analysis_the_page_follows_to_the_map(monkeypatch, gray_workspace_root,
                                                                            tmp_path):
    from fingerprint_core import jobs
    from fingerprint_core.analysis import run
    from fingerprint_core.workspace import Workspace

    ws = shutil.copytree(gray_workspace_root / "gm-gray", tmp_path / "gm-gray")
    at = open_page(monkeypatch, ws, "page_map.py")

    at.button(key="run_analysis").click().run()

    assert not at.exception, [e.value for e in at.exception]
    (status,) = at.get("status")
    assert status.label == "The analysis runs in the background…"
    assert at.get("progress")
    assert at.button(key="run_analysis").disabled  # no second start while it runs
    assert at.code[-1].value.startswith("$ ") and "fingerprint_core.cli analyze" in at.code[-1].value  # its log
    at.switch_page("page_models.py").run()  # a page switch neither stops nor blocks it
    assert jobs.status(ws, "analyze").running

    done = jobs.wait(ws, "analyze", timeout=300)
    at.switch_page("page_map.py").run()

    assert done.state == "finished", done.error
    assert not at.exception, [e.value for e in at.exception]
    assert run.Analysis.state(Workspace.open(ws)) == "current"
    assert not at.get("status") and (not at.info or "no analysis" not in at.info[0].value)
    assert len(charts(at)) == 1 and at.title[0].value == "Fingerprint map"
    assert at.success[0].value.startswith("The analysis finished in ")


# ---- Fingerprint map ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_map_shows_every_sample_once_coloured_by_model(monkeypatch, analysed_workspace_root, analysed_ws):
    at = open_page(monkeypatch, analysed_workspace_root, "page_map.py", {"map_level": "raw"})  # every sample

    (fig,) = charts(at)
    traces = fig["data"]
    assert {t["type"] for t in traces} == {"scattergl"}
    assert [t["name"] for t in traces] == ["real", *MODELS]  # the real control drawn first, under the models
    rows = np.concatenate([decode(t["customdata"])[:, 0] for t in traces])
    assert sorted(rows) == list(range(4 * 24 + 30))  # every sample once, by its row id
    assert fig["layout"]["dragmode"] == "select"
    assert "family: gan" in traces[1]["hovertemplate"] and "upsampling: transposed_conv" in traces[1]["hovertemplate"]
    assert traces[0]["marker"]["color"] == fa.REAL_COLOR
    assert "Select a region" in at.info[0].value
    assert "126 samples from 5 sets in the rgb space, raw level" in " ".join(c.value for c in at.caption)


def menu_colouring(fig: dict, label: str) -> tuple[dict, dict, list[int]]:
    """(restyle, relayout, trace indices) of the map's colour dropdown entry "Colour by: label"."""
    (menu,) = fig["layout"]["updatemenus"]
    (button,) = [b for b in menu["buttons"] if b["label"] == f"Colour by: {label}"]
    return tuple(button["args"])


@pytest.mark.slow
def test_map_recolours_by_a_design_column_and_switches_space_and_view(monkeypatch, analysed_workspace_root):
    at = open_page(monkeypatch, analysed_workspace_root, "page_map.py")

    (fig,) = charts(at)
    labels = [b["label"] for b in fig["layout"]["updatemenus"][0]["buttons"]]
    assert labels == ["Colour by: model", "Colour by: family", "Colour by: upsampling", "Colour by: loss",
                      "Colour by: normalization"]
    restyle, relayout, traces = menu_colouring(fig, "upsampling")  # applied in the browser, no rerun
    assert traces == list(range(len(fig["data"])))
    by_name = {}
    for name, color in zip(restyle["name"], restyle["marker.color"], strict=True):
        by_name.setdefault(name, set()).add(color)
    assert set(by_name) == {"real", "transposed_conv", "bilinear_conv"}
    assert all(len(c) == 1 for c in by_name.values())  # one colour per level
    assert restyle["showlegend"].count(True) == 3  # one legend entry per level
    assert relayout == {"legend.title.text": "upsampling"}

    at.segmented_control(key="map_space").set_value("freq").run()
    assert not at.exception
    assert "in the freq space" in " ".join(c.value for c in at.caption)

    at.segmented_control(key="map_view").set_value("model centroids").run()
    assert not at.exception
    (fig,) = charts(at)
    labelled = [m for t in fig["data"][1:] for m in t["text"]]  # after the background cloud
    assert sorted(labelled) == sorted(["real", *MODELS])
    restyle, _, traces = menu_colouring(fig, "family")
    assert traces == list(range(1, len(fig["data"])))  # the background cloud keeps its grey
    assert restyle["error_x.color"] == restyle["marker.color"]  # the bars take their centroid's colour


@pytest.mark.slow
def test_a_selection_opens_the_grid_without_redrawing_the_map(monkeypatch, analysed_workspace_root, analysed_ws):
    frame = pd.concat([pd.DataFrame({"model": m, "index": np.arange(n)}) for m, n in
                       (*((m, 24) for m in MODELS), ("real", 30))], ignore_index=True)  # the order of models.npy
    rows = [0, 1, 2, 30, 100, 101]  # 3 samples of toy_gan, 1 of toy_vae, 2 real images
    where = f"{analysed_ws}|{workspace_stamp(analysed_ws)}|rgb|raw"
    (unselected,) = charts(open_page(monkeypatch, analysed_workspace_root, "page_map.py", {"map_level": "raw"}))
    at = open_page(monkeypatch, analysed_workspace_root, "page_map.py",
                   {"map_level": "raw", "map_selection": {"where": where, "rows": rows}})

    assert at.subheader[0].value == "Selection: 6 samples from 3 models"
    counts = at.dataframe[0].value
    assert dict(zip(counts["model"], counts["samples"], strict=True)) == {"toy_gan": 3, "real": 2, "toy_vae": 1}
    assert at.download_button(key="map_csv").label == "Download CSV"
    map_fig, grid = charts(at)
    kinds = [t["type"] for t in grid["data"]]
    assert kinds.count("image") == 2 * 6 and kinds.count("heatmap") == 2 * 6  # 6 rows: sample, x*, RGB, FREQ
    details = at.dataframe[1].value
    assert sorted(zip(details["model"], details["sample"], strict=True)) == sorted(
        zip(frame["model"][rows], frame["index"][rows], strict=True))
    # the same figure as without a selection: the browser keeps its chart (and the colouring chosen there)
    assert map_fig == unselected

    at.button[0].click().run()  # Clear selection
    assert not at.subheader and "Select a region" in at.info[0].value
    (cleared,) = charts(at)
    assert cleared["layout"]["uirevision"] != map_fig["layout"]["uirevision"]  # a new chart: no box left on it


@pytest.mark.slow
def test_selection_table_exports_the_samples_with_design_and_nearest_real(analysed_ws):
    from app import state
    from fingerprint_core.analysis.run import Analysis
    from fingerprint_core.workspace import Workspace

    ws = Workspace.open(analysed_ws)
    frame = Analysis.load(ws).fingerprint_map("freq")
    rows = np.flatnonzero(frame["model"] == "toy_vae")[[2, 5]]

    table = state.selection_table(str(analysed_ws), "freq", frame, rows)

    assert list(table["model"]) == ["toy_vae", "toy_vae"] and list(table["sample"]) == [2, 5]
    assert list(table["file"]) == ["models/toy_vae/002.png", "models/toy_vae/005.png"]
    assert list(table["upsampling"]) == ["bilinear_conv"] * 2
    assert list(table["nearest_real_freq"]) == list(np.asarray(ws.nearest("toy_vae", "freq"))[[2, 5]])
    assert np.allclose(table["umap_x"], frame["x"].to_numpy()[rows])
    csv = table.to_csv(index=False).splitlines()
    assert csv[0].startswith("model,sample,file,family,upsampling,loss,normalization,umap_x,umap_y")


# ---- Spectra -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_spectra_page_arranges_models_by_a_factor_beside_the_real_control(monkeypatch, analysed_workspace_root):
    at = open_page(monkeypatch, analysed_workspace_root, "page_spectra.py")

    grid, profiles, pair = charts(at)
    heat = [t for t in grid["data"] if t["type"] == "heatmap"]
    assert len(heat) == 1 + 4  # the real control, then the four models
    row_labels = [a["title"]["text"] for k, a in grid["layout"].items() if k.startswith("yaxis") and a.get("title", {}).get("text")]
    assert row_labels == ["<b>real control</b>", "<b>transposed_conv</b>", "<b>bilinear_conv</b>"]
    names = [t["name"] for t in profiles["data"]]
    assert names[-1] == "real control" and profiles["data"][-1]["line"]["dash"] == "dash"
    assert {"transposed_conv", "bilinear_conv"} <= set(names)

    at.segmented_control(key="spectra_mode").set_value("difference from the real control").run()
    grid = charts(at)[0]
    heat = {t["hovertemplate"].split("</b>")[0].removeprefix("<b>"): t for t in grid["data"] if t["type"] == "heatmap"}
    assert sorted(heat) == sorted(MODELS)  # no real row: its difference is zero
    axis = grid["layout"]["coloraxis"]
    assert axis["cmin"] == -axis["cmax"] and axis["colorscale"][0][1] != axis["colorscale"][-1][1]
    # the checkerboard of transposed convolutions: most excess energy at the Nyquist corner
    z = decode(heat["toy_gan"]["z"]).reshape(16, 16)
    assert np.unravel_index(np.argmax(z), z.shape) == (0, 0)

    at.selectbox(key="spectra_factor").set_value("family").run()
    grid = charts(at)[0]
    row_labels = [a["title"]["text"] for k, a in grid["layout"].items() if k.startswith("yaxis") and a.get("title", {}).get("text")]
    assert row_labels == ["<b>gan</b>", "<b>vae</b>"]


@pytest.mark.slow
def test_spectra_pair_shows_two_models_and_their_difference(monkeypatch, analysed_workspace_root):
    at = open_page(monkeypatch, analysed_workspace_root, "page_spectra.py")
    at.selectbox(key="spectra_a").set_value("toy_vae").run()

    pair = charts(at)[2]
    titles = [a["text"] for a in pair["layout"]["annotations"]]
    assert titles == ["toy_vae", "real", "toy_vae − real"]
    a, b, d = (decode(t["z"]).reshape(16, 16) for t in pair["data"])
    assert np.allclose(d, a - b, atol=1e-5)


# ---- Design choices ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_design_page_levels_beside_the_paper_and_a_reading(monkeypatch, analysed_workspace_root, analysed_ws):
    from fingerprint_core.analysis.run import Analysis
    from fingerprint_core.workspace import Workspace

    metrics = Analysis.load(Workspace.open(analysed_ws)).metrics
    at = open_page(monkeypatch, analysed_workspace_root, "page_design.py")

    nmi, lomo = charts(at)
    assert [a["text"] for a in nmi["layout"]["annotations"]] == ["rgb", "freq"]  # a row per space
    groups = nmi["layout"]["xaxis"]["ticktext"]
    raw = [t for t in nmi["data"] if t["name"] == "raw level"][1]  # the freq row
    values = dict(zip([groups[int(v)] for v in decode(raw["x"])], decode(raw["y"]), strict=True))
    assert values["upsampling"] == pytest.approx(metrics["nmi"]["freq"]["upsampling"])  # the raw level's numbers
    paper = [t for t in nmi["data"] if t["name"] == "paper, Table 5 (its datasets)"][0]
    table5 = dict(zip([groups[int(v)] for v in decode(paper["x"])], decode(paper["y"]), strict=True))
    assert table5["upsampling"] == pytest.approx(0.625)  # Table 5, RGB, Up
    bars = [t for t in lomo["data"] if t["type"] == "bar"]
    assert [b["legendgroup"] for b in bars] == ["raw", "raw"]  # one per space; no learned folds here
    assert len([t for t in lomo["data"] if t["name"] == "chance"]) == 2

    reading = " ".join(m.value for m in at.markdown if m.value.startswith("- "))
    assert "Holm p" in reading and "chance" in reading
    # in the toy design, every gan is batch-normed and every vae group-normed
    assert "**family**, **normalization** divide the models into the same groups" in reading
    assert "--lodo-learned" in " ".join(c.value for c in at.caption)  # how to get the learned level's folds

    numbers = at.dataframe[-1].value
    raw_rows = numbers[numbers["level"] == "raw"]
    assert len(raw_rows) == sum(len(v) for v in metrics["nmi"].values())
    assert {"NMI low", "NMI high", "null mean", "null 95th pct", "silhouette", "held-out accuracy", "chance"} <= set(numbers.columns)

    at.selectbox(key="design_fold_space").set_value("freq").run()
    at.selectbox(key="design_fold_factor").set_value("upsampling").run()
    folds = at.expander[1].dataframe[0].value
    assert len(folds) == 4 and set(folds["truth"]) == {"transposed_conv", "bilinear_conv"}


# ---- figure builders, without streamlit -------------------------------------------------------------


def toy_map(n_per: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A fingerprint map frame of three models and the real control, and their design table."""
    rng = np.random.default_rng(0)
    names = ["m1", "m2", "m3", "real"]
    frame = pd.concat([pd.DataFrame({"model": m, "index": np.arange(n_per), "x": rng.normal(i, 0.1, n_per),
                                     "y": rng.normal(0, 0.1, n_per)}) for i, m in enumerate(names)], ignore_index=True)
    design = pd.DataFrame({"model": names, "upsampling": ["bilinear_conv", "transposed_conv", "bilinear_conv", "none"]})
    return frame, design


def test_map_figure_carries_row_ids_and_one_colour_per_level():
    frame, design = toy_map()
    fig = fa.map_figure(frame, design, "upsampling")

    traces = {t.hovertemplate.split("</b>")[0][3:]: t for t in fig.data}
    assert list(traces) == ["real", "m1", "m2", "m3"]
    assert traces["m1"].marker.color == traces["m3"].marker.color != traces["m2"].marker.color
    assert traces["real"].name == "real" and traces["real"].marker.color == fa.REAL_COLOR
    assert [t.showlegend for t in fig.data] == [True, True, True, False]  # m3 shares m1's legend entry
    assert np.array_equal(traces["m2"].customdata[:, 0], np.arange(50, 100))
    (menu,) = fig.layout.updatemenus
    assert menu.buttons[menu.active].label == "Colour by: upsampling"
    by_model = dict(zip(["real", "m1", "m2", "m3"], menu.buttons[0].args[0]["marker.color"], strict=True))
    assert len(set(by_model.values())) == 4 and by_model["real"] == fa.REAL_COLOR  # "model": one colour each


def test_legend_styles_open_one_entry_per_level_and_keep_real_grey():
    _, design = toy_map()
    s = fa.legend_styles(["real", "m1", "m2", "m3"], design, "upsampling")
    assert s["name"] == ["real", "bilinear_conv", "transposed_conv", "bilinear_conv"]
    assert s["showlegend"] == [True, True, True, False]
    assert s["color"][0] == fa.REAL_COLOR and s["color"][1] == s["color"][3] == fa.PALETTE[0]
    assert s["legendrank"][0] == max(s["legendrank"])  # the real control is listed last


def test_rows_of_points_reads_samples_and_centroids():
    frame, _ = toy_map(5)
    # customdata as the browser sends it back: a typed-array row arrives as a dict of its positions
    points = [{"customdata": {"0": 3, "1": 3}}, {"customdata": [7, 2]}, {"customdata": [3, 3]}, {"x": 1.0},
              {"customdata": ["m3"]}]
    assert fa.rows_of_points(points, frame).tolist() == [3, 7, 10, 11, 12, 13, 14]
    assert fa.rows_of_points([], frame).tolist() == []
    assert fa.rows_of_points([{"customdata": [999, 0]}], frame).tolist() == []  # a stale id is dropped


def test_centroid_figure_puts_each_model_at_the_mean_of_its_samples():
    frame, design = toy_map()
    fig = fa.centroid_figure(frame, design, "model")
    cents = {t.text[0]: (t.x[0], t.y[0]) for t in fig.data[1:]}  # after the background cloud
    assert set(cents) == {"m1", "m2", "m3", "real"}
    assert cents["m2"][0] == pytest.approx(frame.loc[frame["model"] == "m2", "x"].mean())
    m2 = [t for t in fig.data[1:] if t.text[0] == "m2"][0]
    assert m2.customdata[0][0] == "m2"  # selecting the centroid selects the model's samples
    assert m2.error_x.array[0] == pytest.approx(frame.loc[frame["model"] == "m2", "x"].std())  # its spread


def test_spectrum_grid_wraps_long_rows_and_shares_a_symmetric_scale():
    z = np.zeros((8, 8))
    rows = [("a", [(f"m{i}", z + i) for i in range(5)]), ("b", [("n", z - 3)])]
    fig = fa.spectrum_grid(rows, diverging=True, colorbar_title="Δ", max_cols=3)
    assert len([t for t in fig.data if t.type == "heatmap"]) == 6
    labels = [fig.layout[f"yaxis{'' if i == 1 else i}"].title.text for i in (1, 4, 7)]
    assert labels == ["<b>a</b>", "", "<b>b</b>"]  # the 5 models of "a" take two rows
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax == pytest.approx(-4)


def test_design_reading_names_the_best_factor_and_those_at_chance():
    nmi = {"rgb": {"upsampling": 0.7, "loss": 0.2}, "freq": {"upsampling": 0.9, "loss": 0.1}}
    lomo = {
        "rgb": {"upsampling": {"accuracy": 0.9, "chance": 0.5}, "loss": {"accuracy": 0.3, "chance": 0.5},
                "normalization": {"accuracy": None, "chance": None}},
        "freq": {"upsampling": {"accuracy": 0.6, "chance": 0.5}, "loss": {"accuracy": 0.52, "chance": 0.5},
                 "seed": {"accuracy": 0.0, "chance": 0.0, "folds": [{"unseen": True}, {"unseen": True}]}},
    }
    sil = {"rgb": {"upsampling": 0.05, "loss": 0.0}, "freq": {"upsampling": 0.08, "loss": -0.02}}
    text = "\n".join(fa.design_reading(nmi, lomo, sil))

    assert "aligns best with **upsampling** (mean NMI over spaces 0.80)" in text
    assert "**upsampling** in rgb (90% vs chance 50%)" in text
    assert "No better than chance in any space: **loss** (best 52% in freq, chance 50%)" in text
    assert "**normalization**" in text.split("Not measurable")[1]
    assert "Cannot be predicted for a held-out design: **seed**" in text  # its levels are never seen in training
    assert "**seed** (best" not in text
    assert "All silhouettes are below 0.1" in text
    # the paper's ranking is computed from Table 5, not written out
    assert "ranks **upsampling** (0.64) and **loss** (0.61)" in text
    assert "same groups" not in text  # no design table given: nothing said about confounding


def test_confounded_factors_are_those_that_split_the_models_alike():
    design = pd.DataFrame({"model": ["a", "b", "c", "real"], "family": ["gan", "gan", "vae", "real"],
                           "norm": ["batch", "batch", "none", "none"], "loss": ["hinge", "ns", "elbo", "none"]})
    assert fa.confounded(design, ["family", "norm", "loss"]) == [["family", "norm"]]
    nmi = {"rgb": {"family": 0.5, "norm": 0.5, "loss": 0.2}}
    text = fa.design_reading(nmi, {}, {}, design=design)
    assert text[0].startswith("**family**, **norm** divide the models into the same groups")


def test_paper_table5_is_copied_from_the_paper():
    # reference/paper.md, Table 5; means quoted in its finding: upsampling .643, loss .611
    up = np.mean([fa.PAPER_TABLE5[s]["upsampling"] for s in fa.PAPER_TABLE5])
    loss = np.mean([fa.PAPER_TABLE5[s]["loss"] for s in fa.PAPER_TABLE5])
    assert up == pytest.approx(0.643, abs=1e-3) and loss == pytest.approx(0.611, abs=1e-3)
