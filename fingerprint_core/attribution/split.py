"""The attribution split (seeded, stratified by model: 70% train, 10% validation, 20% test) and the
labelled inputs it selects from a workspace."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fingerprint_core.attribution.method import Classes, Inputs, Targets
from fingerprint_core.workspace import REAL, Workspace

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
DESIGN_HEADS = ("family", "upsampling", "loss", "normalization")


def make_split(sizes: dict[str, int], *, seed: int = 0) -> pd.DataFrame:
    """One row per sample (model, index, part): each model's samples shuffled and cut 70/10/20."""
    rows = []
    for i, (model, n) in enumerate(sizes.items()):
        # one generator per model (seed, position): adding a model never reshuffles the others
        order = np.random.default_rng([seed, i]).permutation(n)
        n_train, n_val = round(n * FRACTIONS["train"]), round(n * FRACTIONS["val"])
        part = np.empty(n, dtype=object)
        part[order[:n_train]] = "train"
        part[order[n_train:n_train + n_val]] = "val"
        part[order[n_train + n_val:]] = "test"
        rows.append(pd.DataFrame({"model": model, "index": np.arange(n, dtype=np.int64), "part": part}))
    return pd.concat(rows, ignore_index=True)


def workspace_split(ws: Workspace, *, seed: int = 0) -> pd.DataFrame:
    """The split of every model of the workspace, the held-out real images ("real") included."""
    return make_split({m: ws.n_images(m) for m in ws.model_names(include_real=True)}, seed=seed)


def classes(ws: Workspace, heads: tuple[str, ...] = ("model", *DESIGN_HEADS)) -> Classes:
    """Label names per head: the models (+ "real") and the levels of each design column present."""
    models = ws.model_names(include_real=True)
    design = ws.design().astype(str).set_index("model").reindex(models)
    out: Classes = {"model": models}
    for h in heads:
        if h != "model" and h in design.columns and design[h].nunique() >= 2:
            out[h] = sorted(design[h].unique())
    return out


def targets(ws: Workspace, rows: pd.DataFrame, cls: Classes) -> Targets:
    """Per head, the int64 class id of every row (model -> its design choices via the design table)."""
    design = ws.design().astype(str).set_index("model")
    out: Targets = {}
    for head, names in cls.items():
        lookup = {n: i for i, n in enumerate(names)}
        labels = rows["model"] if head == "model" else rows["model"].map(design[head])
        out[head] = labels.map(lookup).to_numpy(np.int64)
    return out


def load_inputs(ws: Workspace, rows: pd.DataFrame, needs: tuple[str, ...]) -> Inputs:
    """The images and/or artifacts (float32) of the rows, in row order."""
    rows = rows.reset_index(drop=True)
    images: list[np.ndarray] | None = [] if "images" in needs else None
    arts: dict[str, list[np.ndarray]] = {s: [] for s in needs if s != "images"}
    read_order = []  # row positions in the order they are read
    for model, group in rows.groupby("model", sort=False):
        idx = group["index"].to_numpy()
        sort = np.argsort(idx, kind="stable")  # read memory maps in increasing order
        read_order.append(group.index.to_numpy()[sort])
        if images is not None:
            images.append(np.asarray(ws.images(model)[idx[sort]]))
        for s in arts:
            arts[s].append(np.asarray(ws.artifacts(model, s)[idx[sort]], dtype=np.float32))
    back = np.argsort(np.concatenate(read_order)) if read_order else np.zeros(0, np.int64)
    return Inputs(
        None if images is None or not images else np.concatenate(images)[back],
        {s: np.concatenate(a)[back] for s, a in arts.items() if a},
    )


__all__ = ["FRACTIONS", "DESIGN_HEADS", "REAL", "make_split", "workspace_split", "classes", "targets", "load_inputs"]
