"""Workspace choice and cached loading, shared by every page."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import streamlit as st

from app.text import md, md_code
from fingerprint_core.workspace import MANIFEST, REAL, Workspace, WorkspaceError, default_root, discover

if TYPE_CHECKING:  # the analysis pulls in sklearn and torch: imported when a page first needs it
    from fingerprint_core.analysis.run import Analysis
    from fingerprint_core.analysis.spectra import ModelSpectra

ROOT_ENV = "MANIFPT_WORKSPACE"
WORKSPACE_KEY = "workspace"  # session_state: path (str) of the chosen workspace, or None


def image_spaces(names) -> list[str]:
    """The spaces among names whose artifacts are image-shaped (C x H x W), drawn as images."""
    from fingerprint_core import spaces

    return [s for s in names if _known(s) and spaces.info(s).image_shaped]


def artifact_titles(names) -> dict[str, str]:
    """Column titles of the sample grids: what an artifact of each space is."""
    from fingerprint_core import spaces

    return {s: spaces.info(s).artifact_label for s in names if _known(s)}


def grid_spaces(names) -> list[str]:
    """Artifact columns of a sample grid: the paper's image-shaped spaces (empty when missing), then the rest."""
    from fingerprint_core import spaces

    return image_spaces(dict.fromkeys([*spaces.fused_names(), *names]))


def pixel_exact(space: str) -> bool:
    from fingerprint_core import spaces

    return _known(space) and spaces.info(space).pixel_exact


def colour_mode(samples: np.ndarray, key: str) -> str:
    """For colour images, a choice of how artifacts are drawn: "mean" of channels or "signed" RGB."""
    if np.asarray(samples).shape[1] != 3:
        return "mean"
    modes = {"mean": "Mean of channels", "signed": "Signed RGB"}
    picked = st.segmented_control("Colour artifacts as", list(modes), format_func=modes.get, default="mean", key=key,
                                  help="Mean of channels: one diverging map. Signed RGB: each channel's artifact "
                                       "as that colour (grey = 0), so a trace in one channel stays visible.")
    return picked or "mean"


def _known(space: str) -> bool:
    from fingerprint_core import spaces

    return space in spaces.names()


def workspace_root() -> Path:
    """The folder whose workspaces the app offers: $MANIFPT_WORKSPACE, else the user cache."""
    return default_root()


def workspace_choices(root: Path) -> list[Path]:
    """The workspaces a visitor may pick: root alone when it is one, else those directly under it."""
    if (root / MANIFEST).is_file():
        return [root]
    return discover(root)


def create_command(root: Path) -> str:
    """The shell command that fingerprints a GM dataset into a new workspace under root."""
    return f"manifpt fingerprint DATA_ROOT -w {shlex.quote(str(root / 'my-workspace'))}"


def stamp(path: str) -> str:
    """What changes whenever the workspace is recommitted: the manifest's "updated" and its mtime."""
    f = Path(path) / MANIFEST
    try:
        updated = json.loads(f.read_text()).get("updated", "")
        return f"{updated}|{f.stat().st_mtime_ns}"
    except (OSError, json.JSONDecodeError, AttributeError):
        return "unreadable"  # Workspace.open then reports why


@st.cache_resource(max_entries=8, show_spinner=False)
def _open(path: str, stamp: str) -> Workspace:
    """One opened Workspace per (path, stamp), shared by all sessions; its arrays are read-only mmaps."""
    return Workspace.open(path)


def open_workspace(path: str) -> Workspace:
    """The opened workspace at path, reloaded after a recompute (WorkspaceError if unusable)."""
    return _open(path, stamp(path))


def current_path() -> str | None:
    """The chosen workspace's path, or None when there is none."""
    return st.session_state.get(WORKSPACE_KEY)


def current_workspace() -> Workspace | None:
    """The chosen workspace, or None when none exists or it cannot be opened."""
    path = current_path()
    if path is None:
        return None
    try:
        return open_workspace(path)
    except WorkspaceError:
        return None


def require_workspace() -> Workspace:
    """The chosen workspace; otherwise explain how to create one (or why it failed) and stop the page."""
    path = current_path()
    if path is None:
        root = workspace_root()
        st.info(
            f"No workspace yet in {md_code(root)}. A workspace holds the fingerprints of a GM dataset "
            "(a folder with `real/`, `models/<name>/` and `models.csv`). Create one with:",
            icon=":material/info:",
        )
        st.code(create_command(root), language="bash")
        st.caption(f"Then reload this page. Set `{ROOT_ENV}` to use another root folder.")
        st.stop()
    try:
        return open_workspace(path)
    except WorkspaceError as e:
        st.error(f"The workspace {md_code(Path(path).name)} cannot be opened: {md(e)}", icon=":material/error:")
        st.stop()


def model_label(name: str) -> str:
    """How a model is named in widgets (the held-out real images are flagged as such)."""
    return f"{name} (held-out real images)" if name == REAL else name


# ---- cached data: small numpy/pandas results keyed by (path, stamp) -----------------------------


@st.cache_data(max_entries=16, show_spinner=False)
def model_summary(path: str, stamp: str) -> pd.DataFrame:
    """The design table with samples, skipped files and mean nearest-real distance per space."""
    return _open(path, stamp).summary()


@dataclass(frozen=True)
class SampleSet:
    """A seeded draw of one model's samples with their nearest real images and image-shaped artifacts."""

    indices: np.ndarray  # int64 K, positions in the model's samples
    samples: np.ndarray  # uint8 K x C x H x W
    nearest: np.ndarray  # uint8 K x C x H x W, nearest real image in nearest_space
    nearest_space: str
    artifacts: dict[str, np.ndarray]  # space -> float32 K x C x H x W (only spaces the workspace has)
    details: pd.DataFrame  # one row per sample: file, and per space the nearest index and distance


def draw_indices(n: int, k: int, seed: int) -> np.ndarray:
    """k sorted distinct positions out of n, reproducible from the seed."""
    k = min(k, n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)


@st.cache_data(max_entries=64, show_spinner=False)
def sample_set(path: str, stamp: str, model: str, k: int, seed: int, nearest_space: str) -> SampleSet:
    """k samples of a model (seeded), the nearest real image of each and their rgb/freq artifacts."""
    ws = _open(path, stamp)
    images = ws.images(model)
    idx = draw_indices(len(images), k, seed)
    samples = np.asarray(images[idx])
    shape = samples.shape
    reference = ws.reference_images()
    nearest_idx = np.asarray(ws.nearest(model, nearest_space)[idx])
    order = np.argsort(nearest_idx)  # read the reference mmap in increasing order, then restore
    nearest = np.empty_like(samples)
    nearest[order] = reference[nearest_idx[order]]
    arts = {
        s: np.asarray(ws.artifacts(model, s)[idx], dtype=np.float32).reshape(shape)
        for s in image_spaces(ws.space_names()) if ws.has(model, s)
    }
    sources = ws.sources(model)["file"].to_numpy()
    details = pd.DataFrame({"sample": [f"#{i}" for i in idx], "file": sources[idx]})
    for s in ws.space_names():
        if ws.has(model, s):
            details[f"x* {s}"] = np.asarray(ws.nearest(model, s)[idx])
            details[f"d² {s}"] = np.asarray(ws.distance(model, s)[idx], dtype=np.float64)
    return SampleSet(idx, samples, nearest, nearest_space, arts, details)


# ---- the analysis: fingerprint map, spectra, design metrics (`manifpt analyze`) ----------------


def analyze_command(path: str) -> str:
    """The shell command that computes (or refreshes) a workspace's analysis."""
    return f"manifpt analyze {shlex.quote(str(path))}"


@st.cache_resource(max_entries=8, show_spinner=False)
def _analysis(path: str, stamp: str) -> tuple[str, Analysis | None]:
    """("current", the analysis), ("missing" | "stale", None), or ("unreadable: why", None); shared, read-only."""
    from fingerprint_core.analysis.run import Analysis

    ws = _open(path, stamp)
    try:
        return Analysis.read(ws)
    except (OSError, ValueError, KeyError) as e:  # a damaged analysis entry: say why, never a traceback
        return f"unreadable: {e}", None


def analysis_of(path: str, stamp: str) -> Analysis | None:
    """The workspace's current analysis, or None (missing, stale or unreadable)."""
    return _analysis(path, stamp)[1]


def run_analysis(path: str, *, force: bool = False) -> None:
    """The "Run the analysis here" button: `manifpt analyze` as a background job, followed on the page."""
    from app import jobs_view

    jobs_view.panel(path, "analyze", what="The analysis", label="Run the analysis here", key="run_analysis",
                    args=("--force",) if force else (), icon=":material/play_arrow:",
                    help="Runs the same computation in the background; it can take minutes on a large workspace. "
                         "It goes on if you leave the page, and this page follows it when you come back.")


def require_analysis(path: str, stamp: str) -> Analysis:
    """The workspace's current analysis; otherwise say why there is none, how to make it, and stop the page."""
    found, analysis = _analysis(path, stamp)
    if analysis is not None:
        return analysis
    name = md(Path(path).name)
    if found == "missing":
        st.info(f"The workspace **{name}** has no analysis yet: the fingerprint map (UMAP), the spectra and "
                "the design-choice metrics are computed once and kept in the workspace. Compute them with:",
                icon=":material/info:")
    elif found == "stale":
        st.warning(f"The analysis of **{name}** is out of date: the fingerprints or the design table changed "
                   "since it ran. Refresh it with:", icon=":material/update:")
    else:
        st.error(f"The analysis of **{name}** cannot be read ({md(found.removeprefix('unreadable: '))}). "
                 "Recompute it with:", icon=":material/error:")
    st.code(analyze_command(path) + ("" if found in ("missing", "stale") else " --force"), language="bash")
    run_analysis(path, force=found not in ("missing", "stale"))
    st.stop()


def analysis_page(title: str) -> tuple[str, str, Analysis]:
    """Start a page that shows the analysis: its title, then (path, stamp, analysis), or stop the
    page with how to make one."""
    require_workspace()
    path = current_path()
    stamp_now = stamp(path)
    st.title(title)
    analysis = require_analysis(path, stamp_now)
    from app import jobs_view

    jobs_view.announce(path, "analyze", "The analysis finished", what="The analysis")
    return path, stamp_now, analysis


@st.cache_data(max_entries=16, show_spinner=False)
def design_table(path: str, stamp: str) -> pd.DataFrame:
    """The design table (models.csv rows and the real control), every value as text."""
    return _open(path, stamp).design().astype(str)


@st.cache_data(max_entries=16, show_spinner=False)
def map_frame(path: str, stamp: str, space: str, level: str = "raw") -> pd.DataFrame:
    """The fingerprint map of a space at a level ("raw": every sample; "learned": the test samples the
    design-blind attributor never trained on): one row per sample (model, index, x, y); a row id is its position."""
    analysis = analysis_of(path, stamp)
    frame = analysis.fingerprint_map(space, level)
    frame["model"] = pd.Categorical(frame["model"], categories=analysis.models)  # cheap to copy out of the cache
    frame["x"] = frame["x"].astype(np.float32)
    frame["y"] = frame["y"].astype(np.float32)
    return frame


@st.cache_data(max_entries=8, show_spinner=False)
def spectra_of(path: str, stamp: str) -> dict[str, ModelSpectra]:
    """Every model's spectra (the real control under "real"), as small in-memory arrays."""
    analysis = analysis_of(path, stamp)
    return {m: analysis.spectra(m) for m in analysis.models}


@st.cache_data(max_entries=32, show_spinner=False)
def selected_samples(path: str, stamp: str, picks: tuple[tuple[str, int], ...], nearest_space: str) -> SampleSet:
    """Samples picked as (model, index) with their nearest real image (in nearest_space) and rgb/freq artifacts."""
    ws = _open(path, stamp)
    reference = ws.reference_images()
    samples, nearest, rows = [], [], []
    arts: dict[str, list[np.ndarray]] = {s: [] for s in image_spaces(ws.space_names())}
    for model, index in picks:
        samples.append(np.asarray(ws.images(model)[index]))
        x_star = int(ws.nearest(model, nearest_space)[index])
        nearest.append(np.asarray(reference[x_star]))
        for s in arts:
            if ws.has(model, s):
                arts[s].append(np.asarray(ws.artifacts(model, s)[index], dtype=np.float32).reshape(samples[-1].shape))
        rows.append({"model": model, "sample": int(index), f"x* {nearest_space}": x_star,
                     f"d² {nearest_space}": float(ws.distance(model, nearest_space)[index])})
    details = pd.DataFrame(rows)
    details.insert(0, "row", [f"#{i + 1}" for i in range(len(picks))])
    artifacts = {s: np.stack(a) for s, a in arts.items() if a and len(a) == len(picks)}
    return SampleSet(np.array([i for _, i in picks], dtype=np.int64), np.stack(samples), np.stack(nearest),
                     nearest_space, artifacts, details)


def selection_table(path: str, space: str, frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """The selected samples for export: model, sample, file, map position, design choices, nearest real image."""
    ws = open_workspace(path)
    sel = frame.iloc[np.asarray(rows, dtype=np.int64)]
    parts = []
    for model, part in sel.groupby("model", sort=False, observed=True):
        model, index = str(model), part["index"].to_numpy()
        parts.append(pd.DataFrame({
            "model": model, "sample": index, "file": ws.sources(model)["file"].to_numpy()[index],
            "umap_x": part["x"].to_numpy(), "umap_y": part["y"].to_numpy(),
            f"nearest_real_{space}": np.asarray(ws.nearest(model, space))[index],
            f"d2_{space}": np.asarray(ws.distance(model, space), dtype=np.float64)[index],
        }))
    cols = ["model", "sample", "file", "umap_x", "umap_y", f"nearest_real_{space}", f"d2_{space}"]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    design = ws.design().astype(str)
    return table.merge(design, on="model", how="left")[cols[:3] + [c for c in design.columns if c != "model"] + cols[3:]]
