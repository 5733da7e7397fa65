"""Plotly figures of workspace data: pure functions of numpy arrays, no streamlit, no torch."""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from app.text import plotly_label

DIVERGING = "RdBu_r"  # blue below zero, white at zero, red above
HEATMAP_MAX_PIXELS = 64 * 64  # above this, artifacts go out as colour-mapped PNGs (payload stays small)
CELL_PX = 112  # width of one grid cell on screen
GAP_PX, ROW_GAP_PX = 6, 10  # between columns, between rows
LEFT_PX, BOTTOM_PX = 34, 6  # room for the row labels; below the last row
COLORBAR_PX = 50  # the colour bars (title, bar, ticks) above the column titles


def png_data_uri(image: np.ndarray) -> str:
    """A PNG data URI of one uint8 image, C x H x W with C = 1 or 3."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected uint8 C x H x W with C in (1, 3), got {image.dtype} {image.shape}")
    pil = Image.fromarray(image[0]) if image.shape[0] == 1 else Image.fromarray(image.transpose(1, 2, 0))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def channel_mean(artifacts: np.ndarray) -> np.ndarray:
    """float32 N x H x W: the signed mean over channels of N x C x H x W artifacts."""
    return np.asarray(artifacts, dtype=np.float32).mean(axis=1)


def symmetric_range(values: np.ndarray, percentile: float = 99.5) -> float:
    """A robust half-width r for a colour scale [-r, r] centred on 0 (a few outliers do not wash it out)."""
    mag = np.abs(np.asarray(values, dtype=np.float32))
    mag = mag[np.isfinite(mag)]
    if mag.size == 0:
        return 1.0
    r = float(np.percentile(mag, percentile))
    return r if r > 0 else (float(mag.max()) or 1.0)


@lru_cache(maxsize=8)
def _lut(colorscale: str) -> np.ndarray:
    """uint8 256 x 3 lookup table sampled from a plotly colour scale."""
    colors = sample_colorscale(colorscale, np.linspace(0, 1, 256), colortype="tuple")
    lut = (np.asarray(colors) * 255).round().astype(np.uint8)
    lut.setflags(write=False)  # shared by every caller through the cache
    return lut


def colormapped(values: np.ndarray, half_range: float, colorscale: str = DIVERGING) -> np.ndarray:
    """uint8 3 x H x W: an H x W array coloured on [-half_range, half_range] (clipped)."""
    t = np.clip((np.asarray(values, np.float32) / half_range + 1) / 2, 0, 1)
    rgb = _lut(colorscale)[np.nan_to_num(t * 255).round().astype(np.uint8)]
    return rgb.transpose(2, 0, 1)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def signed_rgb(artifact: np.ndarray, half_range: float) -> np.ndarray:
    """uint8 3 x H x W: a colour artifact as an image, each channel on [-half_range, half_range] (grey = 0)."""
    t = np.clip((np.asarray(artifact, np.float32) / half_range + 1) / 2, 0, 1)
    return np.nan_to_num(t * 255).round().astype(np.uint8)


def sample_grid(
    samples: np.ndarray,
    nearest: np.ndarray,
    artifacts: dict[str, np.ndarray | None],
    *,
    labels: list[str] | None = None,
    nearest_space: str = "rgb",
    titles: dict[str, str] | None = None,
    colour: str = "mean",
) -> go.Figure:
    """One row per sample; columns: the sample, its nearest real image, then its artifact in each space.

    artifacts: space -> float K x C x H x W (None when the workspace lacks that space), in column
    order. colour="mean" shows a colour artifact as its signed mean over channels on a diverging
    scale centred on 0 (symmetric range shared by the column, colour bar above it); colour="signed"
    shows it as a signed RGB image (each channel on the column's range, grey = 0), so a channel's
    own trace stays visible.
    """
    samples, nearest = np.asarray(samples), np.asarray(nearest)
    if samples.ndim != 4 or samples.shape != nearest.shape or len(samples) == 0:
        raise ValueError(f"samples {samples.shape} and nearest {nearest.shape} must both be K x C x H x W, K > 0")
    if colour not in ("mean", "signed"):
        raise ValueError(f"colour={colour!r}: expected 'mean' or 'signed'")
    k, c, h, w = samples.shape
    labels = labels if labels is not None else [f"#{i}" for i in range(k)]
    if len(labels) != k:
        raise ValueError(f"{len(labels)} labels for {k} samples")
    labels = [plotly_label(lb) for lb in labels]  # text, whatever they hold
    as_rgb = colour == "signed" and c == 3
    how = "<br>signed RGB, grey = 0" if as_rgb else ("<br>mean of 3 channels" if c == 3 else "")
    titles = titles or {}
    columns = list(artifacts)
    n_cols = 2 + len(columns)
    head = ["sample", f"nearest real x*<br>({plotly_label(nearest_space)} space)"]
    head += [f"{plotly_label(s.upper())} artifact<br>{titles.get(s, 'φ(x) − φ(x*)')}{how}" for s in columns]
    # exact pixel geometry, so cells are square-pixelled and evenly spaced
    cell_w, cell_h = CELL_PX, max(24, round(CELL_PX * h / w))
    plot_w, plot_h = n_cols * cell_w + (n_cols - 1) * GAP_PX, k * cell_h + (k - 1) * ROW_GAP_PX
    top = COLORBAR_PX + (58 if c == 3 else 44)  # colour bars, then two or three lines of column titles
    fig = make_subplots(
        rows=k, cols=n_cols, column_titles=head,
        horizontal_spacing=GAP_PX / plot_w, vertical_spacing=ROW_GAP_PX / plot_h if k > 1 else 0,
    )
    fig.update_annotations(font_size=12)  # the column titles
    for r in range(k):
        for col, image, what in ((1, samples[r], "sample"), (2, nearest[r], "nearest real image of")):
            fig.add_trace(
                go.Image(source=png_data_uri(image), hovertemplate=f"{what} {labels[r]}<br>x %{{x}}, y %{{y}}<extra></extra>"),
                row=r + 1, col=col,
            )

    for j, space in enumerate(columns):
        col, arts, name = 3 + j, artifacts[space], plotly_label(space.upper())
        axis = "coloraxis" if j == 0 else f"coloraxis{j + 1}"
        if arts is None:
            fig.add_annotation(
                text=f"no {name}<br>fingerprint in<br>this workspace", showarrow=False,
                font=dict(size=11, color="#6B7280"), xref="x domain", yref="y domain", x=0.5, y=0.5, row=1, col=col,
            )
            continue
        full = np.asarray(arts, dtype=np.float32).reshape(k, c, h, w)
        a = full if as_rgb else channel_mean(full)
        half = symmetric_range(a)
        small = h * w <= HEATMAP_MAX_PIXELS and not as_rgb
        for r in range(k):
            if small:  # heatmaps keep the exact value under the cursor
                trace = go.Heatmap(
                    z=a[r], coloraxis=axis,
                    hovertemplate=f"{name} artifact of {labels[r]}<br>x %{{x}}, y %{{y}}: %{{z:.4g}}<extra></extra>",
                )
            else:
                image = signed_rgb(a[r], half) if as_rgb else colormapped(a[r], half)
                trace = go.Image(
                    source=png_data_uri(image),
                    hovertemplate=f"{name} artifact of {labels[r]}<br>x %{{x}}, y %{{y}}<extra></extra>",
                )
            fig.add_trace(trace, row=r + 1, col=col)
        if as_rgb:  # no single colour scale: the range goes in a note above the column
            x0, x1 = fig.get_subplot(1, col).xaxis.domain
            fig.add_annotation(text=f"each channel ±{_fmt(half)}", showarrow=False, font=dict(size=11),
                               xref="paper", yref="paper", x=(x0 + x1) / 2, y=1, yanchor="bottom",
                               yshift=top - COLORBAR_PX + 14)
            continue
        if not small:  # PNG cells carry no values: an invisible marker trace gives the column its colour bar
            fig.add_trace(
                go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                           marker=dict(coloraxis=axis, color=[0.0])),
                row=1, col=col,
            )
        x0, x1 = fig.get_subplot(1, col).xaxis.domain
        fig.update_layout({axis: dict(
            colorscale=DIVERGING, cmin=-half, cmax=half,
            colorbar=dict(
                orientation="h", x=(x0 + x1) / 2, xanchor="center", lenmode="pixels", len=cell_w,
                yref="container", y=1 - 4 / (plot_h + top + BOTTOM_PX), yanchor="top", thickness=9,
                title=dict(text=f"range ±{_fmt(half)}", side="top", font=dict(size=11)),
                tickvals=[-half, 0, half], ticktext=[f"−{_fmt(half)}", "0", f"+{_fmt(half)}"],
                tickfont=dict(size=10), outlinewidth=0,
            ),
        )})

    for r in range(k):
        fig.update_yaxes(title=dict(text=labels[r], font=dict(size=11), standoff=2), row=r + 1, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, ticks="", constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, ticks="", autorange="reversed",
                     constrain="domain")
    for r in range(k):  # square pixels, should the chart be drawn narrower than asked
        for col in range(1, n_cols + 1):
            sub = fig.get_subplot(r + 1, col)
            sub.yaxis.scaleanchor = sub.yaxis.anchor
    fig.update_layout(
        width=plot_w + LEFT_PX + 4, height=plot_h + top + BOTTOM_PX,
        margin=dict(l=LEFT_PX, r=4, t=top, b=BOTTOM_PX, autoexpand=False), showlegend=False,
        plot_bgcolor="rgba(0,0,0,0)", paper_bgcolor="rgba(0,0,0,0)",
    )
    return fig
