"""The three fingerprint levels in the app (AppTest), on a synthetic analysed workspace with real structure (each
upsampling leaves its own trace) and hostile names: the map's level switch, the Model similarity page, the Design
choices page at every level with its null bands, and names shown as text throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import figures_levels as fl
from app_util import charts, decode, open_page
from gmdata import make_design_dataset
from names_util import (
    COLUMN,
    MODEL,
    UPSAMPLING,
    assert_page_shows_names_as_text,
    live_markup,
    live_plotly,
    plotly_shown,
    plotly_strings,
)
from names_util import shown as md_shown

pytestmark = pytest.mark.slow

NAME = "levels"
_BUILT: dict[str, Path] = {}


def levels_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root with one analysed workspace of 24 models (12 designs x 2 seeds, rgb), every level and two folds of the
    learned leave-one-design-out. Designs with pixel-shuffle upsampling are VAEs (loss elbo, so loss is nested in
    family); the first model is named MODEL, bilinear upsampling is called UPSAMPLING, and a column COLUMN
    splits the normalizations in two."""
    if NAME in _BUILT:
        return _BUILT[NAME]
    import torch

    from fingerprint_core import protocol
    from fingerprint_core.analysis import learned
    from fingerprint_core.analysis.run import Settings, analyze
    from fingerprint_core.pipeline import fingerprint
    from fingerprint_core.workspace import Workspace

    data = make_design_dataset(tmp_path_factory.mktemp("levels-data"), n_per_model=40, n_real=300)
    table = pd.read_csv(data / "models.csv", dtype=str, keep_default_na=False)
    vae = table["upsampling"] == "pixel_shuffle"
    table["family"] = np.where(vae, "vae", "gan")
    table["loss"] = np.where(vae, "elbo", np.where(table["normalization"] == "batch", "hinge", "non_saturating"))
    table[COLUMN] = np.where(table["normalization"] == "none", "a", "b")
    table["upsampling"] = table["upsampling"].replace("bilinear_conv", UPSAMPLING)
    first = table.loc[0, "model"]
    (data / "models" / first).rename(data / "models" / MODEL)
    table.loc[0, "model"] = MODEL
    table.to_csv(data / "models.csv", index=False)
    root = tmp_path_factory.mktemp("levels-workspaces")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: see the one_thread fixture
    try:
        fingerprint(data, root / NAME, space_names=("rgb",), device="cpu")
        ws = Workspace.open(root / NAME)
        designs = list(dict.fromkeys(protocol.design_id(ws.design().astype(str), ws.model_names())))
        # before the analysis: after UMAP has run in this process, the same training took 50 times longer here
        learned.lodo(ws, "rgb", device="cpu", only=[designs[0], designs[5]])
        analyze(Workspace.open(root / NAME), settings=Settings(kmeans_restarts=2, bootstrap=20), device="cpu")
    finally:
        torch.set_num_threads(before)
    _BUILT[NAME] = root
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return levels_root(tmp_path_factory)


@pytest.fixture(scope="module")
def analysis(root):
    from fingerprint_core.analysis.run import Analysis
    from fingerprint_core.workspace import Workspace

    return Analysis.load(Workspace.open(root / NAME))


def points(fig: dict) -> int:
    """How many samples a map figure draws."""
    return sum(len(decode(t["customdata"])) for t in fig["data"])


def caption_text(at) -> str:
    return " ".join(c.value for c in at.caption)


# ---- Fingerprint map: the level switch ------------------------------------------------------------------------


def test_map_opens_at_the_learned_level_and_switches_to_raw(monkeypatch, root, analysis):
    learned = analysis.fingerprint_map("rgb", "learned")
    raw = analysis.fingerprint_map("rgb", "raw")
    assert len(learned) < len(raw)  # the learned map holds the test samples only
    at = open_page(monkeypatch, root, "page_map.py")

    level = at.segmented_control(key="map_level")
    assert level.options == ["learned", "raw"] and level.value == "learned"
    (fig,) = charts(at)
    assert points(fig) == len(learned)
    text = caption_text(at)
    assert f"{len(learned):,} held-out test samples from 25 sets in the rgb space, learned level" in text
    assert "Only the **test samples** are drawn" in text
    purity = analysis.levels["learned"]["purity"]["rgb"]
    assert f"Purity: {purity['value']:.1%}" in text and f"shuffled over the points {purity['null_p95']:.1%}" in text
    assert [b["label"] for b in fig["layout"]["updatemenus"][0]["buttons"]][:2] == ["Colour by: model",
                                                                                  "Colour by: family"]

    level.set_value("raw").run()
    assert not at.exception
    (fig_raw,) = charts(at)
    assert points(fig_raw) == len(raw)
    text = caption_text(at)
    assert f"{len(raw):,} samples from 25 sets in the rgb space, raw level" in text
    assert f"Purity: {analysis.levels['raw']['purity']['rgb']['value']:.1%}" in text
    assert fig_raw["layout"]["uirevision"] != fig["layout"]["uirevision"]  # another map: no zoom carried over


def test_a_selection_belongs_to_the_level_it_was_made_on(monkeypatch, root, analysis):
    from app import state

    path = str(root / NAME)
    learned = analysis.fingerprint_map("rgb", "learned")
    where = f"{path}|{state.stamp(path)}|rgb|learned"
    at = open_page(monkeypatch, root, "page_map.py", {"map_selection": {"where": where, "rows": [0, 1, 2]}})

    assert at.subheader[0].value.startswith("Selection: 3 samples")
    details = at.dataframe[1].value  # the grid's samples: the learned map's rows, by model and sample index
    assert sorted(zip(details["model"], details["sample"], strict=True)) == sorted(
        zip(learned["model"][:3], learned["index"][:3], strict=True))
    at.segmented_control(key="map_level").set_value("raw").run()
    assert not at.subheader and "Select a region" in at.info[0].value  # made on the learned map: not this one


# ---- Model similarity -----------------------------------------------------------------------------------------


def heatmap_labels(fig: dict) -> tuple[list[str], list[str]]:
    """The model names on the heatmap's x and y axes, as a reader sees them."""
    lay = fig["layout"]
    return ([plotly_shown(t) for t in lay["xaxis"]["ticktext"]], [plotly_shown(t) for t in lay["yaxis"]["ticktext"]])


def test_similarity_page_shows_every_model_in_dendrogram_order_with_design_strips(monkeypatch, root, analysis):
    model = analysis.levels["model"]
    at = open_page(monkeypatch, root, "page_similarity.py")

    (fig,) = charts(at)
    x, y = heatmap_labels(fig)
    assert x == y == model["order"]["rgb"] and sorted(x) == sorted(model["models"]) and MODEL in x
    heat = fig["data"][0]
    d = np.asarray(model["distance"]["rgb"]["learned_means"])
    i, j = model["models"].index(x[0]), model["models"].index(x[1])
    assert decode(heat["z"]).reshape(len(x), len(x))[0, 1] == pytest.approx(d[i, j], rel=1e-6)
    strips = [t for t in fig["data"][1:] if t["type"] == "heatmap"]
    factors = ["family", "upsampling", "loss", "normalization", COLUMN]
    assert [plotly_shown(t["name"]) for t in strips] == [f for f in factors for _ in (0, 1)]  # above and beside
    legend = {plotly_shown(t["legendgrouptitle"]["text"]) for t in fig["data"] if t.get("legendgrouptitle")}
    assert legend == set(factors)
    assert at.segmented_control(key="sim_distance").options == ["learned class means", "energy distance of artifacts"]

    tests = at.dataframe[0].value
    assert list(tests.columns) == ["test group", "effect", "relative effect", "p", "p without twins", "Holm p", "testable"]
    up = tests.set_index("test group").loc["upsampling"]
    assert up["p"] == pytest.approx(model["tests"]["rgb"]["learned_means"]["upsampling"]["p"])
    assert up["Holm p"] == pytest.approx(model["tests"]["rgb"]["learned_means"]["upsampling"]["p_holm"])
    clustering = at.dataframe[1].value.set_index("test group")
    assert clustering.loc["upsampling", "NMI"] == pytest.approx(model["clustering"]["rgb"]["upsampling"]["value"])
    assert "null 95th pct" in clustering.columns

    at.selectbox(key="sim_order").set_value("upsampling").run()
    at.segmented_control(key="sim_distance").set_value("energy").run()
    assert not at.exception
    (fig,) = charts(at)
    x, _ = heatmap_labels(fig)
    design = analysis_design(root).set_index("model")
    ups = [design.loc[m, "upsampling"] for m in x]
    assert ups == sorted(ups) and sorted(x) == sorted(model["models"])  # sorted by the factor ...
    dendrogram = model["order"]["rgb"]
    for level in set(ups):  # ... and in dendrogram order within each level
        inside = [m for m in x if design.loc[m, "upsampling"] == level]
        assert inside == [m for m in dendrogram if m in inside]
    assert fig["layout"]["shapes"]  # white lines between the levels
    assert "energy" in fig["data"][0]["hovertemplate"]
    assert at.dataframe[0].value.set_index("test group").loc["upsampling", "p"] == pytest.approx(
        model["tests"]["rgb"]["energy"]["upsampling"]["p"])


def analysis_design(root: Path) -> pd.DataFrame:
    from fingerprint_core.workspace import Workspace

    return Workspace.open(root / NAME).design().astype(str)


# ---- Design choices: every level, its null band, the reading ---------------------------------------------------


def test_design_page_shows_each_level_its_null_bands_and_the_paper(monkeypatch, root, analysis):
    levels = analysis.levels
    at = open_page(monkeypatch, root, "page_design.py")

    nmi, lodo = charts(at)
    names = {t.get("name") for t in nmi["data"]}
    assert {"raw level", "learned level", "model level", fl.NULL_NAME, "paper, Table 5 (its datasets)"} <= names
    bars = {(t["name"], t["legendgroup"]): t for t in nmi["data"] if t["type"] == "bar"}
    ticks = fl.level_groups(levels)
    labels = [plotly_shown(t) for t in nmi["layout"]["xaxis"]["ticktext"]]
    assert labels == ticks and "loss | family" in labels and f"{COLUMN} (gan)" in labels
    for lv in ("raw", "learned"):  # the band runs from the null's mean to its 95th percentile, behind the bar
        (band,) = [t for t in nmi["data"] if t.get("meta") == f"null band · {lv} · rgb"]
        bar = bars[(f"{lv} level", lv)]
        order = [ticks[int(v)] for v in decode(band["x"])]
        cells = levels[lv]["nmi"]["rgb"]
        assert np.allclose(decode(band["base"]), [cells[g]["null_mean"] for g in order])
        assert np.allclose(decode(band["base"]) + decode(band["y"]),
                           [max(cells[g]["null_p95"], cells[g]["null_mean"] + 0.004) for g in order])
        assert band["width"] > bar["width"]
        assert [t["name"] for t in nmi["data"]].index(fl.NULL_NAME) < [t["name"] for t in nmi["data"]].index(f"{lv} level")
        values = dict(zip([ticks[int(v)] for v in decode(bar["x"])], decode(bar["y"]), strict=True))
        assert values["upsampling"] == pytest.approx(cells["upsampling"]["value"])
        stars = dict(zip([ticks[int(v)] for v in decode(bar["x"])], bar["text"], strict=True))
        assert stars["upsampling"] == ("★" if cells["upsampling"]["p_holm"] < 0.01 else "")
    (band,) = [t for t in nmi["data"] if t.get("meta") == "null band · model · rgb"]  # the model level's null too
    clustering = levels["model"]["clustering"]["rgb"]
    order = [ticks[int(v)] for v in decode(band["x"])]
    assert order == [g for g in ticks if g in clustering]
    assert np.allclose(decode(band["base"]), [clustering[g]["null_mean"] for g in order])
    paper = bars[("paper, Table 5 (its datasets)", "paper")]
    assert sorted(ticks[int(v)] for v in decode(paper["x"])) == ["loss", "normalization", "upsampling"]

    lodo_bars = [t for t in lodo["data"] if t["type"] == "bar"]
    assert [t["legendgroup"] for t in lodo_bars] == ["raw", "learned"]  # LDA, and nearest class mean
    chance = [t for t in lodo["data"] if t["name"] == "chance"]
    raw_chance = levels["raw"]["lodo"]["rgb"]
    assert np.allclose(sorted(decode(chance[0]["y"])), sorted(v["chance"] for v in raw_chance.values()))
    assert sorted(levels["learned"]["lodo"]["rgb"]) and len(decode(chance[1]["y"])) == len(levels["learned"]["lodo"]["rgb"])

    reading = " ".join(m.value for m in at.markdown if m.value.startswith("- "))
    assert "**upsampling**: shown at" in reading and "Holm p" in reading
    assert "Over all models, **loss** is **family** in disguise" in reading  # elbo only with vae, the rest gan
    assert "with family held fixed (**loss \\| family**)" in reading
    assert "Leave one design out at the learned level, by nearest class mean" in reading
    own = at.expander[0].markdown[0].value  # the analysis's own sentences, each as text
    assert own.count("\n- ") + 1 == len(analysis.metrics["reading"])
    text = caption_text(at)
    assert "protocol.py" in text and "LDA" in text and "nearest class mean" in text
    numbers = at.dataframe[-1].value
    assert {"raw", "learned", "model"} == set(numbers["level"])
    assert {"null mean", "null 95th pct", "Holm p", "chance", "method"} <= set(numbers.columns)

    at.selectbox(key="design_fold_level").set_value("learned").run()
    folds = at.expander[1].dataframe[0].value
    assert len(folds) >= 1 and {"truth", "predicted", "chance", "unseen"} <= set(folds.columns)


# ---- hostile names stay text ------------------------------------------------------------------------------------


@pytest.mark.parametrize("page, must_show", [("page_map.py", []), ("page_similarity.py", [MODEL]),
                                             ("page_design.py", [COLUMN])])
def test_level_pages_show_hostile_names_as_text(monkeypatch, root, page, must_show):
    at = open_page(monkeypatch, root, page)

    assert_page_shows_names_as_text(at, must_show)
    strings = [plotly_shown(s) for fig in charts(at) for s in plotly_strings(fig)]
    assert any(MODEL in s for s in strings) or page == "page_design.py"
    if page == "page_design.py":
        assert any(COLUMN in s for s in strings)


def test_level_figures_escape_every_name():
    levels = {
        "raw": {"nmi": {"rgb": {COLUMN: {"value": 0.4, "null_mean": 0.1, "null_p95": 0.2, "p": 0.01, "p_holm": 0.002},
                                f"{COLUMN} | family": {"value": 0.1, "null_mean": 0.1, "null_p95": 0.2, "p_holm": 1}}},
                "lodo": {"rgb": {COLUMN: {"accuracy": 0.8, "chance": 0.5, "folds": []}}}},
        "model": {"models": [MODEL, "b"], "clustering": {"rgb": {COLUMN: {"value": 0.5, "null_p95": 0.3}}},
                  "nesting": [{"factor": COLUMN, "level": UPSAMPLING, "within": "family", "within_level": MODEL}]},
    }
    design = pd.DataFrame({"model": [MODEL, "b"], COLUMN: [UPSAMPLING, "x"]})
    figs = [fl.levels_nmi_figure(levels), fl.levels_lodo_figure(levels),
            fl.similarity_figure([[0, 1], [1, 0]], [MODEL, "b"], ["b", MODEL], design, [COLUMN], distance="energy",
                                 sort_by=COLUMN)]
    for fig in figs:
        strings = plotly_strings(fig.to_plotly_json())
        assert [s for s in strings if live_plotly(s)] == []
        assert not any(raw in s for raw in (MODEL, UPSAMPLING, COLUMN) for s in strings)
    shown = [plotly_shown(s) for s in plotly_strings(figs[2].to_plotly_json())]
    assert MODEL in shown and UPSAMPLING in shown and COLUMN in shown
    lines = fl.level_reading(levels, design.assign(family="gan"))
    assert any("in disguise" in line for line in lines)  # the nesting note names the model and design value
    assert all(live_markup(line) == [] for line in lines)
    joined = " ".join(md_shown(line) for line in lines)
    assert COLUMN in joined and UPSAMPLING in joined and MODEL in joined
