"""Train a workspace's attributors (one per space, and the fused one) and store them in it.

Layout added to the workspace (docs/attribution.md)::

    WS/attribution-split-<hash>.parquet        model, index, part (train | val | test) of every sample
    WS/attribution/<kind>-<key>/weights.safetensors, config.json     the attributor (manifpt.py)
    WS/attribution/<kind>-<key>/test.parquet    per test sample: model, index, predicted class per head

and the manifest key "attribution": {split, split_seed, classes, attributors: {kind: {key, dir,
artifacts, val, test, best_epoch, epochs_run, seconds[, robust]}}}. A robust attributor
(train(robust=True)) also reads the perturbed banks of robustness.py (WS/robust/...), and its
entry's "robust" holds the recipe, the copies and the accuracy on the perturbed validation rows. An attributor's key hashes its
artifacts' keys, the split, the classes and the training settings: a rerun with nothing changed
trains nothing, and an interrupted run keeps every kind it finished (a commit after each).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fingerprint_core import spaces
from fingerprint_core.attribution import robustness
from fingerprint_core.attribution import split as split_mod
from fingerprint_core.attribution.manifpt import FUSED, ManiFPT, needs
from fingerprint_core.attribution.manifpt import kinds as manifpt_kinds
from fingerprint_core.attribution.method import Inputs
from fingerprint_core.workspace import Workspace, WorkspaceError, key_of

VERSION = 1  # bump when the same inputs and settings would train a different attributor
KEY = "attribution"


class NotTrainedError(WorkspaceError):
    """A workspace without (this) trained attributor."""


def available(ws: Workspace) -> list[str]:
    """Kinds that can be trained: spaces whose artifacts every model has, and "fused" when all four are there."""
    models = ws.model_names(include_real=True)
    found = [s for s in ws.space_names() if s in spaces.names() and models and all(ws.has(m, s) for m in models)]
    return found + ([FUSED] if set(spaces.fused_names()) <= set(found) else [])


def artifacts_key(ws: Workspace, kind: str) -> str:
    """Hash of the artifact entries an attributor of this kind reads (changes when any is recomputed)."""
    models = ws.manifest.get("models", {})
    entries = {m: {s: models[m].get("spaces", {}).get(s, {}).get("key") for s in needs(kind)}
               for m in ws.model_names(include_real=True)}
    return key_of(entries)


def stored(ws: Workspace) -> dict[str, dict]:
    """The trained attributors recorded in the workspace: kind -> its manifest entry."""
    return dict(ws.manifest.get(KEY, {}).get("attributors", {}))


def product_kind(ws: Workspace) -> str:
    """The attributor answers come from: fused when trained, else the best by validation model accuracy."""
    have = stored(ws)
    if not have:
        raise NotTrainedError(f"workspace {ws.path} has no trained attributor; train one with `manifpt train {ws.path}`")
    if FUSED in have:
        return FUSED
    return max(have, key=lambda k: have[k]["val"].get("model", 0.0))


def load(ws: Workspace, kind: str | None = None, *, device: str = "cpu") -> tuple[ManiFPT, dict]:
    """(attributor, manifest entry) of a kind (default: product_kind). Its verdicts (real, unknown, the
    model) and their thresholds are decision.py's, fitted from the workspace the first time they are needed."""
    kind = kind or product_kind(ws)
    entry = stored(ws).get(kind)
    if entry is None:
        raise NotTrainedError(f"workspace {ws.path} has no trained {kind} attributor; "
                              f"train it with `manifpt train {ws.path} --spaces {kind}`")
    folder = ws.path / entry["dir"]
    return ManiFPT.load(folder, device=device), entry


def calibrated(ws: Workspace, kind: str, *, log: Callable[[str], None] = lambda message: None):
    """The fitted verdict (decision.Decision) of a trained kind, fitting it from the workspace if missing."""
    from fingerprint_core.attribution import decision

    method, entry = load(ws, kind)
    return decision.ensure(ws, kind, method, entry, log=log)


def train(
    workspace: str | Path | Workspace,
    *,
    kinds: list[str] | tuple[str, ...] | None = None,
    epochs: int = 20,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    robust: bool = False,
    robust_copies: int = 1,
    robust_p: float | None = None,
    on_epoch: Callable[[str, dict], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> pd.DataFrame:
    """Train (or reuse) the attributors; returns accuracies: one row per kind and head (val, test).

    robust: train on the clean rows plus robust_copies perturbed copies of the training and
    validation rows (robustness.augment with probability robust_p, default robustness.P; artifacts
    re-projected through each space and its exact manifold, cached as workspace banks)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    can = available(ws)
    kinds = list(kinds) if kinds else can
    kinds_known = manifpt_kinds()
    bad = [k for k in kinds if k not in kinds_known]
    if bad:
        raise ValueError(f"unknown attributor(s) {', '.join(bad)}; choose from {', '.join(kinds_known)}")
    missing = [k for k in kinds if k not in can]
    if missing:
        raise ValueError(f"workspace {ws.path} cannot train {', '.join(missing)}: it has artifacts in "
                         f"{', '.join(ws.space_names()) or 'no space'} (fused needs all of {', '.join(spaces.fused_names())}); "
                         "add spaces with `manifpt fingerprint --spaces ...`")
    robust_p = robustness.P if robust_p is None else float(robust_p)
    if robust and (int(robust_copies) < 1 or not 0.0 < robust_p <= 1.0):
        raise ValueError(f"robust_copies={robust_copies} must be >= 1 and robust_p={robust_p} in (0, 1]")
    with ws.writing():  # reloads what another writer committed before we held the lock
        table = split_mod.workspace_split(ws, seed=seed)
        cls = split_mod.classes(ws)
        if len(cls["model"]) < 2:
            raise ValueError(f"workspace {ws.path} has {len(cls['model'])} class(es); attribution needs at least two")
        record = ws.manifest.setdefault(KEY, {"attributors": {}})
        record.update(split=ws.write_table("attribution-split", table), split_seed=seed, classes=cls)
        parts = {p: table.index[table["part"] == p].to_numpy() for p in ("train", "val", "test")}
        targets = {p: split_mod.targets(ws, table.iloc[ix], cls) for p, ix in parts.items()}
        loaded: dict[str, np.ndarray] = {}  # space -> float32 artifacts of every row (shared by kinds)
        perturbed: dict[str, list[np.ndarray]] = {}  # space -> per copy, the bank of the train + val rows
        fit_rows = np.concatenate([parts["train"], parts["val"]])
        reprojector = robustness.Reprojector(ws, device=device) if robust else None
        for kind in kinds:
            art_key = artifacts_key(ws, kind)
            # "score" and "accept": the open-set rule trained attributors once carried (now decision.py's); kept
            # so the keys of attributors trained before, the shipped ones too, stay the same
            settings = {"epochs": epochs, "seed": seed, "score": "mahalanobis", "accept": 0.95}
            if robust:  # only then: the keys of plain attributors (and the shipped ones) stay as they were
                settings["robust"] = {"recipe": robustness.recipe(robust_p), "copies": int(robust_copies)}
            key = key_of(VERSION, kind, art_key, record["split"], cls, settings)
            rel = entry_dir(kind, key)
            meta = None if force else ws.verified(rel)
            if meta is not None and (record["attributors"].get(kind) or {}).get("key") != key:
                if "entry" in meta:  # left by a run whose manifest was lost: adopt its record
                    record["attributors"][kind] = {**meta["entry"], "dir": rel, "artifacts": art_key}
                else:
                    meta = None
            if meta is not None:
                log(f"{kind}: up to date (trained before), reused")
                continue
            for s in needs(kind):
                if s not in loaded:
                    log(f"loading the {s} artifacts")
                    loaded[s] = split_mod.load_inputs(ws, table, (s,)).artifacts[s]
            data = Inputs(None, {s: loaded[s] for s in needs(kind)})
            extra = None
            if robust:
                for s in needs(kind):
                    if s not in perturbed:
                        log(f"perturbed {s} banks: {robust_copies} cop{'y' if robust_copies == 1 else 'ies'} of "
                            f"{len(fit_rows)} training and validation images")
                        perturbed[s] = robustness.banks(ws, table, fit_rows, s, robust_copies, p=robust_p,
                                                        reprojector=reprojector, log=log)
                n_train = len(parts["train"])
                extra = {"train": [Inputs(None, {s: perturbed[s][c][:n_train] for s in needs(kind)})
                                   for c in range(robust_copies)],
                         "val": [Inputs(None, {s: perturbed[s][c][n_train:] for s in needs(kind)})
                                 for c in range(robust_copies)]}
            entry = _train_one(ws, kind, key, data, table, parts, targets, cls, epochs=epochs, seed=seed,
                               device=device,
                               on_epoch=(lambda row, k=kind: on_epoch(k, row)) if on_epoch else None, robust=extra)
            entry["artifacts"] = art_key
            if robust:
                entry["robust"] = {**settings["robust"], "val_perturbed": extra["report"]["val_perturbed"],
                                   "train_rows": extra["report"]["train_rows"], "val_rows": extra["report"]["val_rows"]}
            record["attributors"][kind] = entry
            ws.commit()  # resumable: every finished kind is kept
            log(f"{kind}: test accuracy (model) {entry['test']['model']:.3f}, {entry['seconds']:.0f} s")
        ws.commit(collect=("attribution",))
    return accuracy_table(ws, kinds)


def _stack(inputs: list[Inputs]) -> Inputs:
    """The rows of several Inputs (artifacts only) one after the other."""
    return Inputs(None, {s: np.concatenate([x.artifacts[s] for x in inputs]) for s in inputs[0].artifacts})


def _train_one(ws, kind, key, data, table, parts, targets, cls, *, epochs, seed, device, on_epoch,
               robust=None) -> dict:
    """Fit one attributor; write it as a workspace entry; return its manifest entry.

    robust: {"train": [Inputs], "val": [Inputs]}, perturbed copies of the train and val rows (same
    targets) added to what the fit sees; its accuracy on the perturbed val rows goes to robust["report"]."""
    t0 = time.perf_counter()
    shape = tuple(ws.config.get("image_shape") or ()) or None
    method = ManiFPT(kind, epochs=epochs, image_shape=shape, progress=on_epoch)
    x = {p: data.take(ix) for p, ix in parts.items()}
    fit_x, fit_y = {p: x[p] for p in ("train", "val")}, {p: targets[p] for p in ("train", "val")}
    if robust:  # clean rows first, then each perturbed copy with the same targets
        for p in ("train", "val"):
            fit_x[p] = _stack([x[p], *robust[p]])
            fit_y[p] = {h: np.concatenate([t] * (1 + len(robust[p]))) for h, t in targets[p].items()}
    method.fit(fit_x["train"], fit_y["train"], fit_x["val"], fit_y["val"], classes=cls, seed=seed, device=device)
    out = {p: method.features_and_logits(x[p]) for p in ("val", "test")}
    acc = {p: {h: float(np.mean(z.argmax(1) == targets[p][h])) if len(z) else float("nan")
               for h, z in out[p][1].items()} for p in ("val", "test")}
    if robust:
        z = method.features_and_logits(_stack(robust["val"]))[1]["model"]
        y = np.concatenate([targets["val"]["model"]] * len(robust["val"]))
        robust["report"] = {"val_perturbed": {"model": float(np.mean(z.argmax(1) == y)) if len(z) else float("nan")},
                            "train_rows": len(fit_y["train"]["model"]), "val_rows": len(fit_y["val"]["model"])}
    test = table.iloc[parts["test"]][["model", "index"]].reset_index(drop=True)
    for h, z in out["test"][1].items():
        test[f"pred_{h}"] = np.asarray(cls[h])[z.argmax(1)] if len(z) else []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        method.save(folder)
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
    entry = {
        "key": key,
        "val": acc["val"],
        "test": acc["test"],
        "best_epoch": method.best_epoch_,
        "epochs_run": len(method.history_),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    # the entry carries its manifest record, so a rerun after a lost manifest adopts it by name
    entry["dir"] = ws.write_entry(entry_dir(kind, key), {}, {"test.parquet": test}, files, meta={"entry": entry})
    return entry


def entry_dir(kind: str, key: str) -> str:
    """Where an attributor with this key lives in the workspace."""
    return f"attribution/{kind}-{key}"


def accuracy_table(ws: Workspace, kinds: list[str] | None = None) -> pd.DataFrame:
    """Validation and test accuracy per kind and head (long form: kind, head, val, test)."""
    have = stored(ws)
    rows = [{"kind": k, "head": h, "val": have[k]["val"].get(h, np.nan), "test": t}
            for k in (kinds or list(have)) if k in have for h, t in have[k]["test"].items()]
    return pd.DataFrame(rows, columns=["kind", "head", "val", "test"])
