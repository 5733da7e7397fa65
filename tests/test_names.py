"""Names from users are text, never markdown or HTML: the escaping helpers (app/text.py), the figure builders, and
every page of the app (AppTest) over a workspace, a model, a design value, a column and uploads with hostile names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import figures, text
from app import figures_analysis as fa
from app import figures_attribution as fat
from app_util import charts, open_page
from names_util import (
    COLUMN,
    FILE_BAD,
    FILE_IMAGE,
    FILE_LINK,
    HOSTILE,
    MODEL,
    OTHER_MODEL,
    UPSAMPLING,
    WORKSPACE,
    assert_page_shows_names_as_text,
    hostile_root,
    live_markup,
    live_plotly,
    model_png,
    plotly_shown,
    plotly_strings,
    scan,
    shown,
)

MORE = [
    "*a* _b_ **c** ~~d~~ `e` $x$ <i>f</i> &amp; # g | h",  # emphasis, code, math, HTML, an entity, a table cell
    ":smile: :material/home: :streamlit: :blue[colour] :red-badge[x]",  # Streamlit's shortcodes and directives
    "mail me@example.org or see www.example.org or https://example.org",  # GFM autolinks
    "a -> b <- c <-> d -- e >= f <= g ~= h",  # typographic arrows
    "- a list?", "1. an ordered one", "1) or this", "# a heading", "> a quote", "---", "   + indented",
    "[x]: http://127.0.0.1:9/ref", "[^note] and [x][y]", "back\\slash\\ at the end\\", "two\nlines\rand\ta tab",
]


# ---- the helpers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*HOSTILE, *MORE])
def test_markdown_escape_shows_the_name_and_nothing_else(name):
    source = text.md(name)

    assert live_markup(source) == []
    assert shown(source) == re.sub(r"[\r\n\t]", " ", name)  # what the reader sees: the name, on one line
    # nothing markdown acts on is left unescaped (parentheses and ! mean nothing without a live [)
    assert not re.search(r"(?<!\\)[*_`\[\]<>$&~|#+:{}]", source.replace("\\\\", ""))
    assert not re.match(r"\s*(-|\d+[.)])", source)  # no list, thematic break or setext line at its start


def test_markdown_escape_breaks_what_streamlit_rewrites_after_escapes():
    # Streamlit links URLs, turns :name: into emoji or icons and -> into arrows in the text itself, where
    # a backslash no longer is: an invisible word joiner inside each keeps them from matching
    for name, pattern in [("http://127.0.0.1:9/x", r"https?://"), ("www.example.org", r"www\."),
                          ("me@example.org", r"\w@\w+\.\w"), (":smile:", r":\w+:"), (":material/home:", ":material/"),
                          ("a -> b", r"(^|\s)->(\s|$)"), ("a -- b", r"(^|\s)--(\s|$)")]:
        source = text.md(name)
        in_text = "".join(c for c, _ in scan(source))
        assert not re.search(pattern, in_text) and ":material/" not in source, name
        assert in_text.replace(text.JOINER, "") == name
    assert text.md("gm-gray") == "gm-gray" and text.md("notes.png") == "notes.png"  # plain names stay as they are


@pytest.mark.parametrize("name", ["plain", "a`b", "``x``", " lead", "trail ", "`", ":material/home:", FILE_LINK])
def test_code_span_holds_any_name_verbatim(name):
    source = text.md_code(name)
    chars = scan(source)

    assert all(how == "code" for _, how in chars) and shown(source) == name
    assert ":material/" not in source  # Streamlit rewrites it even inside code


def test_plotly_escape_neutralises_tags_entities_templates_and_latex():
    name = '<a href="http://127.0.0.1:9">x</a> <b>%{y}</b> &amp; $\\alpha$'
    label = text.plotly_label(name)

    assert label == '&lt;a href="http://127.0.0.1:9"&gt;x&lt;/a&gt; &lt;b&gt;&#37;{y}&lt;/b&gt; &amp;amp; &#36;\\alpha&#36;'
    assert "<" not in label and "%{" not in label and not label.startswith("$")
    assert plotly_shown(label) == name  # plotly decodes the entities: the reader sees the name
    assert text.plotly_label("$x$") == "&#36;x&#36;" and text.plotly_label("two\nlines") == "two lines"


# ---- the figure builders ---------------------------------------------------------------------------------------


def assert_plotly_text(fig, names) -> None:
    """No label of the figure holds a tag, template field or LaTeX from names; each name is shown as itself."""
    spec = fig if isinstance(fig, dict) else json.loads(fig.to_json())
    strings = plotly_strings(spec)
    assert [s for s in strings if live_plotly(s)] == []
    for raw in names:  # a name plotly would read differently never reaches a label as it is
        assert text.plotly_label(raw) == raw or not any(raw in s for s in strings), raw
    assert not any("<b>*x*" in s or "*x* %{x}" in s for s in strings)  # MODEL's tag and template field
    shown_all = " ".join(plotly_shown(s) for s in strings)
    assert all(n in shown_all for n in names)


def hostile_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    models = [MODEL, OTHER_MODEL, "real"]
    frame = pd.DataFrame({"model": np.repeat(models, 10), "index": np.tile(np.arange(10), 3),
                          "x": rng.normal(size=30), "y": rng.normal(size=30)})
    design = pd.DataFrame({"model": models, "family": ["gan", "vae", "real"], "upsampling": [UPSAMPLING, "none", ""],
                           COLUMN: ["a", "b", ""]})
    return frame, design


def test_figure_builders_escape_every_name():
    frame, design = hostile_frame()
    for fig in (fa.map_figure(frame, design, "upsampling"), fa.centroid_figure(frame, design, COLUMN)):
        assert_plotly_text(fig, [MODEL, UPSAMPLING, COLUMN])  # hovers, legend, colour menu and its legend titles
    # a centroid keeps the raw name, never drawn, for the selection to find the model's samples
    centroids = fa.centroid_figure(frame, design)
    assert MODEL in [t.customdata[0][0] for t in centroids.data[1:]]
    assert fa.rows_of_points([{"customdata": [MODEL]}], frame).tolist() == list(range(10))
    z = np.zeros((8, 8))
    assert_plotly_text(fa.spectrum_grid([(UPSAMPLING, [(MODEL, z)])], diverging=False, colorbar_title="p"),
                       [MODEL, UPSAMPLING])
    assert_plotly_text(fa.profile_figure([(MODEL, UPSAMPLING, np.ones(4))], size=8, ylabel="p", legend_title=COLUMN),
                       [MODEL, UPSAMPLING, COLUMN])
    assert_plotly_text(fa.pair_figure(z, z, MODEL, "real", diverging=False, colorbar_title="p"), [MODEL])
    top = [{"model": MODEL, "p": 0.8}, {"model": "real", "p": 0.2}]
    assert_plotly_text(fat.top_models_figure(top), [MODEL])
    uploads = pd.DataFrame({"file": [FILE_LINK, FILE_IMAGE], "model": [MODEL, MODEL], "verdict": ["known", "unknown"]})
    assert_plotly_text(fat.batch_figure(uploads), [MODEL])
    placed = uploads.assign(x=[0.0, 1.0], y=[0.0, 1.0])
    assert_plotly_text(fat.upload_map_figure(frame, design, placed), [MODEL, FILE_LINK, FILE_IMAGE, UPSAMPLING])
    summary = pd.DataFrame([{"method": MODEL, "protocol": "closed", "metric": "accuracy", "mean": 0.9, "std": 0.0,
                             "n": 1, "over": "seeds"}])
    assert_plotly_text(fat.bench_figure(summary, "closed"), [MODEL])
    img = np.zeros((1, 1, 4, 4), np.uint8)
    assert_plotly_text(figures.sample_grid(img, img, {"rgb": None, "freq": None}, labels=[MODEL]), [MODEL])


def test_readings_and_verdict_lines_escape_names():
    lines = fa.design_reading({"rgb": {COLUMN: 0.9, "loss": 0.1}}, {}, {"rgb": {COLUMN: 0.5}})
    from test_app_attribution import _answer, _decision

    lines.append(fat.verdict_line(_answer("unknown", model=MODEL, score=900), _decision()))
    lines.append(fat.verdict_line(_answer("known", model=MODEL), _decision()))
    summary = pd.DataFrame([{"method": m, "protocol": "closed", "metric": "accuracy", "mean": v, "std": 0.0, "n": 1,
                             "over": "seeds"} for m, v in ((MODEL, 0.9), ("manifpt-rgb", 0.5))])
    lines += fat.bench_reading(summary)
    assert all(live_markup(line) == [] for line in lines)
    joined = " ".join(shown(line) for line in lines)
    assert COLUMN in joined and MODEL in joined


# ---- every page, over a workspace of hostile names --------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return hostile_root(tmp_path_factory)


def test_models_page_shows_the_workspace_and_model_names_as_text(monkeypatch, root):
    at = open_page(monkeypatch, root, "page_models.py")

    assert_page_shows_names_as_text(at, [WORKSPACE, MODEL])  # the caption, the grid's heading
    assert at.dataframe[0].value["model"].tolist()[0] == MODEL  # a dataframe cell: text as it is
    assert at.sidebar.selectbox[0].value == str(root / WORKSPACE)


def test_benchmark_page_shows_the_workspace_name_as_text(monkeypatch, root):
    at = open_page(monkeypatch, root, "page_benchmark.py")

    assert_page_shows_names_as_text(at, [WORKSPACE])  # no results yet: the message names the workspace


def test_map_page_shows_model_and_design_names_as_text(monkeypatch, root):
    from app import state

    path = str(root / WORKSPACE)
    where = f"{path}|{state.stamp(path)}|rgb|raw"
    at = open_page(monkeypatch, root, "page_map.py",
                   {"map_level": "raw", "map_selection": {"where": where, "rows": list(range(0, 80, 3))}})

    assert_page_shows_names_as_text(at, [])
    assert at.dataframe and at.get("plotly_chart")  # the selection panel is there too
    legend = {plotly_shown(t["name"]) for t in charts(at)[0]["data"] if t.get("showlegend", True)}
    assert MODEL in legend
    menu = charts(at)[0]["layout"]["updatemenus"][0]["buttons"]
    assert f"Colour by: {COLUMN}" in [plotly_shown(b["label"]) for b in menu]


def test_spectra_page_shows_model_and_design_names_as_text(monkeypatch, root):
    at = open_page(monkeypatch, root, "page_spectra.py")

    assert_page_shows_names_as_text(at, [])
    names = {plotly_shown(t.get("name", "")) for f in charts(at) for t in f["data"]}
    assert UPSAMPLING in names  # the profiles' legend, by upsampling
    at.selectbox(key="spectra_factor").set_value(COLUMN).run()
    assert_page_shows_names_as_text(at, [COLUMN])  # the grid's heading names the column


def test_design_page_shows_design_column_names_as_text(monkeypatch, root):
    at = open_page(monkeypatch, root, "page_design.py")

    assert_page_shows_names_as_text(at, [COLUMN])  # the reading names it
    nmi = charts(at)[0]["layout"]["xaxis"]
    assert COLUMN in [plotly_shown(x) for x in nmi["ticktext"]]


def test_attribute_page_shows_upload_model_and_workspace_names_as_text(monkeypatch, root):
    at = open_page(monkeypatch, root, "page_attribute.py")
    sample = model_png(root)
    at.file_uploader(key="attr_upload").set_value([
        (FILE_LINK, sample, "image/png"), (FILE_IMAGE, sample, "image/png"),
        (FILE_BAD, b"not a picture at all\n", "image/png"),
    ]).run()

    assert_page_shows_names_as_text(at, [WORKSPACE, FILE_LINK, FILE_IMAGE, FILE_BAD])
    cards = [m.value for m in at.markdown if m.value.startswith("**1. ") or m.value.startswith("**2. ")]
    assert len(cards) == 2 and text.md(FILE_LINK) in cards[0] and text.md(FILE_IMAGE) in cards[1]
    assert len(at.error) == 1 and FILE_BAD in shown(at.error[0].value)
    tops = [f for f in charts(at) if "top models" in f["layout"].get("title", {}).get("text", "")]
    assert tops and all(MODEL in [plotly_shown(y) for y in f["data"][0]["y"]] for f in tops)
    stars = [t for f in charts(at) for t in f["data"] if str(t.get("name", "")).startswith("upload: ")]
    hovered = [plotly_shown(c) for t in stars for row in t["customdata"] for c in row]
    assert FILE_LINK in hovered and FILE_IMAGE in hovered
