"""Benchmark page: ManiFPT beside the classic baselines, read from the results `manifpt bench` wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import figures_attribution as fat
from app import state
from app import state_attribution as sa
from app.text import md, md_code
from fingerprint_core.workspace import Workspace

BEST_STYLE = "background-color: #DBEAFE; font-weight: 600"
CHANCE_STYLE = "color: #6B7280; font-style: italic"


def no_results(ws: Workspace, path: str, root: Path) -> None:
    """Say where the page looks, how to make a benchmark and roughly how long it takes; stop the page."""
    st.info(
        f"No benchmark results for **{md(ws.path.name)}** yet. The page reads the `results.json` that "
        f"`manifpt bench` writes, from {md_code(sa.bench_dir(path))} first, then from any folder beside the "
        f"workspace or up to two levels under the root {md_code(root)}. Make one with:", icon=":material/info:",
    )
    st.code(sa.bench_command(path), language="bash", wrap_lines=True)
    st.caption(sa.bench_estimate(ws) + " The run is resumable: stop it and rerun the same command to go on. "
               "For a smaller first look (one seed, fewer folds, a subset of the training samples, at most 3 epochs):")
    st.code(sa.bench_command(path, quick=True), language="bash", wrap_lines=True)
    st.stop()


def pick_run(runs: list[str], root: Path) -> str:
    """The results folder to show: the only one, or the visitor's choice (this workspace's runs first)."""
    if len(runs) == 1:
        return runs[0]

    def label(run: str) -> str:
        p = Path(run)
        where = p.relative_to(root.resolve()) if p.is_relative_to(root.resolve()) else p
        return f"{where} · {sa.modified(run)}"

    return st.selectbox("Results", runs, format_func=label, key="bench_run",  # options are plain text
                        help="Folders holding a results.json, this workspace's first.")


def run_caption(doc: dict, run: str, ws: Workspace) -> None:
    """Which workspace and settings the numbers come from, and whether the workspace changed since."""
    from fingerprint_core.attribution import bench

    s = doc.get("settings", {})
    seeds = ", ".join(map(str, s.get("training_seeds", []))) or "?"
    subset = f" · {md(s['train_per_model'])} training samples per model" if s.get("train_per_model") else ""
    epochs = f" · at most {md(s['max_epochs'])} epochs" if s.get("max_epochs") else ""
    planned, done = planned_methods(doc), set(r["method"] for r in doc.get("summary", []))
    made_from = Path(str(doc.get("workspace", "")))
    st.caption(
        f"{md_code(run)} · workspace {md_code(made_from.name or '?')} · {len(planned)} methods · split seed "
        f"{md(s.get('split_seed', '?'))}, training seeds {md(seeds)}{subset}{epochs} · written {sa.modified(run)} · "
        f"compute time {sa.duration(sa.bench_seconds(doc))}"
    )
    if len(done) < len(planned):  # results.json is rewritten after each method: a run in progress, or stopped
        to_come = ", ".join(md(m) for m in planned if m not in done)
        st.info(f"{len(done)} of {len(planned)} methods finished so far ({to_come} "
                "to come): the run is still going, or was stopped; rerun the same command to go on.",
                icon=":material/hourglass_top:")
    made_from = made_from.resolve()
    if made_from != ws.path.resolve():
        st.info(f"These results are of the workspace {md_code(made_from)}, not of **{md(ws.path.name)}** chosen in "
                "the sidebar.", icon=":material/info:")
    elif doc.get("workspace_key") != bench.workspace_key(ws):
        st.warning("The workspace changed since this benchmark ran (images, artifacts or design table): the numbers "
                   f"may be out of date. Rerun {md_code(sa.bench_command(str(ws.path)))}; parts whose inputs did not "
                   "change are reused.", icon=":material/update:")
    skipped = {**doc.get("skipped_methods", {}), **doc.get("skipped_protocols", {})}
    for name, why in skipped.items():
        st.caption(f":material/block: **{md(name)}** not run: {md(why)}")


def planned_methods(doc: dict) -> list[str]:
    """The methods the run was asked for (finished or not)."""
    return list(doc.get("methods", {})) or list(dict.fromkeys(r["method"] for r in doc.get("summary", [])))


def table_section(summary: pd.DataFrame) -> None:
    """Methods x protocols, mean ± std, the best of each column shaded, chance in the last row."""
    cells, best = fat.bench_table(summary)

    def style(frame: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(np.where(best, BEST_STYLE, ""), index=frame.index, columns=frame.columns)
        out.loc["chance"] = CHANCE_STYLE
        return out

    # every row in view (header + rows + chance at 35 px each): no scrolling inside an 11-method table
    st.dataframe(cells.style.apply(style, axis=None), width="stretch", height=35 * (len(cells) + 1) + 3)
    st.caption("Mean ± std over training seeds (a, b, c, f) or folds (d, e), two decimals (results.csv has them "
               "all); shaded: the best of each column "
               "(for FPR the lowest). a closed: model accuracy on the test split; b twins: telling apart models of "
               "one design trained with different seeds; c: accuracy after JPEG 50 / 75 / 90, resizing by 0.5 and back, noise; "
               "d: design choices of held-out designs (every seed of a design held out), predicted per held-out sample by "
               "each method's design heads, trained on the other designs beside its model head; its chance is the "
               "better of two fingerprint-free guesses counted per training design (the training designs' most common "
               "level, ties split, or a level drawn with their frequencies), from `fingerprint_core/protocol.py`, the "
               "same rule as the Design page's leave-one-design-out; e: AUROC and TPR/FPR of unseen models; f: Fisher "
               "ratio of the features (spaces differ in scale: compare seeds, not methods).")


def charts_section(summary: pd.DataFrame) -> None:
    """One bar chart per protocol, two side by side."""
    protocols = [p for p in fat.PROTOCOLS if fat.metrics_of(summary, p)]
    for i in range(0, len(protocols), 2):
        cols = st.columns(2, gap="large")
        for col, p in zip(cols, protocols[i:i + 2], strict=False):  # the last row may hold one
            col.plotly_chart(fat.bench_figure(summary, p), width="stretch", key=f"bench_{p}",
                             config={"displaylogo": False})
    st.caption("Bars: mean; whiskers: ± one std; dashed: chance. ManiFPT's attributors in blue, the baselines in "
               "warm colours. Robustness starts with the clean accuracy (a) for the drop to be seen.")


@st.cache_resource(show_spinner=False, max_entries=16)
def calibrated(path: str, stamp: str, kind: str):
    from fingerprint_core.attribution import train

    return train.calibrated(Workspace.open(path), kind)


def calibration_section(ws: Workspace, path: str) -> None:
    """Per trained attributor: expected calibration error before and after temperature scaling (test
    images, 15 bins) and the reliability diagram after it."""
    kinds = list(sa.trained_kinds(ws))
    if not kinds:
        return
    st.subheader("Calibration of the attributors")
    st.caption("Temperature scaling fitted on validation images only (one scalar per attributor, so the accuracy "
               "is unchanged); expected calibration error (ECE, 15 bins) measured on the test images. A calibrated "
               "attributor's bars follow the diagonal; ECE 0 is perfect, and the uncalibrated ECE is the baseline.")
    rows, figs = [], []
    for kind in kinds:
        try:
            with st.spinner(f"Calibrating the {kind} attributor (validation images only)…"):
                d = calibrated(path, state.stamp(path), kind)
        except (OSError, ValueError, KeyError) as e:
            st.warning(f"The {md(kind)} attributor cannot be calibrated: {md(e)}", icon=":material/warning:")
            continue
        m = d.measured
        rows.append({"attributor": kind, "temperature": round(d.temperature, 3), "ECE before": m.get("test_ece_raw"),
                     "ECE after": m.get("test_ece"), "test images": m.get("n_test")})
        if m.get("reliability"):
            figs.append((kind, m["reliability"]))
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    cols = st.columns(min(3, max(1, len(figs))))
    for i, (kind, bins) in enumerate(figs):
        cols[i % len(cols)].plotly_chart(fat.reliability_figure(bins, f"{kind}: reliability after scaling"),
                                         width="stretch", key=f"bench_reliability_{kind}", config={"displaylogo": False})


def main() -> None:
    ws = state.require_workspace()
    path = state.current_path()
    root = state.workspace_root()
    st.title("Benchmark")
    st.caption("ManiFPT's attributors (one per space, and fused) beside six classic attribution methods, trained "
               "and tested on the same split of the workspace by `manifpt bench` (docs/baselines.md).")
    runs = sa.bench_runs(str(root), path)
    if not runs:
        calibration_section(ws, path)
        no_results(ws, path, root)
    run = pick_run(runs, root)
    try:
        doc = sa.bench_results(run)
    except (OSError, ValueError) as e:
        st.error(f"{md_code(Path(run) / sa.RESULTS)} cannot be read: {md(e)}", icon=":material/error:")
        st.stop()
    summary = pd.DataFrame(doc["summary"], columns=["method", "protocol", "metric", "mean", "std", "n", "over"])
    run_caption(doc, run, ws)
    if summary.empty:
        st.info("This run has no finished part yet; rerun the command to go on.", icon=":material/hourglass_empty:")
        st.stop()
    with st.container(border=True):
        st.markdown("**What the numbers say**")
        st.markdown("\n".join(f"- {line}" for line in fat.bench_reading(summary)))
    table_section(summary)
    charts_section(summary)
    with st.expander("Notes on the protocols and settings"):
        st.markdown("\n".join(f"- {md(n)}" for n in doc.get("notes", [])))
    csv = Path(run) / "results.csv"
    if csv.is_file():
        st.download_button("Download results.csv", data=csv.read_bytes(), file_name=f"{ws.path.name}-bench.csv",
                           mime="text/csv", icon=":material/download:", on_click="ignore", key="bench_csv")
    calibration_section(ws, path)


main()
