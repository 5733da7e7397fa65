"""Attribute page: drop images or a zip; per image, which model made it, its design choices, or unknown / real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import figures_attribution as fat
from app import state
from app import state_attribution as sa
from app.text import md, md_code
from fingerprint_core.attribution import predict, sets
from fingerprint_core.workspace import Workspace, WorkspaceError

UPLOAD_KEY = "attr_upload"
RESULTS_KEY = "attr_results"  # session_state: {"where", "by_file": {file id: Outcome}, "placed": {...}}
TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "zip"]
PAGE_SIZE = 8  # cards per page
ERRORS_SHOWN = 8  # more refused files than this go into one table
BADGE = {"known": "blue", "unknown": "orange", "real": "green"}


# ---- no attributor yet -------------------------------------------------------------------------------------


def train_here(path: str) -> None:
    """The "Train here" button: `manifpt train` as a background job, followed on the page (which then reruns)."""
    from app import jobs_view

    jobs_view.panel(path, "train", what="Training the attributors", label="Train here",
                    icon=":material/model_training:", key="attr_train",
                    help="Runs the same training in the background: every space the workspace has, at most 20 "
                         "epochs each. Minutes on a small workspace; on a CPU the demo takes the better part of an "
                         "hour. It goes on if you leave the page, and this page follows it when you come back.")


def announce_training(path: str) -> None:
    """Above the uploader: a training job that still runs (the attributors it finished already answer), or once
    after this session followed it to its end, that it finished."""
    from app import jobs_view

    jobs_view.announce(path, "train", "The attributors are trained", what="Training the attributors")


def no_attributor(path: str) -> None:
    """Say that the workspace has no trained attributor, how to train one, and stop the page."""
    st.info(f"The workspace **{md(Path(path).name)}** has no trained attributor yet, so it cannot attribute images. "
            "Train one (a network per space that reads artifacts, plus the open-set rule) with:",
            icon=":material/info:")
    st.code(sa.train_command(path), language="bash")
    train_here(path)
    st.stop()


# ---- the batch ---------------------------------------------------------------------------------------------


def header(ws: Workspace, kind: str, entry: dict) -> None:
    """Title and one line on the attributor that answers and the order of its decisions."""
    st.title("Attribute")
    test = entry.get("test", {}).get("model")
    acc = f" (test accuracy {test:.1%} on the model head)" if test is not None else ""
    st.caption(
        f"Which model made these images? Each image is converted to this workspace's shape, its nearest real image "
        f"is found in each space and its artifact (image minus nearest real) read by the **{kind}** attributor of "
        f"**{md(ws.path.name)}**{acc}. Three decisions, in order, each with a threshold set on validation images "
        "only: *real* when the calibrated p(real) is high and the image lies in the real images' own region; else "
        "*unknown* when the open-set score is above what 95% of known models' validation images stay under; "
        "else the most probable known model."
    )


def caps_caption(ws: Workspace, padded_from: tuple[int, int] | None) -> None:
    """The upload caps, and what happens to images of another shape."""
    lim = sa.LIMITS
    st.caption(
        f"Up to {sa.MAX_IMAGES} images at once · {sa.UPLOAD_MB} MB per uploaded file · an image at most "
        f"{lim.max_file_bytes // 2**20} MB and {lim.max_pixels / 1e6:.0f} megapixels · a zip at most "
        f"{lim.max_members:,} entries and {lim.max_archive_bytes // 2**20} MB unpacked, no nested archives · "
        f"at most {lim.max_decoded_bytes // 2**20} MB of decoded pixels in all (`MANIFPT_MAX_DECODED_MB`). "
        "Files are read in memory and never written to the server's disk."
    )
    c, h, w = (int(v) for v in ws.config["image_shape"])
    pad = f" ({padded_from[1]}×{padded_from[0]} is zero-padded, as the reference images are)" if padded_from else ""
    other = "colour is converted to grayscale" if c == 1 else "grayscale is repeated to three channels"
    st.caption(f"This workspace's images are {w}×{h} {'grayscale' if c == 1 else 'colour'}: other sizes are "
               f"resized{pad} and {other}, which can erase the traces the attributor reads.")


def load_attributor(path: str, stamp: str):
    """The cached attributor; a clear message (and a stopped page) when it cannot be loaded."""
    try:
        with st.spinner("Loading the attributor, its encoders and the reference images (once per workspace)…"):
            return sa.attributor(path, stamp)
    except (WorkspaceError, ValueError, OSError) as e:
        st.error(f"The attributor of **{md(Path(path).name)}** cannot be loaded: {md(e)}", icon=":material/error:")
        st.stop()


def attribute_uploads(path: str, stamp: str, kind: str, files: list) -> tuple[dict, list[sa.Outcome]]:
    """The outcome of every uploaded file; only files not seen before are attributed (kept in session_state)."""
    where = f"{path}|{stamp}|{kind}"
    record = st.session_state.get(RESULTS_KEY)
    if not record or record["where"] != where:  # another workspace, or it was retrained: answers differ
        record = {"where": where, "by_file": {}, "placed": {}}
    ids = [f.file_id for f in files]
    record["by_file"] = {i: o for i, o in record["by_file"].items() if i in ids}  # files removed from the uploader
    new = [f for f in files if f.file_id not in record["by_file"]]
    if new:
        attributor = load_attributor(path, stamp)
        used = sum(len(o.cards) for o in record["by_file"].values())
        with st.spinner(f"Attributing {len(new)} file{'s' if len(new) != 1 else ''}…"):
            record["by_file"].update(sa.attribute_files(
                attributor, [(f.file_id, f.name, f.getvalue()) for f in new], room=sa.MAX_IMAGES - used))
    st.session_state[RESULTS_KEY] = record
    return record, [record["by_file"][i] for i in ids]


def errors_section(errors: list[tuple[str, str]]) -> None:
    """Every file that could not be attributed, with its reason."""
    if not errors:
        return
    if len(errors) <= ERRORS_SHOWN:
        for file, reason in errors:
            st.error(f"**{md(file)}**: {md(reason)}", icon=":material/block:")
        return
    st.error(f"{len(errors)} files could not be attributed; each is listed below with the reason.",
             icon=":material/block:")
    st.dataframe(pd.DataFrame(errors, columns=["file", "reason"]), hide_index=True, width="stretch")


def summary_section(ws: Workspace, table: pd.DataFrame, n_errors: int, filed) -> None:
    """Counts per verdict and per most probable model, and the report (CSV and JSON) of every answer."""
    from fingerprint_core.attribution import report

    st.subheader("Batch summary")
    counts = fat.verdict_counts(table)
    cols = st.columns(5)
    cols[0].metric("attributed", len(table))
    for col, v in zip(cols[1:4], fat.VERDICTS, strict=True):
        col.metric(v, counts[v])
    cols[4].metric("not attributed", n_errors)
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    left.plotly_chart(fat.batch_figure(table), width="stretch", key="attr_batch", config={"displaylogo": False})
    right.download_button(
        "Download CSV", data=report.to_csv(filed), file_name=f"{ws.path.name}-attribution.csv", mime="text/csv",
        icon=":material/download:", on_click="ignore", key="attr_csv", width="stretch",
        help="The report to file: '#' lines with the attributor, its thresholds and the error rates they were set "
             "for, the tool version and the set's verdict; then one row per image: its SHA-256, verdict, model, "
             "probabilities, design choices, scores; refused files with their reason.",
    )
    right.download_button(
        "Download JSON", data=json.dumps(filed.to_json(), indent=1), file_name=f"{ws.path.name}-attribution.json",
        mime="application/json", icon=":material/download:", on_click="ignore", key="attr_json", width="stretch",
        help="The same report as `manifpt attribute --json` writes (schema manifpt-attribute/2, docs/open-world.md).",
    )
    right.caption("Number of images per most probable model, coloured by verdict.")


def map_section(path: str, stamp: str, record: dict, cards: list[sa.Card], file_ids: tuple, attributor) -> None:
    """The uploads placed on the workspace's fingerprint map, or a note on why they are not."""
    st.subheader("On the fingerprint map")
    analysis = state.analysis_of(path, stamp)
    if analysis is None:
        st.info("Placing the uploads on the fingerprint map needs the workspace's analysis, which it does not have "
                f"yet (or it is out of date). Compute it with {md_code(state.analyze_command(path))} or on the "
                "Fingerprint map page.", icon=":material/info:")
        return
    spaces = [s for s in analysis.spaces if s in attributor.spaces]
    if not spaces:
        st.info(f"The map covers {', '.join(analysis.spaces)}, the attributor reads {', '.join(attributor.spaces)}: "
                "no space in common to place the uploads in.", icon=":material/info:")
        return
    space = (st.segmented_control("Map of the space", spaces, default=spaces[0], key="attr_map_space")
             if len(spaces) > 1 else spaces[0]) or spaces[0]
    frame = state.map_frame(path, stamp, space)
    memo_key = (space, file_ids)  # the same files give the same cards
    if memo_key not in record["placed"]:
        try:
            with st.spinner("Placing the uploads on the map…"):
                neighbours = sa.nearest_rows(sa.upload_artifacts(attributor, cards, space),
                                             sa.map_artifacts(path, stamp, space))
        except (OSError, ValueError, KeyError) as e:  # a damaged workspace entry: say so, keep the rest of the page
            st.warning(f"The uploads cannot be placed on the {space} map: {md(e)}", icon=":material/warning:")
            return
        record["placed"][memo_key] = sa.place_on_map(neighbours, frame[["x", "y"]].to_numpy())
    xy = record["placed"][memo_key]
    placed = pd.DataFrame({"file": [c.result.file for c in cards], "x": xy[:, 0], "y": xy[:, 1],
                           "model": [c.result.top[0]["model"] for c in cards],
                           "verdict": [c.result.verdict for c in cards]})
    fig = fat.upload_map_figure(frame, state.design_table(path, stamp), placed)
    st.plotly_chart(fig, width="stretch", key="attr_map", config={"displaylogo": False, "scrollZoom": True})
    st.caption(f"Dots: the workspace's samples ({space} space, coloured by model). Stars: the uploads, coloured by "
               f"verdict, each at the median map position of the {sa.NEIGHBOURS} samples whose {space} artifacts are "
               "nearest to its own (L2). UMAP is not re-run, so a star shows which fingerprints it resembles, "
               "not an exact embedding.")


# ---- one card per image ------------------------------------------------------------------------------------


def image_tiles(ws: Workspace, c: sa.Card) -> None:
    """The upload, its nearest real image and its RGB artifact, side by side."""
    found = list(c.result.nearest_real)
    space = next((s for s in found if state.pixel_exact(s)), found[0])  # x* in pixels where there is one
    nearest = np.asarray(ws.reference_images()[c.result.nearest_real[space]])
    art, half = fat.artifact_tile(c.converted, nearest)
    tiles = [(fat.pixel_tile(c.thumbnail), "upload"), (fat.pixel_tile(fat.chw_to_hwc(nearest)), f"nearest real ({space})"),
             (art, f"artifact x − x* (±{half:.2g})")]
    for col, (image, caption) in zip(st.columns(3, gap="small"), tiles, strict=True):
        col.image(image, caption=caption, width="stretch")


def design_lines(c: sa.Card) -> str:
    """The predicted design choices with their probabilities, one per line (markdown)."""
    return "  \n".join(f"{md(head)}: **{md(v['value'])}** ({v['p']:.2f})" for head, v in c.result.design.items())


def card(ws: Workspace, c: sa.Card, n: int, decision) -> None:
    """Everything about one image in a bordered box."""
    r = c.result
    with st.container(border=True):
        st.markdown(f"**{n}. {md(r.file)}** &nbsp; :{BADGE.get(r.verdict, 'gray')}-badge[{r.verdict}]")
        st.caption(fat.verdict_line(r, decision))
        if c.domain_gap:
            st.warning(c.domain_gap, icon=":material/warning:")
        tiles, bars, design = st.columns([3, 2, 1.9], gap="medium")
        with tiles:
            image_tiles(ws, c)
        bars.plotly_chart(fat.top_models_figure(r.top, verdict=r.verdict), width="stretch",
                          key=f"attr_top_{n}", config={"displaylogo": False, "displayModeBar": False})
        with design:
            st.markdown("**Design choices**")
            st.markdown(design_lines(c) or "none in this workspace")
        if c.notes:
            st.caption("Converted: " + "; ".join(md(n) for n in c.notes) + ".")


def cards_section(ws: Workspace, cards: list[sa.Card], decision) -> None:
    """The cards, filtered by verdict and shown a page at a time."""
    st.subheader("Per image")
    numbered = list(enumerate(cards, 1))
    if len(cards) > 1:
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        shown = left.pills("Verdicts shown", fat.VERDICTS, selection_mode="multi", default=list(fat.VERDICTS),
                           key="attr_filter")
        numbered = [(n, c) for n, c in numbered if c.result.verdict in (shown or [])]
        pages = max(1, -(-len(numbered) // PAGE_SIZE))
        if st.session_state.get("attr_page", 1) > pages:  # fewer pages after filtering: the widget must not go past them
            st.session_state["attr_page"] = pages
        page = right.number_input(f"Page (of {pages})", 1, pages, 1, key="attr_page") if pages > 1 else 1
        numbered = numbered[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    if not numbered:
        st.info("No image with the verdicts chosen.", icon=":material/filter_alt:")
    for n, c in numbered:
        card(ws, c, n, decision)


def set_section(attributor, cards: list[sa.Card], file_ids: tuple) -> dict | None:
    """The verdict for the whole batch as one source, with how it settles as images are added (None: too few images)."""
    st.subheader("As one source")
    key = ("attr_set", attributor.ws.path.as_posix(), file_ids)
    if st.session_state.get("attr_set_key") != key:
        try:
            with st.spinner("Comparing the set with every known model…"):
                st.session_state["attr_set"] = sa.set_verdict(attributor, cards)
        except ValueError as e:
            st.session_state["attr_set"] = str(e)
        st.session_state["attr_set_key"] = key
    s = st.session_state["attr_set"]
    if isinstance(s, str):
        st.info(f"No set verdict: {md(s)}.", icon=":material/info:")
        return None
    said = {"known": f"known: **{md(s['model'])}**", "unknown": "**unknown**: none of the known models",
            "real": "**real** images"}[s["verdict"]]
    box = {"known": st.success, "unknown": st.warning, "real": st.info}[s["verdict"]]
    box(f"Set verdict: {said} (p {s['p']:.3f}; {s['n']} images, thresholds of sets of {s['size_calibrated']}, "
        f"each rejecting {sets.REJECT:.1%} of a known model's validation sets).", icon=":material/group_work:")
    if s["design"]:
        rows = [{"factor": f, "value": v["value"], "p": v["p"], "how": v.get("reliability", "set posterior of the known models")}
                for f, v in s["design"].items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption("By set size (first n images): " + ", ".join(f"{b['n']}: {md(b['model'] or b['verdict'])} ({b['p']:.2f})"
                                                            for b in s["by_n"]) + ". For an unknown source, p is 1 minus the "
               "largest p-value of a known model; for real or known, the set posterior assuming independent images.")
    return s


def main() -> None:
    ws = state.require_workspace()
    path = state.current_path()
    stamp = state.stamp(path)
    found = sa.product_entry(ws)
    if found is None:
        st.title("Attribute")
        no_attributor(path)
    kind, entry = found
    header(ws, kind, entry)
    announce_training(path)
    padded_from = (28, 28) if ws.config.get("real_origin") == "fashion-mnist" else None  # as predict.Attributor
    files = st.file_uploader(
        "Drop images or a zip archive", type=TYPES, accept_multiple_files=True, key=UPLOAD_KEY,
        max_upload_size=sa.UPLOAD_MB, help="PNG, JPEG, WebP, BMP, GIF, TIFF, or a zip of them (read in memory).",
    )
    caps_caption(ws, padded_from)
    if not files:
        st.info("Drop one or more images, or a zip of images, above to attribute them.", icon=":material/upload:")
        st.stop()
    record, outcomes = attribute_uploads(path, stamp, kind, files)
    attributor = load_attributor(path, stamp)
    for w in attributor.warnings:
        st.warning(w, icon=":material/update:")
    cards = [c for o in outcomes for c in o.cards]
    errors = [e for o in outcomes for e in o.errors]
    errors_section(errors)
    if not cards:
        st.warning("No image could be attributed; see the reasons above.", icon=":material/warning:")
        st.stop()
    one_set = None
    if st.toggle("These images come from one source", key="attr_as_set",
                 help="Compare the batch, as a set, with each known model (a two-sample test on the attributor's "
                      "features): real, then known or unknown, then the model. Needs at least 5 images."):
        one_set = set_section(attributor, cards, tuple(f.file_id for f in files))
    filed = predict.Report(results=[c.result for c in cards], errors=errors, set=one_set, about=attributor.about())
    summary_section(ws, sa.results_table(cards, attributor.decision), len(errors), filed)
    map_section(path, stamp, record, cards, tuple(f.file_id for f in files), attributor)
    cards_section(ws, cards, attributor.decision)


main()
