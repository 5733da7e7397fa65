"""Fingerprint map page: a UMAP of the fingerprints at the learned level (the design-blind attributor's features
of its test samples) or the raw level (every sample's artifact); select a region to see its samples."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import streamlit as st

from app import figures, figures_analysis, state

CHART_KEY = "map_chart"
SELECTION_KEY = "map_selection"  # session_state: {"where": path|stamp|space|level, "rows": [frame rows]} or None
LEVEL_KEY = "map_level"  # session_state: the fingerprint level of the map ("learned" or "raw")
REVISION_KEY = "map_revision"  # session_state: bumped by "Clear selection", so the chart is drawn afresh
GRID_MAX = 16


def selection_where(path: str, stamp: str, space: str, level: str) -> str:
    """What a selection's row ids refer to: one space's map at one level of one version of one workspace."""
    return f"{path}|{stamp}|{space}|{level}"


def remember_selection(path: str, stamp: str, space: str, level: str) -> None:
    """On a box or lasso selection (or its clearing): keep the selected rows, so recolouring keeps them."""
    event = st.session_state.get(CHART_KEY)
    points = event["selection"]["points"] if event else []
    rows = figures_analysis.rows_of_points(points, state.map_frame(path, stamp, space, level))
    where = selection_where(path, stamp, space, level)
    st.session_state[SELECTION_KEY] = {"where": where, "rows": rows.tolist()} if len(rows) else None


def clear_selection() -> None:
    # The chart keeps its own selection in the browser; only a new figure clears it there too.
    st.session_state[SELECTION_KEY] = None
    st.session_state[REVISION_KEY] = st.session_state.get(REVISION_KEY, 0) + 1


def current_selection(where: str, n_rows: int) -> np.ndarray:
    """The remembered selection of this map (empty if it was made on another)."""
    sel = st.session_state.get(SELECTION_KEY)
    if not sel or sel.get("where") != where:
        return np.zeros(0, dtype=np.int64)
    rows = np.asarray(sel["rows"], dtype=np.int64)
    return rows[(rows >= 0) & (rows < n_rows)]


LEVEL_HELP = ("**learned**: the penultimate features of a design-blind attributor (trained to tell the models apart, "
              "never shown a design label), for its test samples only. **raw**: every sample's artifact itself, "
              "which on small real sets carries much of the image content.")


def controls(analysis) -> tuple[str, str, str]:
    """Space, fingerprint level and view, in one row (the colouring is the chart's own dropdown: it needs no rerun)."""
    spaces = analysis.spaces
    c_space, c_level, c_view, _ = st.columns([2.2, 1.6, 2, 1.2], vertical_alignment="bottom")
    space = c_space.segmented_control("Space", spaces, default=spaces[0], key="map_space",
                                      help="Each space has its own nearest real images, artifacts and map.")
    space = space or spaces[0]
    levels = analysis.map_levels(space) or ["raw"]
    if st.session_state.get(LEVEL_KEY) not in levels:  # first visit, or a space without that level: learned first
        st.session_state[LEVEL_KEY] = levels[0]
    level = c_level.segmented_control("Level", levels, key=LEVEL_KEY, help=LEVEL_HELP)
    view = c_view.segmented_control("Show", ["samples", "model centroids"], default="samples", key="map_view",
                                    help="Every sample, or the mean map position of each model.")
    return space, level or levels[0], view or "samples"


def map_caption(analysis, level: str) -> str:
    """What the map is made of, at this level (markdown, no names from users in it)."""
    how = ("Drag a box, or pick the lasso in the chart's toolbar, to select samples; a new selection replaces the "
           "last, and *Clear selection* below the map (or a double click on it) removes it.")
    colour = ("*Colour by* (top left of the map) recolours by model or any design column; the held-out real images "
              "are grey.")
    if level == "learned":
        return ("The **learned** fingerprint: the penultimate features of a design-blind attributor of this space "
                "(trained on which model made an image, the real class included, never on a design label), "
                "standardised and reduced to 2-D with UMAP (seeded). Only the **test samples** are drawn: the "
                "attributor never trained on them. Its features cluster by model by construction, so read a design "
                f"grouping here against the Design choices page's null. {colour} {how}")
    pca = analysis.metrics.get("settings", {}).get("pca_components", 50)
    return (f"The **raw** fingerprint: every sample's artifact (sample minus its nearest real image), reduced to 2-D "
            f"with UMAP (seeded; PCA to {pca} dimensions first). Nearby points have similar artifacts; on small "
            f"real sets much of that is image content. {colour} {how}")


def purity_line(analysis, level: str, space: str) -> str:
    """The map's model purity beside its null and chance, or nothing when the analysis has none."""
    p = analysis.levels.get(level, {}).get("purity", {}).get(space) or {}
    if p.get("value") is None:
        return ""
    beside = [f"{what} {p[k]:.1%}" for k, what in (("null_p95", "95th percentile with the model labels shuffled over the points"),
                                                   ("chance", "chance")) if p.get(k) is not None]
    return (f" Purity: {p['value']:.1%} of each point's 10 nearest map neighbours come from its own model"
            + (f" ({', '.join(beside)})." if beside else "."))


def selection_panel(path: str, stamp: str, space: str, frame, rows: np.ndarray) -> None:
    """Counts per model, a CSV export of the selection, and a grid of some of its samples."""
    sel = frame.iloc[rows]
    counts = sel["model"].astype(str).value_counts()
    head, clear = st.columns([5, 1], vertical_alignment="bottom")
    head.subheader(f"Selection: {len(rows):,} samples from {len(counts)} model{'s' if len(counts) != 1 else ''}")
    clear.button("Clear selection", icon=":material/close:", on_click=clear_selection, width="stretch")
    c_grid, c_side = st.columns([3, 2], gap="large")
    with c_grid:
        k = min(GRID_MAX, len(rows))
        shown = st.slider("Samples shown", 1, k, min(8, k), key="map_k") if k > 1 else 1
        pick = np.sort(np.random.default_rng(0).choice(rows, size=shown, replace=False))  # a seeded draw
        picks = tuple((str(m), int(i)) for m, i in zip(frame["model"].to_numpy()[pick], frame["index"].to_numpy()[pick], strict=True))
        draw = state.selected_samples(path, stamp, picks, space)
        columns = state.grid_spaces(draw.artifacts)
        fig = figures.sample_grid(draw.samples, draw.nearest, {s: draw.artifacts.get(s) for s in columns},
                                  labels=list(draw.details["row"]), nearest_space=space,
                                  titles=state.artifact_titles(columns), colour=state.colour_mode(draw.samples, "map_colour"))
        st.plotly_chart(fig, width="content", key="map_grid", config={"displaylogo": False})
    with c_side:
        st.markdown("**Selected, per model**")
        st.dataframe(counts.rename_axis("model").reset_index(name="samples"), hide_index=True, width="stretch",
                     height=min(35 * len(counts) + 38, 300))
        st.download_button(
            "Download CSV", data=lambda: state.selection_table(path, space, frame, rows).to_csv(index=False),
            file_name=f"{Path(path).name}-{space}-selection.csv", mime="text/csv", icon=":material/download:",
            on_click="ignore", key="map_csv",
            help="Every selected sample: model, sample index, source file, map position, design choices, "
                 f"nearest real image and squared distance in the {space} space.",
        )
        st.markdown("**Samples in the grid**")
        st.caption(f"A seeded draw of {shown} of the {len(rows):,} selected samples, each beside its nearest real "
                   f"image in the {space} space and its RGB and FREQ artifacts (as on the Models page).")
        st.dataframe(draw.details, hide_index=True, width="stretch",
                     column_config={f"d² {space}": st.column_config.NumberColumn(format="%.4g")})


def main() -> None:
    path, stamp, analysis = state.analysis_page("Fingerprint map")
    if not analysis.spaces:
        st.warning("The analysis holds no fingerprint map: no space is fingerprinted for every model.")
        st.stop()
    design = state.design_table(path, stamp)
    caption = st.empty()  # filled once the level is known (the controls come below it)
    space, level, view = controls(analysis)
    caption.caption(map_caption(analysis, level))
    frame = state.map_frame(path, stamp, space, level)
    where = selection_where(path, stamp, space, level)
    rows = current_selection(where, len(frame))
    # The figure depends on neither the selection nor the colouring, so selecting reruns the page without
    # redrawing the map (the browser keeps the selection and the chosen colouring). Another level or space is
    # another map: its own revision, so no zoom of the last one is kept.
    draw = figures_analysis.map_figure if view == "samples" else figures_analysis.centroid_figure
    fig = draw(frame, design, "model", revision=f"{level}-{space}-{st.session_state.get(REVISION_KEY, 0)}")
    st.plotly_chart(
        fig, key=CHART_KEY, on_select=partial(remember_selection, path, stamp, space, level),
        selection_mode=("box", "lasso"), config={"displaylogo": False}, width="stretch",
    )
    what = "held-out test samples" if level == "learned" else "samples"
    st.caption(f"{len(frame):,} {what} from {frame['model'].nunique()} sets in the {space} space, {level} level."
               f"{purity_line(analysis, level, space)} "
               "Hover a point for its model and design choices; click a legend entry to hide that group.")
    if len(rows):
        selection_panel(path, stamp, space, frame, rows)
    else:
        st.info("Select a region of the map (box or lasso) to see its samples beside their nearest real "
                "images and artifacts, and to export the selection as CSV.", icon=":material/select:")


main()
