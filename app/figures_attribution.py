"""Figures of the Attribute and Benchmark pages: pure functions, data in, plotly figure (or image, table,
text) out; no streamlit, no torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app import figures
from app import figures_analysis as fa
from app.text import md, plotly_label
from fingerprint_core.attribution.sets import SET_SIZES

REAL = "real"
VERDICT_COLORS = {"known": "#2563EB", "unknown": "#D97706", "real": "#059669"}
VERDICTS = tuple(VERDICT_COLORS)
TILE_PX = 128  # least on-screen size of the image tiles of a card (enlarged by a whole factor)
FONT = dict(size=12)

# ---- one attributed image -----------------------------------------------------------------------------------


def pixel_tile(image: np.ndarray, px: int = TILE_PX) -> np.ndarray:
    """uint8 H' x W' (grey) or H' x W' x 3: an H x W x C image enlarged by a whole factor, pixels kept crisp."""
    a = np.asarray(image)
    a = a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a
    f = max(1, px // max(a.shape[:2]))
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def chw_to_hwc(image: np.ndarray) -> np.ndarray:
    """H x W x C from C x H x W."""
    return np.asarray(image).transpose(1, 2, 0)


def artifact_tile(image: np.ndarray, nearest: np.ndarray, px: int = TILE_PX) -> tuple[np.ndarray, float]:
    """(uint8 H' x W' x 3, r): the RGB artifact x - x* of C x H x W images (channel mean, pixels in [0, 1])
    on a diverging scale [-r, r], blue below zero, red above."""
    x, x_star = np.asarray(image, np.float32) / 255, np.asarray(nearest, np.float32) / 255
    a = figures.channel_mean((x - x_star)[None])[0]
    half = figures.symmetric_range(a)
    return pixel_tile(chw_to_hwc(figures.colormapped(a, half)), px), half


def top_models_figure(top: Sequence[Mapping], *, verdict: str = "known", height: int | None = None) -> go.Figure:
    """The most probable models as horizontal bars, most probable on top; the first is coloured by the verdict."""
    models = [plotly_label(t["model"]) for t in top][::-1]
    p = [float(t["p"]) for t in top][::-1]
    first = VERDICT_COLORS.get(verdict, VERDICT_COLORS["known"])
    colors = ["#CBD5E1"] * (len(p) - 1) + [first] if p else []
    fig = go.Figure(go.Bar(
        x=p, y=models, orientation="h", marker_color=colors, text=[f"{v:.2f}" for v in p], textposition="outside",
        cliponaxis=False, hovertemplate="%{y}: p = %{x:.4f}<extra></extra>",
    ))
    fig.update_layout(
        height=height or 44 + 26 * max(len(p), 1), margin=dict(l=8, r=36, t=26, b=8), font=FONT, bargap=0.3,
        title=dict(text="top models (probability)", font=dict(size=12), x=0, xanchor="left", y=0.98),
        plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)", showlegend=False,
    )
    fig.update_xaxes(range=[0, 1.0], showgrid=True, gridcolor="#EEF0F3", tickformat=".1f", fixedrange=True)
    fig.update_yaxes(automargin=True, fixedrange=True)
    return fig


def verdict_line(r, decision) -> str:
    """One line on why the verdict is what it is, in the order the decisions are taken (markdown)."""
    region = "inside" if r.verdict == "real" else "checked against"
    real = (f"p(real) {r.p_real:.3f} vs threshold {decision.real_threshold:.3g} (with the real region, "
            f"{region} it, they keep {decision.measured.get('val_real_kept', float('nan')):.0%} of real validation images)")
    if r.verdict == "real":
        return f"{real}: it looks real."
    open_set = (f"open-set score {r.open_set_score:.3g} vs threshold {decision.unknown.threshold:.3g} "
                f"({decision.unknown.kind}; {decision.unknown.accept:.0%} of known generated validation images stay under)")
    if r.verdict == "unknown":
        return (f"Not real ({real}); {open_set}: unlike every known model, so probably from a model not in this "
                f"workspace (the closest guess was {md(r.top[0]['model'])}).")
    return f"Not real ({real}); {open_set}: it looks like the known models, and {md(r.model or '')} is the most probable."


# ---- a batch ----------------------------------------------------------------------------------------------


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    """Images per verdict, every verdict present (zero when none)."""
    counts = table["verdict"].value_counts() if len(table) else pd.Series(dtype=int)
    return {v: int(counts.get(v, 0)) for v in VERDICTS}


def batch_figure(table: pd.DataFrame) -> go.Figure:
    """Images per most probable model, stacked by verdict (horizontal bars, the most frequent on top)."""
    counts = table.groupby(["model", "verdict"]).size().unstack(fill_value=0) if len(table) else pd.DataFrame()
    order = counts.sum(axis=1).sort_values(ascending=True).index.tolist() if len(counts) else []
    fig = go.Figure()
    for v in VERDICTS:
        if v in counts:
            fig.add_trace(go.Bar(
                y=[plotly_label(m) for m in order], x=counts.loc[order, v].tolist(), orientation="h", name=v,
                marker_color=VERDICT_COLORS[v],
                hovertemplate=f"%{{y}}: %{{x}} image(s), verdict {v}<extra></extra>",
            ))
    fig.update_layout(
        barmode="stack", height=70 + 30 * max(len(order), 1), margin=dict(l=8, r=8, t=30, b=8), font=FONT,
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right", traceorder="normal",
                    title=dict(text="verdict", side="left")),
        plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)",
    )
    fig.update_xaxes(showgrid=True, gridcolor="#EEF0F3", dtick=_dtick(counts), fixedrange=True)
    fig.update_yaxes(automargin=True, fixedrange=True)
    return fig


def _dtick(counts: pd.DataFrame) -> float | None:
    """Whole-number ticks for small counts (plotly would draw 0.5 steps)."""
    top = int(counts.sum(axis=1).max()) if len(counts) else 0
    return 1 if top <= 8 else None


def upload_map_figure(frame: pd.DataFrame, design: pd.DataFrame, placed: pd.DataFrame) -> go.Figure:
    """The fingerprint map (every sample, coloured by model) with the uploads on top as outlined stars.

    placed: one row per upload with file, x, y, model (most probable), verdict.
    """
    fig = fa.map_figure(frame, design, "model")
    fig.update_traces(marker_opacity=0.3, selector=dict(type="scattergl"))  # the samples step back, the stars stand out
    for v in VERDICTS:
        rows = placed[placed["verdict"] == v]
        if not len(rows):
            continue
        fig.add_trace(go.Scatter(
            x=rows["x"], y=rows["y"], mode="markers", name=f"upload: {v}",
            marker=dict(symbol="star", size=19, color=VERDICT_COLORS[v], line=dict(color="black", width=1.2)),
            customdata=np.column_stack([rows["file"].map(plotly_label), rows["model"].map(plotly_label)]),
            hovertemplate="<b>%{customdata[0]}</b><br>verdict " + v + ", most probable %{customdata[1]}<extra></extra>",
        ))
    fig.update_layout(dragmode="zoom", height=560)
    return fig


# ---- the benchmark ------------------------------------------------------------------------------------------

PROTOCOLS = {  # protocol -> title (the letters of docs/baselines.md)
    "closed": "a · closed set", "twins": "b · twins", "robust": "c · robustness",
    "lodo": "d · leave one design out", "openset": "e · open set", "fisher": "f · Fisher ratio",
    "foreign": "g · foreign set",
}
METRICS = {"accuracy": "accuracy", "clean": "clean",
           "jpeg50": "JPEG 50", "jpeg75": "JPEG 75", "jpeg90": "JPEG 90", "down2": "resize 0.5", "noise2": "noise 2/255",
           "auroc": "AUROC", "tpr_calibrated": "TPR", "fpr_calibrated": "FPR", "fdr": "FDR",
           "called_real": "called real", "real_kept": "real kept",
           **{f"set_auroc_{n}": f"sets AUROC n={n}" for n in SET_SIZES},
           **{f"set_right_{n}": f"sets right model n={n}" for n in SET_SIZES}}
LOWER_IS_BETTER = {("openset", "fpr_calibrated"), ("foreign", "called_real")}
MANIFPT_COLORS = ("#1E3A8A", "#1D4ED8", "#3B82F6", "#60A5FA", "#93C5FD")  # ManiFPT: blues
BASELINE_COLORS = ("#B45309", "#EA580C", "#F59E0B", "#A16207", "#BE123C", "#78716C", "#65A30D", "#7C3AED")


def is_manifpt(method: str) -> bool:
    return str(method).startswith("manifpt-")


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """ManiFPT's attributors in blues (fused darkest), the baselines in warm colours."""
    ours = sorted([m for m in methods if is_manifpt(m)], key=lambda m: (m != "manifpt-fused", m))
    theirs = [m for m in methods if not is_manifpt(m)]
    out = {m: MANIFPT_COLORS[i % len(MANIFPT_COLORS)] for i, m in enumerate(ours)}
    out.update({m: BASELINE_COLORS[i % len(BASELINE_COLORS)] for i, m in enumerate(theirs)})
    return out


def methods_of(summary: pd.DataFrame) -> list[str]:
    """The methods in table order: the baselines as the run listed them, then ManiFPT's."""
    names = list(dict.fromkeys(summary["method"])) if len(summary) else []
    return [m for m in names if not is_manifpt(m)] + [m for m in names if is_manifpt(m)]


def _rows(summary: pd.DataFrame, protocol: str, metric: str) -> pd.DataFrame:
    return summary[(summary["protocol"] == protocol) & (summary["metric"] == metric)]


def metrics_of(summary: pd.DataFrame, protocol: str) -> list[str]:
    """The measured metrics of a protocol (chance rows aside), in a fixed order."""
    found = [m for m in dict.fromkeys(summary.loc[summary["protocol"] == protocol, "metric"])
             if m != "chance" and not str(m).endswith(" chance")]
    fixed = [m for m in METRICS if m in found]
    return fixed + [m for m in found if m not in fixed]  # lodo: the design factors, as found


def chance(summary: pd.DataFrame, protocol: str, metric: str) -> float | None:
    """The chance level of a (protocol, metric), or None where there is none (TPR, FPR, Fisher ratio)."""
    if protocol == "openset":
        return 0.5 if metric == "auroc" else None
    name = {"closed": "chance", "twins": "chance", "robust": "chance"}.get(protocol, f"{metric} chance")
    rows = _rows(summary, "closed" if protocol == "robust" else protocol, name)
    return float(rows["mean"].iloc[0]) if len(rows) and protocol != "fisher" else None


def _fmt(protocol: str, v: float, digits: int = 3) -> str:
    return f"{v:.{digits}g}" if protocol == "fisher" else f"{v:.{digits}f}"


def bench_table(summary: pd.DataFrame, digits: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(methods x protocol-metric cells as "mean ± std" with a last row of chance, and a mask of the best cells).

    digits: decimals shown (2 keeps a dozen columns on one screen; results.csv has every digit)."""
    methods = methods_of(summary)
    cols = [(p, m) for p in PROTOCOLS for m in metrics_of(summary, p)]
    headers = [f"{PROTOCOLS[p][0]} {METRICS.get(m, m)}" for p, m in cols]
    cells = pd.DataFrame("-", index=[*methods, "chance"], columns=headers)
    best = pd.DataFrame(False, index=cells.index, columns=headers)
    for (p, m), h in zip(cols, headers, strict=True):
        rows = _rows(summary, p, m).set_index("method")
        for method, r in rows.iterrows():
            if method in cells.index:
                cells.loc[method, h] = (_fmt(p, r["mean"], digits)
                                        + (f" ± {_fmt(p, r['std'], digits)}" if r["n"] > 1 else ""))
        if len(rows) > 1 and p != "fisher" and not _all_tie(rows):  # Fisher ratios of other spaces are not ranked
            lead = rows["mean"].min() if (p, m) in LOWER_IS_BETTER else rows["mean"].max()
            best.loc[[i for i in rows.index[np.isclose(rows["mean"], lead)] if i in best.index], h] = True
        c = chance(summary, p, m)
        cells.loc["chance", h] = f"{c:.{digits}f}" if c is not None else "-"
    return cells.rename_axis("method"), best


def bench_figure(summary: pd.DataFrame, protocol: str) -> go.Figure:
    """One protocol: a bar per method and metric (mean, error bar ± std), chance as a dashed mark per metric."""
    metrics = metrics_of(summary, protocol)
    if protocol == "robust":  # the clean accuracy first, for the drop to be seen
        metrics = ["clean", *metrics]
    methods = methods_of(summary)
    colors = method_colors(methods)
    labels = [METRICS.get(m, m) for m in metrics]
    fig = go.Figure()
    for method in methods:
        means, stds = [], []
        for m in metrics:
            rows = _rows(summary, "closed", "accuracy") if m == "clean" else _rows(summary, protocol, m)
            hit = rows[rows["method"] == method]
            means.append(float(hit["mean"].iloc[0]) if len(hit) else None)
            stds.append(float(hit["std"].iloc[0]) if len(hit) else None)
        fig.add_trace(go.Bar(
            x=[plotly_label(lb) for lb in labels], y=means, name=plotly_label(method), marker_color=colors[method],
            error_y=dict(type="data", array=stds, thickness=1.2, width=3, color="#374151"),
            hovertemplate=f"<b>{plotly_label(method)}</b><br>%{{x}}: %{{y:.3f}} ± %{{error_y.array:.3f}}<extra></extra>",
        ))
    for i, m in enumerate(metrics):
        c = chance(summary, protocol, "accuracy" if m == "clean" else m)
        if c is not None:  # a dashed segment across the metric's group of bars
            fig.add_shape(type="line", xref="x", yref="y", x0=i - 0.45, x1=i + 0.45, y0=c, y1=c,
                          line=dict(color="#111827", width=1.5, dash="dash"))
    if any(chance(summary, protocol, "accuracy" if m == "clean" else m) is not None for m in metrics):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="chance",
                                 line=dict(color="#111827", width=1.5, dash="dash")))
    bounded = protocol != "fisher"
    fig.update_layout(
        barmode="group", bargap=0.25, bargroupgap=0.05, height=340, font=FONT,
        title=dict(text=PROTOCOLS.get(protocol, protocol), x=0, xanchor="left", font=dict(size=14)),
        margin=dict(l=8, r=8, t=40, b=8), legend=dict(font=dict(size=11)),
        plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)",
        xaxis=dict(range=[-0.5, len(metrics) - 0.5], fixedrange=True),
    )
    fig.update_yaxes(range=[0, 1.05] if bounded else None, rangemode="tozero", showgrid=True, gridcolor="#EEF0F3",
                     title_text="FDR (higher: tighter classes)" if not bounded else "", fixedrange=True)
    return fig


# ---- a plain reading of the benchmark ---------------------------------------------------------------------


def _all_tie(rows: pd.DataFrame) -> bool:
    """Whether every method has the same mean (nobody leads)."""
    return bool(np.isclose(rows["mean"], rows["mean"].iloc[0]).all())


def _lead(rows: pd.DataFrame, lower: bool) -> pd.Series:
    return rows.loc[rows["mean"].idxmin() if lower else rows["mean"].idxmax()]


def metric_reading(summary: pd.DataFrame, protocol: str, metric: str, *, saturated: float = 0.98,
                   near_chance: float = 0.05) -> str | None:
    """One clause on a (protocol, metric): the best method, ManiFPT against the best baseline, saturation or chance."""
    rows = _rows(summary, protocol, metric).reset_index(drop=True)
    if rows.empty:
        return None
    lower = (protocol, metric) in LOWER_IS_BETTER
    c = chance(summary, protocol, metric)
    best = _lead(rows, lower)
    text = f"best **{md(best['method'])}** ({_fmt(protocol, best['mean'])})"
    if len(rows) > 1 and not lower and (rows["mean"] >= saturated).all():
        return f"every method reaches {rows['mean'].min():.2f} or more: saturated, it cannot tell them apart here"
    if len(rows) > 1 and _all_tie(rows):
        return f"every method scores {_fmt(protocol, best['mean'])}" + (f" (chance {c:.2f})" if c is not None else "")
    if c is not None and (rows["mean"] <= c + near_chance).all():
        where = "below" if best["mean"] < c - near_chance else "at"
        if len(rows) == 1:
            return f"**{md(best['method'])}** is {where} chance ({_fmt(protocol, best['mean'])}; chance {c:.2f})"
        return f"every method is {where} chance ({c:.2f}; best {md(best['method'])} {_fmt(protocol, best['mean'])})"
    ours, theirs = rows[rows["method"].map(is_manifpt)], rows[~rows["method"].map(is_manifpt)]
    if len(ours) and len(theirs):
        a, b = _lead(ours, lower), _lead(theirs, lower)
        gap = (b["mean"] - a["mean"]) if lower else (a["mean"] - b["mean"])
        spread = max(float(a["std"]), float(b["std"]))
        ma, mb = md(a["method"]), md(b["method"])
        if abs(gap) <= spread or abs(gap) < 0.005:
            text += f"; ManiFPT ({ma}) and the best baseline ({mb}) are within one std of each other"
        elif gap > 0:
            text += f"; ManiFPT ({ma}) leads the best baseline ({mb}) by {abs(gap):.3f}"
        else:
            text += f"; ManiFPT's best ({ma}, {_fmt(protocol, a['mean'])}) trails {mb} by {abs(gap):.3f}"
    if c is not None:
        text += f" (chance {c:.2f})"
    return text


def bench_reading(summary: pd.DataFrame) -> list[str]:
    """A few plain sentences on what the numbers say, per protocol (markdown); nothing hard-coded."""
    out = []
    for protocol, title in PROTOCOLS.items():
        if protocol == "fisher":
            continue  # feature spaces differ in dimension and scale: the ratio ranks seeds, not methods
        metrics = [m for m in metrics_of(summary, protocol) if not (protocol == "openset" and m != "auroc")]
        clauses = [(m, metric_reading(summary, protocol, m)) for m in metrics]
        clauses = [(m, t) for m, t in clauses if t]
        if not clauses:
            continue
        if len(clauses) == 1:
            out.append(f"**{title}** ({md(METRICS.get(clauses[0][0], clauses[0][0]))}): {clauses[0][1]}.")
        else:
            out.append(f"**{title}**: " + "; ".join(f"*{md(METRICS.get(m, m))}*: {t}" for m, t in clauses) + ".")
    wins = _win_count(summary)
    if wins:
        out.append(wins)
    return out


def _win_count(summary: pd.DataFrame) -> str | None:
    """How many of the ranked columns a ManiFPT attributor leads."""
    led, total = 0, 0
    for protocol in PROTOCOLS:
        if protocol == "fisher":
            continue
        for m in metrics_of(summary, protocol):
            rows = _rows(summary, protocol, m)
            ours = rows["method"].map(is_manifpt)
            if len(rows) < 2 or not ours.any() or ours.all() or _all_tie(rows):
                continue
            total += 1
            led += bool(is_manifpt(_lead(rows.reset_index(drop=True), (protocol, m) in LOWER_IS_BETTER)["method"]))
    if not total:
        return None
    return f"Over the {total} ranked columns of the table, a ManiFPT attributor is best in {led}."


# ---- calibration ------------------------------------------------------------------------------------------


def reliability_figure(bins: Sequence[Mapping], title: str) -> go.Figure:
    """Reliability diagram: accuracy per confidence bin (bars, with their counts) against the diagonal a
    calibrated attributor follows."""
    b = pd.DataFrame(list(bins))
    used = b[b["count"] > 0]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=(used["lo"] + used["hi"]) / 2, y=used["accuracy"], width=used["hi"] - used["lo"],
                         name="accuracy", marker_color="#2563EB", customdata=used[["count", "confidence"]],
                         hovertemplate="confidence %{customdata[1]:.3f}<br>accuracy %{y:.3f}<br>%{customdata[0]} images"
                                       "<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="calibrated", line={"dash": "dot", "color": "#6B7280"}))
    fig.update_layout(title=plotly_label(title), xaxis_title="confidence (top class probability)", yaxis_title="accuracy",
                      xaxis_range=[0, 1], yaxis_range=[0, 1], height=320, margin={"t": 40, "b": 40, "l": 50, "r": 10},
                      showlegend=False)
    return fig
