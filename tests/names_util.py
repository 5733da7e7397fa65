"""Hostile names (a workspace, a model, a design value and column, uploads) and the checks that they are shown
as text: in the markdown the app sends, and in its plotly figures. Shared by test_names.py and the browser test."""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app_util import charts
from gmdata import make_gm_dataset

# Upload file names (a browser sends any name; zip members may hold "/").
FILE_LINK = "[Verified: real photo](http://127.0.0.1:9/x) .png"
FILE_IMAGE = "![i](http://127.0.0.1:9/t.png).png"
FILE_BAD = "[Re-run](http://127.0.0.1:9/b) *now* <b>.png"  # not an image: shown in an error message
# Folder names (no "/" in them): the workspace and a model. A link, an image, emphasis, a tag, a template field.
WORKSPACE = "[Verified: real photo](http:127.0.0.1:9) ![w](w.png)"
MODEL = "[Verified: real photo](http:127.0.0.1:9) ![i](t.png) <b>*x* %{x}"
# models.csv: a design value and a column of the user's own.
UPSAMPLING = '<a href="http://127.0.0.1:9/u">up</a> [u](http://127.0.0.1:9/u)'
COLUMN = "[col](http://127.0.0.1:9/c)<i>c</i>"  # no space: analyze reads "loss (gan)" up to its first space
HOSTILE = (FILE_LINK, FILE_IMAGE, FILE_BAD, WORKSPACE, MODEL, UPSAMPLING, COLUMN)
OTHER_MODEL = "toy_vae"
_BUILT: dict[str, Path] = {}


def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root with one workspace named WORKSPACE (1 x 16 x 16; models MODEL and toy_vae; rgb and freq), analysed,
    with an rgb attributor (2 epochs); MODEL's upsampling is UPSAMPLING and models.csv has a column COLUMN."""
    if "root" in _BUILT:
        return _BUILT["root"]
    import torch

    from fingerprint_core.analysis.run import Settings, analyze
    from fingerprint_core.attribution import train
    from fingerprint_core.pipeline import fingerprint
    from fingerprint_core.workspace import Workspace

    data = make_gm_dataset(tmp_path_factory.mktemp("hostile-data"), bad_file=False)
    (data / "models" / "toy_gan").rename(data / "models" / MODEL)
    table = pd.read_csv(data / "models.csv", dtype=str, keep_default_na=False)
    table.loc[table["model"] == "toy_gan", ["model", "upsampling"]] = [MODEL, UPSAMPLING]
    table[COLUMN] = ["a", "b"]
    table.to_csv(data / "models.csv", index=False)
    root = tmp_path_factory.mktemp("hostile-workspaces")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: see the one_thread fixture
    try:
        fingerprint(data, root / WORKSPACE, space_names=("rgb", "freq"), device="cpu")
        analyze(Workspace.open(root / WORKSPACE), settings=Settings(kmeans_restarts=2, bootstrap=20))
        train.train(root / WORKSPACE, kinds=["rgb"], epochs=2, device="cpu")
    finally:
        torch.set_num_threads(before)
    _BUILT["root"] = root
    return root


def model_png(root: Path, model: str = MODEL, i: int = 0) -> bytes:
    """One of a model's samples in the hostile workspace, as the PNG a user would drop."""
    import io

    from PIL import Image

    from fingerprint_core.workspace import Workspace

    buf = io.BytesIO()
    Image.fromarray(np.asarray(Workspace.open(root / WORKSPACE).images(model)[i])[0]).save(buf, format="PNG")
    return buf.getvalue()


# ---- what a markdown source shows -------------------------------------------------------------------------

JOINER = "\u2060"


def scan(src: str) -> list[tuple[str, str]]:
    """Each character a markdown source shows, with how: "live" (markdown may read it as markup), "text" (a
    backslash escape) or "code" (inside a code span)."""
    out, i = [], 0
    while i < len(src):
        c = src[i]
        if c == "\\" and i + 1 < len(src) and src[i + 1] in string.punctuation:
            out.append((src[i + 1], "text"))
            i += 2
        elif c == "`":
            run = len(re.match(r"`+", src[i:]).group())
            close = re.compile(rf"(?<!`)`{{{run}}}(?!`)").search(src, i + run)
            if close:
                inner = src[i + run:close.start()]
                if len(inner) > 1 and inner[0] == inner[-1] == " " and inner.strip(" "):
                    inner = inner[1:-1]  # CommonMark strips one space from each side
                out += [(ch, "code") for ch in inner]
                i = close.end()
            else:
                out += [("`", "live")] * run
                i += run
        else:
            out.append((c, "live"))
            i += 1
    return out


def shown(src: str) -> str:
    """The characters a markdown source shows, markup characters included, invisible joiners left out."""
    return "".join(c for c, _ in scan(src)).replace(JOINER, "")


# Streamlit rewrites these in the text itself, after escapes are resolved (code spans excepted).
TEXT_PATTERNS = {
    "autolink": re.compile(r"(?i)https?://|www\."),
    "e-mail link": re.compile(r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+"),
    "emoji or icon shortcode": re.compile(r":[A-Za-z0-9_+-]+:"),
}


def live_markup(src: str) -> list[str]:
    """What in a markdown source Streamlit would render as a link, an image, HTML, an entity, math or an
    autolink (an empty list when there is none)."""
    chars = scan(src)
    found = []
    for k, (c, how) in enumerate(chars):
        nxt = chars[k + 1] if k + 1 < len(chars) else ("", "")
        if how != "live":
            continue
        if c == "]" and nxt == ("(", "live"):
            found.append("link or image")
        elif c == "<" and nxt[1] == "live" and re.match(r"[A-Za-z/!?]", nxt[0]):
            found.append("HTML or autolink")
        elif c == "$":
            found.append("math")
        elif c == "&" and re.match(r"&(#\d+|#x[0-9a-fA-F]+|\w+);", "".join(ch for ch, _ in chars[k:k + 12])) \
                and "".join(ch for ch, _ in chars[k:k + 6]) != "&nbsp;":
            found.append("entity")
    text = "".join(c if how != "code" else " " for c, how in chars)
    found += [what for what, pattern in TEXT_PATTERNS.items() if pattern.search(text)]
    return found


def markdown_sources(at) -> list[str]:
    """Every string an AppTest run sends that Streamlit renders as markdown: bodies of markdown, captions,
    alerts, headings and toasts; labels of widgets, metrics, expanders, status boxes and tabs; the options
    of radios, pills and segmented controls; tooltips. (Code, text, dataframes and selectbox options are
    shown as plain text.)"""
    out = []
    for node in at._tree:
        kind = getattr(node, "type", "")
        if kind in ("markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader",
                    "toast"):
            out.append(node.value)
        if kind in ("radio", "button_group"):
            out += [str(o) for o in node.options]
        label = getattr(node, "label", None)
        if isinstance(label, str):
            out.append(label)
        proto = getattr(node, "proto", None)
        for field in ("help", "text") if kind != "text" else ():
            value = getattr(proto, field, None) if proto is not None else None
            if isinstance(value, str) and value:
                out.append(value)
    return out


# ---- what a plotly figure shows ------------------------------------------------------------------------

NOT_SHOWN = {"legendgroup", "uid", "meta", "source", "bdata", "dtype", "shape"}  # strings plotly never draws


def plotly_strings(fig: dict) -> list[str]:
    """Every string of a plotly figure (JSON) that plotly may draw: names, titles, ticks, texts, hovers, menus,
    and the customdata of a trace whose hovertemplate shows it."""
    out = []

    def walk(v, key=None, parent=None):
        if key in NOT_SHOWN:
            return
        if key == "customdata" and "%{customdata" not in str((parent or {}).get("hovertemplate", "")):
            return  # data for the app (a centroid's model, for the selection), never drawn
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(x, k, v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x, key, parent)

    walk(fig)
    return out


OUR_TAGS = re.compile(r"</?(?:b|br|sub|sup|extra)>")  # the tags the app's own labels use


def live_plotly(s: str) -> list[str]:
    """What in a plotly label would be read as a tag (other than the app's own), or as LaTeX."""
    found = []
    if "<" in OUR_TAGS.sub("", s):
        found.append("tag")
    if len(s) > 1 and s.startswith("$") and s.endswith("$"):
        found.append("LaTeX")
    return found


def plotly_shown(s: str) -> str:
    """A plotly label as its reader sees it: tags dropped, entities decoded (as plotly's svg text does)."""
    s = re.sub(r"<[^<>]*>", "", s)
    named = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "nbsp": "\u00a0"}
    return re.sub(r"&(#\d+|#x[0-9a-fA-F]+|[a-z]+);",
                  lambda m: (chr(int(m.group(1)[2:], 16)) if m.group(1).startswith("#x") else
                             chr(int(m.group(1)[1:])) if m.group(1).startswith("#") else named.get(m.group(1), m.group())),
                  s)


# ---- a page of the app -------------------------------------------------------------------------------------


def assert_page_shows_names_as_text(at, must_show: list[str]) -> None:
    """No markdown the page sent holds live markup; each of must_show appears as text; no figure label acts."""
    assert not at.exception, [e.value for e in at.exception]
    sources = markdown_sources(at)
    assert [(s, live_markup(s)) for s in sources if live_markup(s)] == []
    everything = " ".join(shown(s) for s in sources)
    missing = [n for n in must_show if n not in everything]
    assert not missing, missing
    for fig in charts(at):
        strings = plotly_strings(fig)
        assert [s for s in strings if live_plotly(s)] == []
        assert not any(raw in s for raw in (MODEL, UPSAMPLING, COLUMN) for s in strings)
        assert not any("<b>*x*" in s or "*x* %{x}" in s for s in strings)
