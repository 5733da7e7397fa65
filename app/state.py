"""Workspace choice and cached loading, shared by every page."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from fingerprint_core.workspace import MANIFEST, REAL, Workspace, WorkspaceError, default_root, discover

ROOT_ENV = "MANIFPT_WORKSPACE"
WORKSPACE_KEY = "workspace"  # session_state: path (str) of the chosen workspace, or None
IMAGE_SPACES = ("rgb", "freq")  # spaces whose artifacts are image-shaped (C x H x W)


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
            f"No workspace yet in `{root}`. A workspace holds the fingerprints of a GM dataset "
            "(a folder with `real/`, `models/<name>/` and `models.csv`). Create one with:",
            icon=":material/info:",
        )
        st.code(create_command(root), language="bash")
        st.caption(f"Then reload this page. Set `{ROOT_ENV}` to use another root folder.")
        st.stop()
    try:
        return open_workspace(path)
    except WorkspaceError as e:
        st.error(f"The workspace `{Path(path).name}` cannot be opened: {e}", icon=":material/error:")
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
        for s in IMAGE_SPACES if ws.has(model, s)
    }
    sources = ws.sources(model)["file"].to_numpy()
    details = pd.DataFrame({"sample": [f"#{i}" for i in idx], "file": sources[idx]})
    for s in ws.space_names():
        if ws.has(model, s):
            details[f"x* {s}"] = np.asarray(ws.nearest(model, s)[idx])
            details[f"d² {s}"] = np.asarray(ws.distance(model, s)[idx], dtype=np.float64)
    return SampleSet(idx, samples, nearest, nearest_space, arts, details)
