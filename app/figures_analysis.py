"""Figures of the structure explorer (fingerprint map, spectra, design choices): pure functions, data in,
plotly figure (or plain text) out; no streamlit, no torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.figures import DIVERGING, symmetric_range
from app.text import md, plotly_label

REAL = "real"  # the held-out real images (fingerprint_core.workspace.REAL): the real control
REAL_COLOR = "#6B7280"  # the real control is grey on every figure
# Qualitative colours, the grey of D3 left out (it belongs to the real control).
PALETTE = (
    "#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#BCBD22", "#17BECF",
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B", "#511CFB",
    "#00A08B", "#FB00D1", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1", "#620042", "#1616A7",
)
SEQUENTIAL = "Viridis"
MAP_HEIGHT = 640

# Paper Table 5 (ManiFPT, CVPR 2024; reference/paper.md): NMI between a clustering of fingerprints and
# each design label, on their datasets. Columns renamed to our factor names.
PAPER_TABLE5 = {
    "rgb": {"upsampling": .625, "non-linearity": .453, "normalization": .647, "downsampling": .432, "skip": .541, "loss": .563},
    "freq": {"upsampling": .654, "non-linearity": .354, "normalization": .534, "downsampling": .692, "skip": .317, "loss": .631},
    "sl": {"upsampling": .613, "non-linearity": .452, "normalization": .481, "downsampling": .546, "skip": .434, "loss": .677},
    "ssl": {"upsampling": .680, "non-linearity": .477, "normalization": .465, "downsampling": .615, "skip": .357, "loss": .573},
}


# ---- colours and levels ---------------------------------------------------------------------------


def model_levels(design: pd.DataFrame, color_by: str) -> dict[str, str]:
    """model -> its level in the column color_by (the real control is always its own level, "real")."""
    values = design[color_by] if color_by in design else design["model"]
    return {m: (REAL if m == REAL else str(v)) for m, v in zip(design["model"], values, strict=True)}


def level_colors(levels: Sequence[str]) -> dict[str, str]:
    """A colour per level, in order (grey for the real control)."""
    out, i = {}, 0
    for lv in dict.fromkeys(levels):
        if lv == REAL:
            out[lv] = REAL_COLOR
        else:
            out[lv] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def design_hover(design: pd.DataFrame) -> dict[str, str]:
    """model -> its design choices as hover lines ("family: gan<br>loss: hinge"), names escaped for plotly."""
    cols = [c for c in design.columns if c != "model"]
    return {str(r["model"]): "<br>".join(f"{plotly_label(c)}: {plotly_label(r[c])}" for c in cols
                                         if pd.notna(r[c]) and str(r[c]) != "")
            for r in design.to_dict("records")}  # a blank cell (the real control's seed) says nothing


# ---- fingerprint map --------------------------------------------------------------------------------
#
# Both map figures draw one trace per model and carry every colouring (model and each design column) in a
# dropdown whose buttons restyle those traces in the browser: recolouring 60,000 WebGL points then needs
# no rerun, no new figure and no new WebGL context (a new figure remounts Streamlit's chart, which took
# over a second in a software-rendered browser; bench/map_recolour.py times both).


def colourings(design: pd.DataFrame) -> list[str]:
    """What the map can be coloured by: the model, then every design column."""
    return ["model", *(c for c in design.columns if c != "model")]


LEGEND_KEYS = ("name", "legendgroup", "showlegend", "legendrank")  # what a colouring sets on a trace besides colour


def legend_styles(models: Sequence[str], design: pd.DataFrame, color_by: str) -> dict[str, list]:
    """Per trace (one model each, in drawing order): colour, legend name and group, legend rank, and whether
    the trace opens its level's legend entry (the first of each level does)."""
    levels = model_levels(design, color_by)
    lv = [levels.get(m, m) for m in models]
    colors = level_colors(sorted(lv, key=lambda v: v == REAL))  # the real control takes no palette colour
    rank = {v: i for i, v in enumerate(colors)}
    first = {v: i for i, v in reversed(list(enumerate(lv)))}
    return {"color": [colors[v] for v in lv], "name": [plotly_label(v) for v in lv], "legendgroup": lv,
            "showlegend": [first[v] == i for i, v in enumerate(lv)], "legendrank": [rank[v] for v in lv]}


def colour_menu(models: Sequence[str], traces: Sequence[int], design: pd.DataFrame, color_by: str,
                colour_keys: Sequence[str] = ("marker.color",)) -> dict:
    """A dropdown that recolours the model traces (indices traces) by model or any design column."""
    buttons = []
    for col in colourings(design):
        s = legend_styles(models, design, col)
        restyle = {**{k: s["color"] for k in colour_keys}, **{k: s[k] for k in LEGEND_KEYS}}
        buttons.append(dict(label=f"Colour by: {plotly_label(col)}", method="update",
                            args=[restyle, {"legend.title.text": plotly_label(col)}, list(traces)]))
    active = colourings(design).index(color_by) if color_by in colourings(design) else 0
    return dict(type="dropdown", buttons=buttons, active=active, direction="down", showactive=True,
                x=0, xanchor="left", y=1, yanchor="bottom", pad=dict(b=4), bgcolor="white",
                font=dict(size=12))


def _map_layout(fig: go.Figure, color_by: str, height: int, menu: dict, revision: int | str) -> None:
    fig.update_layout(
        height=height, dragmode="select", hovermode="closest", uirevision=f"fingerprint-map-{revision}",
        legend=dict(title=dict(text=plotly_label(color_by)), itemsizing="constant", groupclick="togglegroup", y=1,
                    yanchor="top"),
        margin=dict(l=10, r=10, t=44, b=10), plot_bgcolor="rgba(0,0,0,0)",  # the top margin holds the menu
        updatemenus=[menu],
    )
    fig.update_xaxes(title_text="UMAP 1", showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(title_text="UMAP 2", showticklabels=False, showgrid=False, zeroline=False)


def _model_order(names, design: pd.DataFrame) -> list[str]:
    """Models in design-table order (others after), the real control first so models are drawn over it."""
    names = set(names)
    order = [m for m in design["model"] if m in names] + sorted(names - set(design["model"]))
    return sorted(order, key=lambda m: m != REAL)


def map_figure(
    frame: pd.DataFrame,
    design: pd.DataFrame,
    color_by: str = "model",
    *,
    height: int = MAP_HEIGHT,
    revision: int | str = 0,
) -> go.Figure:
    """The per-sample fingerprint map: one WebGL trace per model, coloured by the level of color_by, with a
    dropdown of every other colouring.

    frame: one row per sample with columns model, index (into the model's samples), x, y; a point's
    customdata is [row, index], row being its position in frame (what rows_of_points reads back).
    revision: a new value draws the map afresh (clears the browser's selection).
    """
    hover = design_hover(design)
    groups = frame.groupby("model", sort=False, observed=True).indices  # model -> positions
    order = _model_order(groups, design)
    style = legend_styles(order, design, color_by)
    x, y, index = (frame[c].to_numpy() for c in ("x", "y", "index"))
    fig = go.Figure()
    for i, m in enumerate(order):
        rows = groups[m]
        fig.add_trace(go.Scattergl(
            x=x[rows].astype(np.float32), y=y[rows].astype(np.float32), mode="markers",
            customdata=np.column_stack([rows, index[rows]]).astype(np.int32),
            marker=dict(color=style["color"][i], size=4 if m == REAL else 5, opacity=0.55 if m == REAL else 0.75),
            unselected=dict(marker=dict(opacity=0.06)), **{k: style[k][i] for k in LEGEND_KEYS},
            hovertemplate=f"<b>{plotly_label(m)}</b> · sample #%{{customdata[1]}}<br>{hover.get(m, '')}"
                          "<extra></extra>",
        ))
    _map_layout(fig, color_by, height, colour_menu(order, range(len(order)), design, color_by), revision)
    return fig


def centroid_figure(
    frame: pd.DataFrame,
    design: pd.DataFrame,
    color_by: str = "model",
    *,
    height: int = MAP_HEIGHT,
    revision: int | str = 0,
) -> go.Figure:
    """Per-model centroids of the fingerprint map (bars: ±1 standard deviation) over a faint cloud of all
    samples; one trace per model, with the same colour dropdown as map_figure.

    A centroid's customdata is [model], so selecting it selects all of that model's samples.
    """
    hover = design_hover(design)
    cents = frame.groupby("model", sort=False, observed=True).agg(
        x=("x", "mean"), y=("y", "mean"), sx=("x", "std"), sy=("y", "std"), n=("x", "size")).fillna(0.0)
    order = _model_order(cents.index, design)
    style = legend_styles(order, design, color_by)
    fig = go.Figure(go.Scattergl(
        x=frame["x"].to_numpy(np.float32), y=frame["y"].to_numpy(np.float32), mode="markers",
        marker=dict(color="#9CA3AF", size=3, opacity=0.15), hoverinfo="skip", showlegend=False, name="samples",
    ))
    for i, m in enumerate(order):
        c = cents.loc[m]
        color = style["color"][i]
        fig.add_trace(go.Scattergl(  # WebGL like the cloud, so the centroids are drawn over it, not under
            x=[c["x"]], y=[c["y"]], mode="markers+text", text=[plotly_label(m)], textposition="top center",
            error_x=dict(array=[c["sx"]], color=color, thickness=1.2, width=0),  # ±1 std of its samples
            error_y=dict(array=[c["sy"]], color=color, thickness=1.2, width=0),
            textfont=dict(size=10, color="#374151"), customdata=[[m]], **{k: style[k][i] for k in LEGEND_KEYS},
            marker=dict(color=color, size=15, line=dict(color="white", width=1.5),
                        symbol="diamond" if m == REAL else "circle"),
            hovertext=[f"<b>{plotly_label(m)}</b> · {int(c['n'])} samples<br>{hover.get(m, '')}"],
            hovertemplate="%{hovertext}<extra></extra>",
        ))
    menu = colour_menu(order, range(1, len(order) + 1), design, color_by,
                       colour_keys=("marker.color", "error_x.color", "error_y.color"))
    _map_layout(fig, color_by, height, menu, revision)
    return fig


def rows_of_points(points: Sequence[Mapping], frame: pd.DataFrame) -> np.ndarray:
    """Sorted frame rows of selected points: a sample's customdata[0] is its row, a centroid's its model.

    points: the "points" of a plotly selection event as Streamlit returns them.
    """
    rows, models = [], set()
    for p in points:
        data = p.get("customdata")
        if data is None:
            continue  # the background cloud of the centroid view carries none
        if isinstance(data, Mapping):  # a typed-array row reaches the server as {"0": row, "1": index}
            data = [data[k] for k in sorted(data, key=int)]
        first = data[0] if isinstance(data, (list, tuple)) else data
        if isinstance(first, str):
            models.add(first)
        else:
            rows.append(int(first))
    if models:
        rows.extend(np.flatnonzero(frame["model"].astype(str).isin(models)).tolist())
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    return rows[(rows >= 0) & (rows < len(frame))]


# ---- spectra -----------------------------------------------------------------------------------------


def frequencies(n: int) -> np.ndarray:
    """Spatial frequency (cycles per pixel) of each index of an fftshifted axis of length n (DC at n // 2)."""
    return (np.arange(n) - n // 2) / n


def color_range(arrays: Sequence[np.ndarray], diverging: bool) -> tuple[float, float]:
    """A shared colour range: symmetric about 0 for differences, else the 1st to 99th percentile."""
    values = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.zeros(1)
    if diverging:
        r = symmetric_range(values, 99.0)
        return -r, r
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _heatmap(z: np.ndarray, name: str, coloraxis: str, what: str) -> go.Heatmap:
    h, w = z.shape
    return go.Heatmap(
        z=np.asarray(z, np.float32), x=frequencies(w), y=frequencies(h), coloraxis=coloraxis,
        hovertemplate=(f"<b>{plotly_label(name)}</b><br>f<sub>x</sub> %{{x:.3f}}, f<sub>y</sub> %{{y:.3f}} cycles/px"
                       f"<br>{what} %{{z:.3g}}<extra></extra>"),
    )


def _coloraxis(lo: float, hi: float, diverging: bool, title: str) -> dict:
    return dict(colorscale=DIVERGING if diverging else SEQUENTIAL, cmin=lo, cmax=hi,
                colorbar=dict(title=dict(text=title, side="right"), thickness=12, len=0.9))


def spectrum_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]],
    *,
    diverging: bool,
    colorbar_title: str,
    max_cols: int = 8,
    cell_px: int = 120,
) -> go.Figure:
    """Spectra as heatmaps, one row per level (rows: (level, [(model, H x W spectrum), ...])), shared colours.

    A level with more than max_cols models continues on the next row.
    """
    lines: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    for level, cells in rows:
        cells = list(cells)
        for start in range(0, max(len(cells), 1), max_cols):
            lines.append((level if start == 0 else "", cells[start:start + max_cols]))
    n_rows = max(len(lines), 1)
    n_cols = max([len(c) for _, c in lines] + [1])
    titles = [(plotly_label(c[i][0]) if i < len(c) else "") for _, c in lines for i in range(n_cols)]
    gap_px = 34
    fig = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=titles,
        horizontal_spacing=min(12 / (n_cols * cell_px), 0.2 / n_cols) if n_cols > 1 else 0,
        vertical_spacing=gap_px / (n_rows * (cell_px + gap_px)) if n_rows > 1 else 0,
    )
    fig.update_annotations(font_size=10)
    lo, hi = color_range([z for _, c in lines for _, z in c], diverging)
    what = "Δ log power" if diverging else "log power"
    for r, (level, cells) in enumerate(lines, start=1):
        for c, (name, z) in enumerate(cells, start=1):
            fig.add_trace(_heatmap(z, name, "coloraxis", what), row=r, col=c)
        fig.update_yaxes(title=dict(text=f"<b>{plotly_label(level)}</b>" if level else "", font=dict(size=12)),
                         row=r, col=1)
        for c in range(len(cells) + 1, n_cols + 1):  # empty cells: no axes
            fig.update_xaxes(visible=False, row=r, col=c)
            fig.update_yaxes(visible=False, row=r, col=c)
    fig.update_xaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False)
    for r in range(1, n_rows + 1):  # square cells
        for c in range(1, n_cols + 1):
            sub = fig.get_subplot(r, c)
            sub.yaxis.scaleanchor = sub.yaxis.anchor
    fig.update_layout(
        coloraxis=_coloraxis(lo, hi, diverging, colorbar_title),
        height=n_rows * (cell_px + gap_px) + 30, width=n_cols * (cell_px + 12) + 190,
        margin=dict(l=110, r=10, t=30, b=10),
    )
    return fig


def profile_figure(
    curves: Sequence[tuple[str, str, np.ndarray]],
    *,
    reference: np.ndarray | None = None,
    size: int,
    ylabel: str,
    legend_title: str = "",
    height: int = 420,
) -> go.Figure:
    """Azimuthal profiles (curves: (model, level, profile)) coloured by level, the real control dashed.

    The profile's index is the ring radius in frequency bins; the x axis shows it in cycles per pixel.
    """
    colors = level_colors([lv for _, lv, _ in curves])
    fig, shown = go.Figure(), set()
    for model, level, prof in curves:
        prof = np.asarray(prof, np.float64)
        fig.add_trace(go.Scatter(
            x=np.arange(len(prof)) / size, y=prof, mode="lines", line=dict(color=colors[level], width=1.6),
            name=plotly_label(level), legendgroup=level, showlegend=level not in shown,
            hovertemplate=f"<b>{plotly_label(model)}</b> ({plotly_label(level)})<br>f %{{x:.3f}} cycles/px: "
                          "%{y:.3g}<extra></extra>",
        ))
        shown.add(level)
    if reference is not None:
        ref = np.asarray(reference, np.float64)
        fig.add_trace(go.Scatter(
            x=np.arange(len(ref)) / size, y=ref, mode="lines", name="real control",
            line=dict(color="#111827", width=2.4, dash="dash"),
            hovertemplate="<b>real control</b><br>f %{x:.3f} cycles/px: %{y:.3g}<extra></extra>",
        ))
    fig.add_vline(x=0.5, line=dict(color="#9CA3AF", width=1, dash="dot"), annotation_text="Nyquist",
                  annotation_position="top left", annotation_font_size=10)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=20, b=10), hovermode="closest",
                      legend=dict(title=dict(text=plotly_label(legend_title))))
    fig.update_xaxes(title_text="spatial frequency (cycles per pixel, radius from DC)")
    fig.update_yaxes(title_text=ylabel)
    return fig


def pair_figure(
    a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, *, diverging: bool, colorbar_title: str
) -> go.Figure:
    """Two spectra side by side (shared colours) and their difference A − B (diverging, centred on 0)."""
    titles = [plotly_label(name_a), plotly_label(name_b), f"{plotly_label(name_a)} − {plotly_label(name_b)}"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.12)
    fig.update_annotations(font_size=11)
    lo, hi = color_range([a, b], diverging)
    what = "Δ log power" if diverging else "log power"
    fig.add_trace(_heatmap(a, name_a, "coloraxis", what), row=1, col=1)
    fig.add_trace(_heatmap(b, name_b, "coloraxis", what), row=1, col=2)
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    r = symmetric_range(d, 99.0)
    fig.add_trace(_heatmap(d, f"{name_a} − {name_b}", "coloraxis2", "difference"), row=1, col=3)
    left = _coloraxis(lo, hi, diverging, colorbar_title)
    left["colorbar"].update(x=fig.layout.xaxis2.domain[1] + 0.01, xanchor="left", len=0.8)  # just right of B
    right = _coloraxis(-r, r, True, "A − B")
    right["colorbar"].update(len=0.8)
    fig.update_layout(coloraxis=left, coloraxis2=right, height=340, margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, constrain="domain")
    for c in range(1, 4):
        sub = fig.get_subplot(1, c)
        sub.yaxis.scaleanchor = sub.yaxis.anchor
    return fig


# ---- design choices ----------------------------------------------------------------------------------


def space_factor_frame(values: Mapping[str, Mapping[str, float | None]]) -> pd.DataFrame:
    """{space: {factor: value}} as a spaces x factors table (NaN where a factor was not measured)."""
    df = pd.DataFrame({sp: dict(v) for sp, v in values.items()}).T
    return df.apply(pd.to_numeric, errors="coerce").astype(float).rename_axis("space")


def _pct(v: float) -> str:
    return f"{v:.0%}"


def confounded(design: pd.DataFrame, factors: Sequence[str]) -> list[list[str]]:
    """Groups of factors that split the generative models identically (their measures cannot differ)."""
    models = design[design["model"] != REAL]
    seen: dict[tuple, list[str]] = {}
    for f in factors:
        if f in models:
            codes = tuple(pd.factorize(models[f].astype(str))[0])  # the partition, whatever the level names
            seen.setdefault(codes, []).append(f)
    return [g for g in seen.values() if len(g) > 1]


def design_reading(
    nmi: Mapping[str, Mapping[str, float | None]],
    lomo: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    silhouette: Mapping[str, Mapping[str, float | None]],
    paper: Mapping[str, Mapping[str, float]] = PAPER_TABLE5,
    *,
    design: pd.DataFrame | None = None,
    margin: float = 0.05,
) -> list[str]:
    """A few plain sentences on what stands out in the numbers (markdown), nothing hard-coded.

    lomo: {space: {factor: {accuracy, chance[, folds]}}}, the folds as in metrics["levels"][level]["lodo"];
    design: the design table, to flag factors that split the models identically.
    """
    out = []
    if design is not None:
        for group in confounded(design, list(space_factor_frame(nmi).columns)):
            names = ", ".join(f"**{md(f)}**" for f in group)
            out.append(f"{names} divide the models into the same groups in this workspace, so their numbers "
                       "are the same and cannot be told apart; models that vary one without the others would.")
    table = space_factor_frame(nmi)
    if table.size and np.isfinite(table.to_numpy(float)).any():
        tops = []
        for sp, row in table.iterrows():
            row = row.dropna()
            if len(row):
                tops.append(f"**{md(row.idxmax())}** in {md(sp)} ({row.max():.2f})")
        mean = table.mean(axis=0, skipna=True).dropna().sort_values(ascending=False)
        text = (f"Clustering the fingerprints aligns best with **{md(mean.index[0])}** (mean NMI over spaces "
                f"{mean.iloc[0]:.2f})")
        if len(mean) > 1:
            text += f", then **{md(mean.index[1])}** ({mean.iloc[1]:.2f})"
        text += ". Highest NMI per space: " + "; ".join(tops) + "."
        out.append(text)
        ref = pd.DataFrame(paper).T.mean(axis=0).sort_values(ascending=False)
        shared = [f for f in mean.index if f in ref.index]
        if shared:
            both = ", ".join(f"{md(f)} {mean[f]:.2f} here vs {ref[f]:.2f}" for f in shared)
            out.append(f"The paper's Table 5 ranks **{ref.index[0]}** ({ref.iloc[0]:.2f}) and **{ref.index[1]}** "
                       f"({ref.iloc[1]:.2f}) first, averaged over its spaces. On the factors both measure: {both}.")
    above, at_chance, undefined, unseen = [], [], [], []
    factors = list(dict.fromkeys(f for sp in lomo.values() for f in sp))
    for f in factors:
        cells = [(sp, lomo[sp][f].get("accuracy"), lomo[sp][f].get("chance")) for sp in lomo if f in lomo[sp]]
        cells = [(sp, a, c) for sp, a, c in cells if a is not None and c is not None and np.isfinite(a) and np.isfinite(c)]
        if not cells:
            undefined.append(f)
            continue
        folds = [fold for sp in lomo if f in lomo[sp] for fold in lomo[sp][f].get("folds", [])]
        if folds and all(fold.get("unseen") for fold in folds):
            unseen.append(f)  # no held-out level occurs among the other designs: nothing could predict it
            continue
        sp, a, c = max(cells, key=lambda t: t[1] - t[2])
        if a > c + margin:
            above.append((a - c, f"**{md(f)}** in {md(sp)} ({_pct(a)} vs chance {_pct(c)})"))
        else:
            at_chance.append(f"**{md(f)}** (best {_pct(a)} in {md(sp)}, chance {_pct(c)})")
    if above:
        above.sort(reverse=True)
        out.append("Held-out designs are predicted above chance for " + "; ".join(t for _, t in above)
                   + " (best space per factor, by margin over chance).")
    if at_chance:
        out.append("No better than chance in any space: " + "; ".join(at_chance) + ".")
    if unseen:
        out.append("Cannot be predicted for a held-out design: " + ", ".join(f"**{md(f)}**" for f in unseen)
                   + " (every design has a level no other design shares, so the classifier never saw it).")
    if undefined:
        out.append("Not measurable by leaving one design out (too few designs per level): "
                   + ", ".join(f"**{md(f)}**" for f in undefined) + ".")
    sil = space_factor_frame(silhouette)
    if sil.size and np.isfinite(sil.to_numpy(float)).any():
        stacked = sil.stack().dropna()
        (sp, f), v = stacked.idxmax(), stacked.max()
        if v < 0.1:
            out.append(f"All silhouettes are below 0.1 (highest: {md(f)} in {md(sp)}, {v:.2f}): the levels of every "
                       "factor overlap in fingerprint space; the structure is a tendency, not separate clusters.")
        else:
            out.append(f"The clearest separation into groups (silhouette) is **{md(f)}** in {md(sp)} ({v:.2f}).")
    return out
