"""Models page: the design table, and samples beside their nearest real image and their artifacts."""

from __future__ import annotations

import shlex

import streamlit as st

from app import figures, state
from app.text import md, md_code
from fingerprint_core.workspace import Workspace

GRID_MAX = 16  # samples in the grid at most: the figure stays small and quick


def header(ws: Workspace) -> None:
    """Title and a one-line description of the workspace."""
    cfg, real = ws.config, ws.manifest.get("real", {})
    shape = "×".join(map(str, cfg.get("image_shape", []))) or "?"
    st.title("Models")
    st.caption(
        f"Workspace **{md(ws.path.name)}** · images {shape} (C×H×W) · real: {real.get('n_reference', 0)} reference "
        f"+ {real.get('n_heldout', 0)} held out · spaces {', '.join(ws.space_names()) or 'none'} · "
        f"updated {md(ws.manifest.get('updated', '?'))}"
    )


def design_table(path: str, stamp: str) -> None:
    """The design choices of every model with its sample count, skipped files and mean distances."""
    table = state.model_summary(path, stamp)
    distance_help = "Mean squared L2 distance from a sample to its nearest real image in the {} space{}."
    config = {
        "samples": st.column_config.NumberColumn("samples", help="Images in the workspace (real: held-out images)."),
        "skipped files": st.column_config.NumberColumn("skipped files", help="Files that could not be read."),
    }
    for col in table.columns:
        if col.startswith("mean d² "):
            space = col.removeprefix("mean d² ")
            unit = " (pixels in [0, 1])" if state.pixel_exact(space) else ""
            config[col] = st.column_config.NumberColumn(col, help=distance_help.format(space, unit), format="%.4g")
    st.dataframe(table, hide_index=True, column_config=config, width="stretch")


def skipped_files(ws: Workspace) -> None:
    """An expander listing every skipped input file and why, when there are any."""
    bad = ws.bad_files()
    if len(bad):
        with st.expander(f":material/warning: Skipped files ({len(bad)})"):
            st.dataframe(bad, hide_index=True, width="stretch")


def shuffle(key: str) -> None:
    """Next seed: a fresh draw of samples."""
    st.session_state[key] = st.session_state.get(key, 0) + 1


def sample_grid(ws: Workspace, path: str, stamp: str) -> None:
    """Controls, then the grid of samples, nearest real images and artifacts, with per-sample details."""
    st.subheader("Samples, nearest real images and artifacts")
    models = ws.model_names(include_real=True)
    if not models:
        st.warning("This workspace holds no model samples yet.")
        return
    spaces = state.image_spaces(ws.space_names())
    c_model, c_k, c_seed, c_shuffle, c_space = st.columns([3, 3, 1.6, 1.6, 2.2], vertical_alignment="bottom")
    model = c_model.selectbox("Model", models, format_func=state.model_label, key=f"model@{path}")  # plain text
    n = ws.n_images(model)
    if n == 0:
        st.warning(f"{md_code(model)} has no readable samples (see the skipped files above).")
        return
    cap = min(GRID_MAX, n)
    k = c_k.slider("Samples", 1, cap, min(8, cap), key="models_k") if cap > 1 else 1
    seed_key = "models_seed"
    seed = c_seed.number_input("Seed", min_value=0, value=0, step=1, key=seed_key,
                               help="The samples shown are a seeded draw: the same seed shows the same ones.")
    c_shuffle.button("Shuffle", icon=":material/shuffle:", on_click=shuffle, args=(seed_key,), width="stretch")
    if not spaces:
        st.warning("This workspace has no fingerprints in an image-shaped space (such as rgb or freq), so there are "
                   "no artifact images to show.")
        return
    nearest_space = c_space.radio(
        "Nearest real image in", spaces, horizontal=True, key="models_nearest_space",
        help="x* is searched separately in each space, so the nearest real image can differ.",
    )
    if not ws.has(model, nearest_space):
        st.warning(f"{md_code(model)} has no {nearest_space} fingerprint in this workspace.")
        return
    draw = state.sample_set(path, stamp, model, int(k), int(seed), nearest_space)
    columns = state.grid_spaces(ws.space_names())
    for s in columns:
        if s not in draw.artifacts:
            command = f"manifpt fingerprint DATA_ROOT -w {shlex.quote(str(ws.path))} --spaces rgb,freq"
            st.info(f"No {s.upper()} fingerprint for {md_code(model)} in this workspace; that column stays empty. "
                    f"Add it with {md_code(command)}.")
    fig = figures.sample_grid(
        draw.samples, draw.nearest, {s: draw.artifacts.get(s) for s in columns},
        labels=list(draw.details["sample"]), nearest_space=nearest_space,
        titles=state.artifact_titles(columns), colour=state.colour_mode(draw.samples, "models_colour"),
    )
    # the grid at its own pixel size, the details beside it (below it on a narrow screen)
    with st.container(horizontal=True, gap="large"):
        st.plotly_chart(fig, width="content", key="models_grid", config={"displaylogo": False})
        details = st.container(width="stretch")
    with details:
        st.markdown(f"**{md(state.model_label(model))}**: {k} of {n} samples, seed {seed}")
        config = {"file": st.column_config.TextColumn("file", width="medium")}
        for c in draw.details.columns:
            if c.startswith("x* "):
                config[c] = st.column_config.NumberColumn(c, help="Index of the nearest real image in the reference set.")
            elif c.startswith("d² "):
                config[c] = st.column_config.NumberColumn(
                    c, format="%.4g", help="Squared L2 distance to the nearest real image in this space.")
        st.dataframe(draw.details, hide_index=True, width="stretch", column_config=config)
        st.caption(
            "**x*** is the nearest real image (exact L2) in the reference set. The RGB artifact is x − x* "
            "in pixels scaled to [0, 1]; the FREQ artifact is the difference of log-magnitude spectra, "
            "shifted so the DC term sits at the centre. Both use a diverging scale centred on 0 (blue "
            "below, red above) whose symmetric range, above each column, is the 99.5th percentile of "
            "|artifact| over the samples shown. For colour images the artifact shown is the signed mean "
            "over the three channels."
        )


ws = state.require_workspace()
path = state.current_path()
stamp = state.stamp(path)
header(ws)
design_table(path, stamp)
skipped_files(ws)
sample_grid(ws, path, stamp)
