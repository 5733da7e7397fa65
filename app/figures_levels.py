"""Figures and readings of the three fingerprint levels (raw, learned, model; DESIGN.md section 8): the model x model
similarity heatmap, NMI per level with its design null, leave-one-design-out per level with its chance, and the plain
sentences that say which level shows which factor. Pure functions over `Analysis.levels`; no streamlit, no torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.figures_analysis import PALETTE, PAPER_TABLE5, confounded, design_reading
from app.text import md, plotly_label
from fingerprint_core import protocol

LEVELS = ("raw", "learned", "model")
LEVEL_COLORS = {"raw": "#D97706", "learned": "#2563EB", "model": "#059669"}
PAPER_COLOR = "#111827"
NULL_COLOR = "rgba(107, 114, 128, 0.30)"  # the null band, behind every bar
NULL_NAME = "design null: mean to 95th percentile"
NULL_TICK_NAME = "design null: 95th percentile"
ALPHA = protocol.ALPHA  # a test counts when its Holm-corrected p is below this, as in the analysis's own reading
# Which method each number comes from, in the words the captions and tables use.
NMI_METHOD = {
    "raw": "k-means on the PCA-reduced artifacts (samples)",
    "learned": "k-means on the design-blind attributor's standardised features (test samples)",
    "model": "average-linkage clustering of the model distances (one vote per model)",
}
LODO_METHOD = {
    "raw": "LDA (shrunk covariance) on the PCA-reduced artifacts",
    "learned": "nearest class mean of a design-blind attributor retrained without the held-out design",
}
DISTANCES = {"learned_means": "learned class means", "energy": "energy distance of artifacts"}
DISTANCE_HELP = {
    "learned_means": "Euclidean distance between the models' mean features (the design-blind attributor's test "
                     "features, each feature standardised)",
    "energy": "energy distance (Székely–Rizzo) between the models' artifact sets, on seeded subsets of 300 "
              "artifacts per model",
}


def _num(v) -> float | None:
    """A finite float, or None (a metric with nothing to measure is null in the JSON)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _p(v) -> str:
    """A p-value as text: three significant digits, "–" when missing."""
    f = _num(v)
    return "–" if f is None else f"{f:.3g}"


def nmi_cells(levels: Mapping, level: str, space: str) -> dict[str, dict]:
    """Group -> its NMI test at one level in one space (raw and learned: k-means NMI; model: clustering NMI)."""
    if level == "model":
        return dict((levels.get("model") or {}).get("clustering", {}).get(space) or {})
    return dict((levels.get(level) or {}).get("nmi", {}).get(space) or {})


def level_spaces(levels: Mapping) -> list[str]:
    """The spaces any level measured, in the order the analysis wrote them."""
    found: dict[str, None] = {}
    for lv in ("raw", "learned"):
        for key in ("nmi", "lodo", "purity"):
            found.update(dict.fromkeys((levels.get(lv) or {}).get(key, {}) or {}))
    found.update(dict.fromkeys((levels.get("model") or {}).get("clustering", {}) or {}))
    return list(found)


def level_groups(levels: Mapping, spaces: Sequence[str] | None = None) -> list[str]:
    """Every test group (factor names such as "upsampling", "loss | family") of any level, first seen first."""
    spaces = level_spaces(levels) if spaces is None else spaces
    found: dict[str, None] = {}
    for sp in spaces:
        for lv in LEVELS:
            found.update(dict.fromkeys(nmi_cells(levels, lv, sp)))
    return list(found)


# ---- NMI per level, with the design null behind each bar -----------------------------------------------------


def _nmi_hover(level: str, space: str, group: str, v: Mapping) -> str:
    lines = [f"<b>{plotly_label(group)}</b> · {level} level · {plotly_label(space)}",
             f"NMI {_num(v.get('value')):.3f}"]
    lo, hi = _num(v.get("low")), _num(v.get("high"))
    if lo is not None and hi is not None:
        lines[-1] += f" (design bootstrap [{lo:.3f}, {hi:.3f}])"
    mean, p95 = _num(v.get("null_mean")), _num(v.get("null_p95"))
    null = [f"mean {mean:.3f}" if mean is not None else "", f"95th pct {p95:.3f}" if p95 is not None else ""]
    if any(null):
        lines.append("design null: " + ", ".join(s for s in null if s))
    lines.append(f"p {_p(v.get('p'))}, Holm p {_p(v.get('p_holm'))}")
    if v.get("testable") is False:
        lines.append("not testable: no permutation of designs changes the grouping")
    if level == "model" and v.get("distance"):
        lines.append(f"on the {DISTANCES.get(v['distance'], plotly_label(v['distance']))}")
    return "<br>".join(lines)


def levels_nmi_figure(levels: Mapping, spaces: Sequence[str] | None = None,
                      paper: Mapping[str, Mapping[str, float]] = PAPER_TABLE5, *, alpha: float = ALPHA) -> go.Figure:
    """NMI per test group at each level (bars), one row per space, the design null (mean to 95th percentile) as a
    grey band behind each bar, a star where Holm p < alpha, and the paper's Table 5 value as an outlined bar
    beside the factors it reports."""
    spaces = list(level_spaces(levels) if spaces is None else spaces)
    groups = level_groups(levels, spaces)
    present = [lv for lv in LEVELS if any(nmi_cells(levels, lv, sp) for sp in spaces)]
    has_paper = any(g in (paper.get(sp) or {}) for sp in spaces for g in groups)
    slots = [*present, *(["paper"] if has_paper else [])]
    n_rows = max(len(spaces), 1)
    fig = make_subplots(rows=n_rows, cols=1, shared_xaxes=True, vertical_spacing=0.14 / n_rows if n_rows > 1 else 0,
                        subplot_titles=[plotly_label(sp) for sp in spaces] or [""])
    slot = 0.86 / max(len(slots), 1)
    legend: set[str] = set()

    def once(name: str) -> bool:
        first = name not in legend
        legend.add(name)
        return first

    for r, sp in enumerate(spaces, start=1):
        for j, lv in enumerate(slots):
            left = -0.43 + j * slot
            if lv == "paper":
                cells = [(g, (paper.get(sp) or {}).get(g)) for g in groups if g in (paper.get(sp) or {})]
                if cells:
                    fig.add_trace(go.Bar(
                        x=[groups.index(g) for g, _ in cells], y=[v for _, v in cells], width=slot * 0.6,
                        offset=left + slot * 0.2, name="paper, Table 5 (its datasets)", legendgroup="paper",
                        showlegend=once("paper"), legendrank=900, marker=dict(color="white", line=dict(color=PAPER_COLOR, width=1.5)),
                        hovertext=[f"<b>{plotly_label(g)}</b> · paper, Table 5 · {plotly_label(sp)}<br>NMI {v:.3f} "
                                   "(its CIFAR-10, CelebA, FFHQ models)" for g, v in cells],
                        hovertemplate="%{hovertext}<extra></extra>",
                    ), row=r, col=1)
                continue
            tests = nmi_cells(levels, lv, sp)
            cells = [(g, tests[g]) for g in groups if g in tests and _num((tests[g] or {}).get("value")) is not None]
            if not cells:
                continue
            band = [(g, v) for g, v in cells if _num(v.get("null_mean")) is not None and _num(v.get("null_p95")) is not None]
            if band:  # from the null's mean to its 95th percentile, wider than the bar and drawn first
                fig.add_trace(go.Bar(
                    x=[groups.index(g) for g, _ in band], base=[v["null_mean"] for _, v in band],
                    y=[max(v["null_p95"] - v["null_mean"], 0.004) for _, v in band], width=slot * 0.94,
                    offset=left + slot * 0.03, marker=dict(color=NULL_COLOR, line=dict(width=0)), name=NULL_NAME,
                    legendgroup="null", showlegend=once("null"), legendrank=800, meta=f"null band · {lv} · {sp}",
                    hovertext=[f"<b>{plotly_label(g)}</b> · {lv} level · {plotly_label(sp)}<br>design null: mean "
                               f"{v['null_mean']:.3f}, 95th pct {v['null_p95']:.3f}" for g, v in band],
                    hovertemplate="%{hovertext}<extra></extra>",
                ), row=r, col=1)
            ticks = [(g, v) for g, v in cells if _num(v.get("null_mean")) is None and _num(v.get("null_p95")) is not None]
            if ticks:  # a null given by its 95th percentile only: a grey tick across the bar's slot
                fig.add_trace(go.Scatter(
                    x=[groups.index(g) + left + slot / 2 for g, _ in ticks], y=[v["null_p95"] for _, v in ticks],
                    mode="markers", marker=dict(symbol="line-ew", size=16, line=dict(width=3, color="#6B7280")),
                    name=NULL_TICK_NAME, legendgroup="null-tick", showlegend=once("null-tick"), legendrank=810,
                    meta=f"null tick · {lv} · {sp}",
                    hovertext=[f"<b>{plotly_label(g)}</b> · {lv} level · {plotly_label(sp)}<br>design null: 95th pct "
                               f"{v['null_p95']:.3f}" for g, v in ticks],
                    hovertemplate="%{hovertext}<extra></extra>",
                ), row=r, col=1)
            fig.add_trace(go.Bar(
                x=[groups.index(g) for g, _ in cells], y=[v["value"] for _, v in cells], width=slot * 0.55,
                offset=left + slot * 0.225, name=f"{lv} level", legendgroup=lv, showlegend=once(lv), legendrank=100 + j,
                marker=dict(color=LEVEL_COLORS[lv], opacity=[0.45 if v.get("testable") is False else 1.0 for _, v in cells]),
                text=["★" if (_num(v.get("p_holm")) is not None and v["p_holm"] < alpha) else "" for _, v in cells],
                textposition="outside", textfont=dict(size=11, color=LEVEL_COLORS[lv]), cliponaxis=False,
                hovertext=[_nmi_hover(lv, sp, g, v) for g, v in cells], hovertemplate="%{hovertext}<extra></extra>",
            ), row=r, col=1)
        fig.update_yaxes(title_text="NMI", range=[0, 1.08], row=r, col=1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(groups))), ticktext=[plotly_label(g) for g in groups],
                     range=[-0.55, len(groups) - 0.45], showgrid=False, automargin=True, tickangle=-30)
    fig.update_layout(barmode="overlay", height=90 + 250 * n_rows, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", y=1.0, yref="container", yanchor="top", x=0, xanchor="left"),
                      hovermode="closest", bargap=0)
    fig.update_annotations(font_size=13)
    return fig


# ---- leave one design out, per level ---------------------------------------------------------------------------


def lodo_cells(levels: Mapping, level: str, space: str) -> dict[str, dict]:
    """Factor -> leave-one-design-out result at the raw or learned level in one space."""
    return dict((levels.get(level) or {}).get("lodo", {}).get(space) or {})


LODO_SHORT = {"raw": "raw · LDA", "learned": "learned · nearest class mean"}


def lodo_designs(levels: Mapping, level: str) -> int:
    """How many designs were held out at a level (the most folds of any space and factor)."""
    return max((len(v.get("folds") or []) for sp in level_spaces(levels) for v in lodo_cells(levels, level, sp).values()),
               default=0)


def levels_lodo_figure(levels: Mapping, spaces: Sequence[str] | None = None) -> go.Figure:
    """Leave-one-design-out accuracy per factor at the raw (LDA) and learned (nearest class mean) levels, one
    row per space, each bar with its chance as a black tick across it."""
    spaces = [sp for sp in (level_spaces(levels) if spaces is None else spaces)
              if any(lodo_cells(levels, lv, sp) for lv in ("raw", "learned"))]
    present = [lv for lv in ("raw", "learned") if any(lodo_cells(levels, lv, sp) for sp in spaces)]
    factors = list(dict.fromkeys(f for sp in spaces for lv in present for f in lodo_cells(levels, lv, sp)))
    n_rows = max(len(spaces), 1)
    fig = make_subplots(rows=n_rows, cols=1, shared_xaxes=True, vertical_spacing=0.16 / n_rows if n_rows > 1 else 0,
                        subplot_titles=[plotly_label(sp) for sp in spaces] or [""])
    slot = 0.8 / max(len(present), 1)
    legend: set[str] = set()
    for r, sp in enumerate(spaces, start=1):
        for j, lv in enumerate(present):
            tests = lodo_cells(levels, lv, sp)
            left = -0.4 + j * slot
            cells = [(f, tests[f]) for f in factors if f in tests]
            acc = [(f, v) for f, v in cells if _num(v.get("accuracy")) is not None]
            fig.add_trace(go.Bar(
                x=[factors.index(f) for f, _ in acc], y=[v["accuracy"] for _, v in acc], width=slot * 0.7,
                offset=left + slot * 0.15, marker_color=LEVEL_COLORS[lv], name=LODO_SHORT[lv], legendgroup=lv,
                showlegend=lv not in legend, legendrank=100 + j, text=[f"{v['accuracy']:.0%}" for _, v in acc],
                textposition="outside", cliponaxis=False, textfont=dict(size=10),
                hovertext=[f"<b>{plotly_label(f)}</b> · {lv} level · {plotly_label(sp)}<br>held-out accuracy "
                           f"{v['accuracy']:.1%}, chance {_num(v.get('chance')) or float('nan'):.1%}<br>"
                           f"{len(v.get('folds') or [])} designs held out" for f, v in acc],
                hovertemplate="%{hovertext}<extra></extra>",
            ), row=r, col=1)
            legend.add(lv)
            ch = [(f, v) for f, v in cells if _num(v.get("chance")) is not None]
            fig.add_trace(go.Scatter(
                x=[factors.index(f) + left + slot / 2 for f, _ in ch], y=[v["chance"] for _, v in ch], mode="markers",
                marker=dict(symbol="line-ew", size=16, line=dict(width=3, color="#111827")), name="chance",
                legendgroup="chance", showlegend="chance" not in legend, legendrank=800,
                hovertext=[f"<b>{plotly_label(f)}</b> · {lv} level · {plotly_label(sp)}<br>chance {v['chance']:.1%}"
                           for f, v in ch], hovertemplate="%{hovertext}<extra></extra>",
            ), row=r, col=1)
            legend.add("chance")
        fig.update_yaxes(range=[0, 1.18], tickformat=".0%", title_text="accuracy", row=r, col=1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(factors))), ticktext=[plotly_label(f) for f in factors],
                     range=[-0.55, len(factors) - 0.45], automargin=True, tickangle=-30)
    fig.update_layout(barmode="overlay", height=110 + 190 * n_rows, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=1.0, yref="container", yanchor="top", x=0, xanchor="left"))
    fig.update_annotations(font_size=13)
    return fig


# ---- the model x model similarity heatmap ---------------------------------------------------------------------


def similarity_order(order: Sequence[str], design: pd.DataFrame, sort_by: str | None = None) -> list[str]:
    """The models in dendrogram order, or sorted by a factor's level (level names in order) and in dendrogram
    order within a level."""
    order = [str(m) for m in order]
    if not sort_by or sort_by not in design:
        return order
    level = dict(zip(design["model"].astype(str), design[sort_by].astype(str), strict=True))
    rank = {m: i for i, m in enumerate(order)}
    return sorted(order, key=lambda m: (level.get(m, ""), rank[m]))


def strip_colors(design: pd.DataFrame, factors: Sequence[str], models: Sequence[str]) -> dict[str, dict[str, str]]:
    """Factor -> level -> colour, levels in sorted order, colours running on across factors (no two alike)."""
    rows = design[design["model"].astype(str).isin([str(m) for m in models])]
    out, i = {}, 0
    for f in factors:
        out[f] = {}
        for lv in sorted(rows[f].astype(str).unique()):
            out[f][lv] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def _discrete_scale(colors: Sequence[str]) -> list:
    """A plotly colour scale that gives code i (of len(colors), on zmin=-0.5 .. zmax=n-0.5) the colour colors[i]."""
    n = max(len(colors), 1)
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale or [[0, "#FFFFFF"], [1, "#FFFFFF"]]


def similarity_figure(
    matrix: Sequence[Sequence[float]],
    models: Sequence[str],
    order: Sequence[str],
    design: pd.DataFrame,
    factors: Sequence[str],
    *,
    distance: str,
    sort_by: str | None = None,
) -> go.Figure:
    """The model x model distance heatmap (matrix rows and columns follow models), in dendrogram order or sorted
    by a factor, with a colour strip per factor above it and beside it (a legend of their levels), every model
    named on both axes.

    Ticks are positions 0..n-1 with the names as tick text, so two names that read alike stay two rows.
    """
    models = [str(m) for m in models]
    index = {m: i for i, m in enumerate(models)}
    shown = [m for m in similarity_order([m for m in order if str(m) in index], design, sort_by)]
    shown += [m for m in models if m not in shown]  # a model the order left out still gets its row
    idx = [index[m] for m in shown]
    d = np.asarray(matrix, dtype=np.float64)[np.ix_(idx, idx)]
    n, nf = len(shown), len(factors)
    labels = [plotly_label(m) for m in shown]
    colors = strip_colors(design, factors, shown)
    level_of = {f: dict(zip(design["model"].astype(str), design[f].astype(str), strict=True)) for f in factors}

    cell = int(np.clip(620 / max(n, 1), 14, 30))
    strip, gap = 16, 6
    side = nf * strip + (gap if nf else 0)  # the strips' share of each axis, in pixels
    label_px = int(np.clip(6.2 * max((len(x) for x in labels), default=4), 40, 320))
    plot_w = plot_h = n * cell + side
    fig = go.Figure()
    positions = list(range(n))
    off = d[~np.eye(n, dtype=bool)] if n > 1 else d.ravel()
    finite = off[np.isfinite(off)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    custom = np.empty((n, n, 2), dtype=object)
    for i in range(n):
        for j in range(n):
            custom[i, j] = (labels[i], labels[j])
    name = DISTANCES.get(distance, plotly_label(distance))
    fig.add_trace(go.Heatmap(
        z=d, x=positions, y=positions, customdata=custom, xaxis="x", yaxis="y", zmin=lo, zmax=hi if hi > lo else lo + 1,
        colorscale="Viridis", name="distance",  # dark: close
        colorbar=dict(title=dict(text=f"distance ({name})", side="top"), orientation="h", thickness=10, len=0.3,
                      x=0, xanchor="left", xref="paper", y=1, yanchor="top", yref="container", ypad=4),
        hovertemplate=f"%{{customdata[0]}}<br>%{{customdata[1]}}<br>{name}: %{{z:.4g}}<extra></extra>",
    ))
    top0 = n * cell / plot_h  # the heatmap fills [0, top0] of the height and [0, right0] of the width
    right0 = n * cell / plot_w
    for k, f in enumerate(factors):
        levels_f = list(colors[f])
        codes = [levels_f.index(level_of[f].get(m, "")) if level_of[f].get(m, "") in levels_f else 0 for m in shown]
        scale = _discrete_scale([colors[f][lv] for lv in levels_f])
        y0 = (n * cell + gap + (nf - 1 - k) * strip) / plot_h  # the first factor on top, read like the legend
        x0 = (n * cell + gap + k * strip) / plot_w
        ax = k + 2
        hover = [f"{labels[i]}<br>{plotly_label(f)}: {plotly_label(level_of[f].get(m, ''))}" for i, m in enumerate(shown)]
        fig.add_trace(go.Heatmap(  # above: one row of the factor's level per model column
            z=[codes], x=positions, y=[0], xaxis="x", yaxis=f"y{ax}", colorscale=scale, zmin=-0.5,
            zmax=len(levels_f) - 0.5, showscale=False, text=[hover], hovertemplate="%{text}<extra></extra>",
            name=plotly_label(f), xgap=0, ygap=0,
        ))
        fig.add_trace(go.Heatmap(  # beside: one column per factor, a row per model
            z=[[c] for c in codes], x=[0], y=positions, xaxis=f"x{ax}", yaxis="y", colorscale=scale, zmin=-0.5,
            zmax=len(levels_f) - 0.5, showscale=False, text=[[h] for h in hover], hovertemplate="%{text}<extra></extra>",
            name=plotly_label(f),
        ))
        fig.layout[f"yaxis{ax}"] = dict(domain=[y0, y0 + (strip - 2) / plot_h], anchor="x", tickmode="array",
                                        tickvals=[0], ticktext=[plotly_label(f)], showgrid=False, zeroline=False,
                                        ticks="", tickfont=dict(size=10), fixedrange=True)
        fig.layout[f"xaxis{ax}"] = dict(domain=[x0, x0 + (strip - 2) / plot_w], anchor="y", tickmode="array",
                                        tickvals=[0], ticktext=[plotly_label(f)], showgrid=False, zeroline=False,
                                        ticks="", tickangle=-90, tickfont=dict(size=10), fixedrange=True)
        for lv in levels_f:  # the strips' legend: a square per level, grouped under the factor
            fig.add_trace(go.Scatter(
                x=[None], y=[None], mode="markers", marker=dict(symbol="square", size=11, color=colors[f][lv]),
                name=plotly_label(lv), legendgroup=f"factor-{k}", legendgrouptitle=dict(text=plotly_label(f)),
                hoverinfo="skip", xaxis="x", yaxis="y",
            ))
    ticks = dict(tickmode="array", tickvals=positions, ticktext=labels, showgrid=False, zeroline=False, ticks="",
                 tickfont=dict(size=10 if cell >= 18 else 9))
    fig.layout.xaxis = dict(domain=[0, right0], anchor="y", tickangle=-90, range=[-0.5, n - 0.5], **ticks)
    fig.layout.yaxis = dict(domain=[0, top0], anchor="x", autorange="reversed", **ticks)
    if sort_by and sort_by in level_of:  # white lines between the levels of the factor sorted by
        lv = [level_of[sort_by].get(m, "") for m in shown]
        for i in range(1, n):
            if lv[i] != lv[i - 1]:
                fig.add_shape(type="line", xref="x", yref="y", x0=i - 0.5, x1=i - 0.5, y0=-0.5, y1=n - 0.5,
                              line=dict(color="white", width=2))
                fig.add_shape(type="line", xref="x", yref="y", y0=i - 0.5, y1=i - 0.5, x0=-0.5, x1=n - 0.5,
                              line=dict(color="white", width=2))
    legend_px = 190 if nf else 0
    fig.update_layout(
        width=plot_w + label_px + legend_px + 40, height=plot_h + label_px + 90,
        margin=dict(l=label_px + 10, r=legend_px + 10, t=80, b=label_px + 10), plot_bgcolor="white",
        legend=dict(x=1.02, xanchor="left", y=1, yanchor="top", groupclick="toggleitem", itemclick=False,
                    itemdoubleclick=False, font=dict(size=11)),
        hovermode="closest",
    )
    return fig


def share_table(tests: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per test group: the share test on one distance (are models sharing the group's level closer?):
    effect, relative effect, p, p without seed twins, Holm p, testable."""
    rows = [{"test group": g, "effect": _num(t.get("effect")), "relative effect": _num(t.get("relative_effect")),
             "p": _num(t.get("p")), "p without twins": _num(t.get("p_without_twins")), "Holm p": _num(t.get("p_holm")),
             "testable": t.get("testable")} for g, t in tests.items() if t]
    return pd.DataFrame(rows, columns=["test group", "effect", "relative effect", "p", "p without twins", "Holm p",
                                       "testable"])


def clustering_table(clustering: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per test group: the NMI of an average-linkage clustering of the models beside its design null."""
    rows = [{"test group": g, "NMI": _num(c.get("value")), "null mean": _num(c.get("null_mean")),
             "null 95th pct": _num(c.get("null_p95")), "p": _num(c.get("p")), "Holm p": _num(c.get("p_holm")),
             "distance": DISTANCES.get(c.get("distance"), c.get("distance"))} for g, c in clustering.items() if c]
    table = pd.DataFrame(rows, columns=["test group", "NMI", "null mean", "null 95th pct", "p", "Holm p", "distance"])
    return table.drop(columns="null mean") if table["null mean"].isna().all() else table


# ---- every number, one table -----------------------------------------------------------------------------------


def levels_numbers(levels: Mapping) -> pd.DataFrame:
    """One row per (level, space, test group): NMI with its interval and design null, p and Holm p, silhouette with
    its null, leave-one-design-out accuracy with its chance, and the method each comes from."""
    rows = []
    for sp in level_spaces(levels):
        for lv in LEVELS:
            tests = nmi_cells(levels, lv, sp)
            sil = (levels.get(lv) or {}).get("silhouette", {}).get(sp) or {}
            lodo = lodo_cells(levels, lv, sp) if lv != "model" else {}
            for g in dict.fromkeys([*tests, *lodo]):
                v, s, lo = tests.get(g) or {}, sil.get(g) or {}, lodo.get(g) or {}
                rows.append({
                    "level": lv, "space": sp, "test group": g, "method": NMI_METHOD[lv],
                    "NMI": _num(v.get("value")), "NMI low": _num(v.get("low")), "NMI high": _num(v.get("high")),
                    "null mean": _num(v.get("null_mean")), "null 95th pct": _num(v.get("null_p95")),
                    "p": _num(v.get("p")), "Holm p": _num(v.get("p_holm")), "testable": v.get("testable"),
                    "silhouette": _num(s.get("value")), "silhouette null 95th pct": _num(s.get("null_p95")),
                    "silhouette p": _num(s.get("p")), "held-out accuracy": _num(lo.get("accuracy")),
                    "chance": _num(lo.get("chance")), "held-out method": LODO_METHOD.get(lv) if lo else None,
                })
    return pd.DataFrame(rows)


# ---- the reading: which level shows which factor, how sure, what does not hold --------------------------------


def _v(x: float | None) -> str:
    """An NMI as text: two decimals, three below 0.1 (where the raw level's values live)."""
    return "–" if x is None else (f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}")


def _nmi_clause(space: str, v: Mapping, what: str = "NMI") -> str:
    return f"{md(space)}: {what} {_v(_num(v['value']))} vs null 95th pct {_v(_num(v.get('null_p95')))}, Holm p {_p(v.get('p_holm'))}"


def _evidence(levels: Mapping, group: str, alpha: float) -> dict[str, tuple[list, list, list]]:
    """Level -> (passing, failing, untestable) (space, test) pairs of one group."""
    out = {}
    for lv in LEVELS:
        passing, failing, untestable = [], [], []
        for sp in level_spaces(levels):
            v = nmi_cells(levels, lv, sp).get(group)
            if not v or _num(v.get("value")) is None:
                continue
            if v.get("testable") is False:
                untestable.append((sp, v))
            elif _num(v.get("p_holm")) is not None and v["p_holm"] < alpha:
                passing.append((sp, v))
            else:
                failing.append((sp, v))
        if passing or failing or untestable:
            out[lv] = (passing, failing, untestable)
    return out


def _share_clause(levels: Mapping, group: str, alpha: float) -> str:
    """How often models sharing the group's level are closer (share test), and whether seed twins carry it."""
    tests = (levels.get("model") or {}).get("tests", {}) or {}
    passing, total, twins_only = 0, 0, 0
    for per_distance in tests.values():
        for t in (per_distance or {}).values():
            v = (t or {}).get(group)
            if not v or _num(v.get("p_holm")) is None or v.get("testable") is False:
                continue
            total += 1
            if v["p_holm"] < alpha:
                passing += 1
                if _num(v.get("p_without_twins")) is not None and v["p_without_twins"] >= alpha:
                    twins_only += 1
    if not total:
        return ""
    text = f"models sharing it are closer in {passing} of {total} space–distance pairs (share test, Holm p < {alpha:g})"
    if twins_only:
        text += f", {twins_only} of them only while seed twins count (p without twins ≥ {alpha:g})"
    return text


WHAT = {"raw": "NMI", "learned": "NMI", "model": "clustering NMI"}
TINY = protocol.TINY_NMI  # an NMI below this is called tiny, however sure its p-value


def _margin(t: tuple[str, Mapping]) -> float:
    return (_num(t[1].get("value")) or 0) - (_num(t[1].get("null_p95")) or 0)


def group_line(levels: Mapping, group: str, alpha: float = ALPHA) -> str | None:
    """One sentence on a test group that some level shows beyond the design null (None otherwise): each such level
    with its numbers, whether the values are tiny, the levels that do not show it, and the share test."""
    ev = _evidence(levels, group, alpha)
    shown = [(lv, p) for lv, (p, _, _) in ev.items() if p]
    if not shown:
        return None
    not_shown = [(lv, f) for lv, (p, f, _) in ev.items() if not p and f]
    untestable = [lv for lv, (p, f, u) in ev.items() if u and not p and not f]
    clauses = []
    for lv, p in shown:
        text = f"the **{lv}** level ({'; '.join(_nmi_clause(sp, v, WHAT[lv]) for sp, v in p)})"
        if all((_num(v.get("value")) or 0) < TINY for _, v in p):
            text += f", beyond the null but tiny (NMI below {TINY:g})"
        clauses.append(text)
    parts = ["shown at " + "; ".join(clauses)]
    if not_shown:
        parts.append("not beyond the design null at " + "; ".join(
            f"the {lv} level (closest: {_nmi_clause(*max(f, key=_margin), WHAT[lv])})" for lv, f in not_shown))
    if untestable:
        parts.append("not testable at the " + ", ".join(untestable) + " level (no permutation of designs changes "
                     "the grouping)")
    share = _share_clause(levels, group, alpha)
    if share:
        parts.append(share)
    return f"**{md(group)}**: " + "; ".join(parts) + "."


def unshown_line(levels: Mapping, groups: Sequence[str], alpha: float = ALPHA) -> str | None:
    """One sentence on the test groups no level shows beyond the design null, each with its closest call."""
    items = []
    for g in groups:
        ev = _evidence(levels, g, alpha)
        if not ev or any(p for p, _, _ in ev.values()):
            continue
        tried = [(lv, t) for lv, (_, f, _) in ev.items() for t in f]
        if not tried:
            items.append(f"**{md(g)}** (not testable: no permutation of designs changes the grouping)")
            continue
        lv, (sp, v) = max(tried, key=lambda x: _margin(x[1]))
        share = _share_clause(levels, g, alpha)
        extra = f"; {share}" if share and not share.startswith("models sharing it are closer in 0 ") else ""
        items.append(f"**{md(g)}** (closest: {lv} level, {_nmi_clause(sp, v, WHAT[lv])}{extra})")
    if not items:
        return None
    return "No level shows these beyond the design null: " + "; ".join(items) + "."


def nesting_lines(levels: Mapping, design: pd.DataFrame | None = None, alpha: float = ALPHA) -> dict[str, list[str]]:
    """Factor -> plain notes on its nesting in another factor (a level found with one level of the other only), with
    what the tests that hold the other factor fixed, or stay within one family, say. "X is Y in disguise" when every
    level of X sits within one level of Y (from the design table), "partly" otherwise."""
    nest = (levels.get("model") or {}).get("nesting") or []
    groups = level_groups(levels)
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for n in nest:
        by_pair.setdefault((str(n["factor"]), str(n["within"])), []).append(n)
    generated = design[design["model"].astype(str) != "real"].astype(str) if design is not None else None
    out: dict[str, list[str]] = {}
    for (f, w), items in by_pair.items():
        held = f"{f} | {w}"
        inner = [g for g in groups if g.startswith(f"{f} (") and "|" not in g]
        if held not in groups and not (w == "family" and inner):
            continue  # no test separates the two: the analysis's own sentences list it
        by_outer: dict[str, list[str]] = {}
        for n in items:
            by_outer.setdefault(str(n["within_level"]), []).append(str(n["level"]))
        pairs = "; ".join(f"{', '.join(md(v) for v in inner_levels)} only with {md(w)} = {md(outer)}"
                          for outer, inner_levels in by_outer.items())
        every = generated is not None and f in generated and set(generated[f]) <= {str(n["level"]) for n in items}
        text = f"Over all models, **{md(f)}** is {'' if every else 'partly '}**{md(w)}** in disguise ({pairs})"
        checks, held_anywhere = [], False
        for g, how in ((held, f"with {md(w)} held fixed"), *((g, "within one family") for g in inner if w == "family")):
            if g not in groups:
                continue
            ev = _evidence(levels, g, alpha)
            found = [lv for lv, (p, _, _) in ev.items() if p]
            held_anywhere |= bool(found)
            checks.append(f"{how} (**{md(g)}**) " + (f"it holds at the {', '.join(found)} level" if found else
                                                       "no level shows it beyond the design null"))
        if checks and not held_anywhere and any(p for p, _, _ in _evidence(levels, f, alpha).values()):
            checks[-1] += f", so what **{md(f)}** shows over all models {'is' if every else 'may be'} {md(w)}'s doing"
        out.setdefault(f, []).append(text + (": " + "; ".join(checks) if checks else "") + ".")
    return out


def level_reading(levels: Mapping, design: pd.DataFrame | None = None, alpha: float = ALPHA) -> list[str]:
    """Markdown sentences: per test group which levels show it and how sure (Holm p), what does not hold, the
    nesting notes, and leave-one-design-out against chance at each level."""
    lines = []
    groups = level_groups(levels)
    notes = nesting_lines(levels, design, alpha)
    for g in groups:  # the groups some level shows, each followed by its nesting notes
        line = group_line(levels, g, alpha)
        if line:
            lines += [line, *notes.pop(g, [])]
    rest = unshown_line(levels, groups, alpha)
    lines += ([rest] if rest else []) + [t for more in notes.values() for t in more]
    for lv in ("raw", "learned"):
        lodo = {sp: lodo_cells(levels, lv, sp) for sp in level_spaces(levels) if lodo_cells(levels, lv, sp)}
        if not lodo:
            continue
        said = design_reading({}, lodo, {}, design=None)
        lines += [f"Leave one design out at the {lv} level, by {LODO_METHOD[lv]}: {s[0].lower()}{s[1:]}" for s in said]
    if design is not None:  # factors that split the models alike: no test can tell them apart
        for group in reversed(confounded(design, groups)):
            names = ", ".join(f"**{md(g)}**" for g in group)
            lines.insert(0, f"{names} divide the models into the same groups in this workspace, so their numbers "
                            "are the same and cannot be told apart; models that vary one without the others would.")
    return lines
