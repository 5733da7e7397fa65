"""The learned level of a fingerprint: the penultimate features of a design-blind attributor.

Per space, the existing attributor network (compact ResNet for RGB/FREQ, MLP for SL/SSL) is trained
with a model head only: every generated model and "real" are the classes, and nothing here ever
reads the design table (a test relabels the designs and gets bit-identical weights). Maps and
metrics use the features of the attribution split's test samples, which it never trained on.

Each space's attributor and its test features are one workspace entry (learned/<space>-<key>), with
the manifest's "learned" record; the demo ships the weights (assets/demo/learned), installed when
the workspace's artifacts are the ones they were trained on, so the demo needs no training.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fingerprint_core.analysis import model_level
from fingerprint_core.attribution import split as split_mod
from fingerprint_core.attribution.manifpt import ManiFPT
from fingerprint_core.attribution.method import Inputs
from fingerprint_core.pipeline import Progress
from fingerprint_core.workspace import Workspace, key_of

VERSION = "learned-v1"
KEY = "learned"  # the manifest's record: {space: {key, dir, artifacts, val_accuracy, test_accuracy, seconds}}
FEATURES = "features.npy"  # float32 N x 128: penultimate features of the test samples
ROWS = "rows.parquet"  # model, index of every feature row


@dataclass(frozen=True)
class LearnedSettings:
    """Every choice that changes the learned fingerprints (part of their key)."""

    # Chosen by bench/learned_settings.py (validation accuracy of the model head, a design-blind
    # criterion) within the budget of the learned leave-one-design-out (60 min): every training row
    # (1,400 per model) reaches 0.78 in RGB against 0.67 with 600; 16 epochs add under 0.02 and took
    # the 22 folds over the budget, 8 epochs took 16 min on a 2-core AMD EPYC (Zen 5), not idle.
    epochs: int = 8
    train_per_model: int = 1400  # a seeded subset of each model's training split (all of it on the demo)
    val_per_model: int = 150
    seed: int = 0


def models_of(ws: Workspace, exclude: tuple[str, ...] = ()) -> list[str]:
    """The classes: every model with fingerprints and the held-out real images, in workspace order."""
    return [m for m in ws.model_names(include_real=True) if m not in exclude]


def artifacts_key(ws: Workspace, space: str, models: list[str]) -> str:
    """What the learned fingerprints of a space are made from: each model's artifact entry."""
    return key_of({m: ws.manifest["models"][m]["spaces"][space]["key"] for m in models})


def entry_key(ws: Workspace, space: str, s: LearnedSettings, exclude: tuple[str, ...] = ()) -> str:
    models = models_of(ws, exclude)
    return key_of(VERSION, space, artifacts_key(ws, space, models), models, asdict(s), sorted(exclude))


def split_rows(ws: Workspace, s: LearnedSettings, models: list[str]) -> dict[str, pd.DataFrame]:
    """train / val / test rows (model, index) of the attribution split (stratified by model only), the
    training and validation parts cut to seeded subsets per model."""
    table = split_mod.workspace_split(ws, seed=0)
    table = table[table["model"].isin(models)]
    rng = np.random.default_rng(s.seed)
    out = {}
    for part, cap in (("train", s.train_per_model), ("val", s.val_per_model), ("test", 0)):
        rows = table[table["part"] == part]
        if cap > 0:
            keep = [g.iloc[np.sort(rng.permutation(len(g))[:cap])] for _, g in rows.groupby("model", sort=False)]
            rows = pd.concat(keep) if keep else rows
        out[part] = rows[["model", "index"]].reset_index(drop=True)
    return out


def _model_targets(rows: pd.DataFrame, models: list[str]) -> dict[str, np.ndarray]:
    lookup = {m: i for i, m in enumerate(models)}
    return {"model": rows["model"].map(lookup).to_numpy(np.int64)}


def train_design_blind(ws: Workspace, space: str, s: LearnedSettings, *, device: str = "auto",
                       exclude: tuple[str, ...] = (), on_epoch=None) -> tuple[ManiFPT, dict[str, pd.DataFrame]]:
    """The design-blind attributor of one space (model head only), trained without the excluded models."""
    models = models_of(ws, exclude)
    rows = split_rows(ws, s, models)
    data = {p: split_mod.load_inputs(ws, r, (space,)) for p, r in rows.items() if p != "test"}
    shape = tuple(ws.config.get("image_shape") or ()) or None
    method = ManiFPT(space, epochs=s.epochs, image_shape=shape, progress=on_epoch)
    method.fit(data["train"], _model_targets(rows["train"], models), data["val"], _model_targets(rows["val"], models),
               classes={"model": models}, seed=s.seed, device=device)
    return method, rows


def features_of(ws: Workspace, method: ManiFPT, rows: pd.DataFrame) -> np.ndarray:
    """float32 penultimate features of the rows' artifacts."""
    x: Inputs = split_mod.load_inputs(ws, rows, method.needs)
    return method.features(x)


def compute(ws: Workspace, space: str, s: LearnedSettings, *, device: str = "auto", progress: Progress | None = None) -> dict:
    """Train the design-blind attributor of a space, take its test features, write the entry; returns its record."""
    progress = progress or Progress()
    t0 = time.perf_counter()
    bar = progress.task(f"learned fingerprints ({space}): training", s.epochs)
    method, rows = train_design_blind(ws, space, s, device=device, on_epoch=lambda row: bar.update(1))
    bar.close()
    return _store(ws, space, s, method, rows["test"], time.perf_counter() - t0)


def _store(ws: Workspace, space: str, s: LearnedSettings, method: ManiFPT, test: pd.DataFrame, seconds: float) -> dict:
    models = models_of(ws)
    feats, logits = method.features_and_logits(split_mod.load_inputs(ws, test, method.needs))  # one pass for both
    z = logits["model"]
    with tempfile.TemporaryDirectory() as tmp:
        method.save(Path(tmp))
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    history = method.history_ or [{}]
    record = {"key": entry_key(ws, space, s), "artifacts": artifacts_key(ws, space, models),
              "settings": asdict(s), "val_accuracy": float(max(h.get("val_acc", {}).get("model", float("nan")) for h in history)),
              "test_accuracy": float(np.mean(z.argmax(1) == _model_targets(test, models)["model"])) if len(test) else float("nan"),
              "n_test": len(test), "seconds": round(seconds, 1)}
    record["dir"] = ws.write_entry(f"learned/{space}-{record['key']}", {FEATURES: feats.astype(np.float32)},
                                   {ROWS: test}, files, meta={"record": record})
    return record


def install_record(ws: Workspace, space: str, record: dict) -> None:
    """Name an entry in the manifest (under the writer lock; the caller commits)."""
    ws.manifest.setdefault(KEY, {})[space] = record


def current(ws: Workspace, space: str, s: LearnedSettings) -> dict | None:
    """The learned record of a space when it is up to date and intact (adopting an entry left by a lost manifest)."""
    if not all(ws.has(m, space) for m in models_of(ws)):
        return None
    key = entry_key(ws, space, s)
    have = (ws.manifest.get(KEY) or {}).get(space) or {}
    rel = f"learned/{space}-{key}"
    meta = ws.verified(rel)
    if meta is None:
        return None
    if have.get("key") == key:
        return have
    return {**meta["record"], "dir": rel} if "record" in meta else None


def ensure(ws: Workspace, spaces: list[str], s: LearnedSettings, *, device: str = "auto",
           progress: Progress | None = None, wait_s: float = 3600.0) -> dict[str, dict]:
    """The up-to-date learned record of every space, training what is missing; each space is committed
    as soon as it is done (resumable)."""
    out = {}
    for space in spaces:
        record = current(ws, space, s)
        if record is None:
            record = compute(ws, space, s, device=device, progress=progress)
        if (ws.manifest.get(KEY) or {}).get(space) != record:
            with ws.writing(wait_s=wait_s):  # reloads what another writer committed meanwhile
                install_record(ws, space, record)
                ws.commit()
        out[space] = record
    return out


def load(ws: Workspace, record: dict) -> tuple[np.ndarray, pd.DataFrame]:
    """(float32 features, rows: model, index) of a learned record."""
    return np.asarray(ws._npy(record["dir"], FEATURES), dtype=np.float32), ws._parquet(f"{record['dir']}/{ROWS}")


def attributor(ws: Workspace, record: dict, *, device: str = "cpu") -> ManiFPT:
    """The design-blind attributor of a learned record."""
    return ManiFPT.load(ws.file(record["dir"]), device=device)


# ---- shipping with a dataset (the demo) ------------------------------------------------------------

SHIPPED = ("weights.safetensors", "config.json")


def export(ws: Workspace, folder: Path) -> list[str]:
    """Write the learned attributors (weights in float16, the standardisation in float32) and their
    records into folder, one subfolder per space; folder is new, empty or a previous learned export."""
    import torch
    from safetensors.torch import load_file, save

    from fingerprint_core.fsio import atomic_write

    folder = Path(folder)
    if folder.is_dir() and any(p.name not in ws.space_names() or not (p / "record.json").is_file() for p in folder.iterdir()):
        raise ValueError(f"{folder} holds files that are not a learned export; choose an empty or new folder")
    done = []
    for space, record in (ws.manifest.get(KEY) or {}).items():
        (folder / space).mkdir(parents=True, exist_ok=True)
        state = load_file(str(ws.file(record["dir"]) / "weights.safetensors"))
        small = {k: (v.to(torch.float16) if v.is_floating_point() and "standardize" not in k else v) for k, v in state.items()}
        atomic_write(folder / space / "weights.safetensors", save(small))
        atomic_write(folder / space / "config.json", (ws.file(record["dir"]) / "config.json").read_bytes())
        atomic_write(folder / space / "record.json", json.dumps({k: v for k, v in record.items() if k != "dir"}, indent=1).encode())
        done.append(space)
    return done


def install(ws: Workspace, folder: Path, s: LearnedSettings = LearnedSettings()) -> tuple[list[str], list[str]]:
    """Install shipped learned attributors whose artifacts match the workspace's: recompute the test
    features from the weights (seconds), no training. Returns (installed spaces, reasons for the rest)."""
    folder = Path(folder)
    installed, why = [], []
    for sub in sorted(p for p in folder.iterdir() if (p / "record.json").is_file()):
        space = sub.name
        shipped = json.loads((sub / "record.json").read_text())
        if space not in ws.space_names() or current(ws, space, s) is not None:
            continue
        if shipped.get("key") != entry_key(ws, space, s):
            why.append(f"shipped learned fingerprints ({space}): the workspace's artifacts or settings differ from those "
                       f"they were made from; `manifpt analyze {ws.path}` trains them")
            continue
        method = ManiFPT.load(sub)
        test = split_rows(ws, s, models_of(ws))["test"]
        record = _store(ws, space, s, method, test, float(shipped.get("seconds", 0.0)))
        with ws.writing(wait_s=60):
            install_record(ws, space, record)
            ws.commit()
        installed.append(space)
    return installed, why


# ---- leave one design out at the learned level (`manifpt analyze WS --lodo-learned`) ------------------
# The rule, fixed before the first run and not tuned on the scores: retrain the design-blind attributor
# without every model of the held-out design (all its seeds); standardise the features on the training
# models' test samples; give each held-out test sample the factor levels of the nearest class mean
# (Euclidean) among the non-real training models; score per sample and by the majority over the design.

LODO = "lodo_learned"
FOLD = "fold.json"


def fold_key(ws: Workspace, space: str, s: LearnedSettings, design: str, held: tuple[str, ...]) -> str:
    return key_of(VERSION, "lodo", space, design, entry_key(ws, space, s, exclude=held))


def lodo_fold(ws: Workspace, space: str, s: LearnedSettings, design: str, held: tuple[str, ...], table: pd.DataFrame,
              *, device: str = "auto") -> dict:
    """One fold: what the nearest training models' design says about the held-out design."""
    from fingerprint_core import protocol

    method, _ = train_design_blind(ws, space, s, device=device, exclude=held)
    train_models = [m for m in models_of(ws, held) if m != split_mod.REAL]
    test = split_rows(ws, s, [*train_models, *held])["test"]
    feats = features_of(ws, method, test)
    names = test["model"].to_numpy().astype(str)
    seen = np.isin(names, train_models)
    out_z = feats[~seen]
    nearest = nearest_models(feats[seen], names[seen], train_models, out_z)
    t = table.astype(str).set_index("model")
    result = {"design": design, "models": list(held), "n": int(len(out_z)), "factors": {}}
    for factor in protocol.factors(table):
        levels = protocol.design_levels(table, factor)
        h = protocol.held_out_level(levels, design)
        pred = t.loc[list(nearest), factor].to_numpy() if len(out_z) else np.array([])
        values, votes = np.unique(pred, return_counts=True)
        result["factors"][factor] = {"truth": h.truth, "accuracy": float(np.mean(pred == h.truth)) if len(pred) else float("nan"),
                                     "predicted": str(values[np.argmax(votes)]) if len(values) else None,
                                     "chance": h.chance, "unseen": h.unseen, "learnable": h.learnable}
    return result


def nearest_models(ref: np.ndarray, ref_names: np.ndarray, models: list[str], query: np.ndarray) -> np.ndarray:
    """The rule of leave-one-design-out: standardise on the training models' samples (ref), give each
    query row the training model whose class mean is nearest (Euclidean)."""
    if not len(query):
        return np.array([], dtype=str)
    fit = np.r_[np.ones(len(ref), bool), np.zeros(len(query), bool)]
    z = model_level.standardise(np.concatenate([ref, query]), fit)
    z_ref, z_query = z[: len(ref)], z[len(ref):]
    centres = np.stack([z_ref[ref_names == m].mean(0) for m in models])
    return np.asarray(models)[((z_query[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)]


def unknown_source_design(ws: Workspace, arts: dict[str, np.ndarray], s: LearnedSettings = LearnedSettings()) -> dict:
    """Design choices for a set from an unknown source, by the leave-one-design-out rule: the majority
    of the nearest known models at the learned level; each factor's p is that rule's measured
    reliability (the share of held-out designs whose majority was right, from `--lodo-learned`)."""
    from fingerprint_core.attribution.method import Inputs

    summary = lodo_summary(ws)
    for space in [x for x in summary if x in arts]:
        record = current(ws, space, s)
        if record is None:
            continue
        ref, rows = load(ws, record)
        names = rows["model"].to_numpy().astype(str)
        known = [m for m in models_of(ws) if m != split_mod.REAL]
        keep = np.isin(names, known)
        query = attributor(ws, record).features(Inputs(None, {space: arts[space]}))
        nearest = nearest_models(ref[keep], names[keep], known, query)
        values, votes = np.unique(nearest, return_counts=True)
        model = str(values[np.argmax(votes)])
        table = ws.design().astype(str).set_index("model")
        out = {}
        for factor, m in summary[space].items():
            if factor in table.columns:
                right = sum(f["predicted"] == f["truth"] for f in m["folds"])
                out[factor] = {"value": table.loc[model, factor], "p": round(m["vote_accuracy"], 4),
                               "nearest_model": model, "space": space,
                               "reliability": f"majority right for {right} of {len(m['folds'])} held-out designs"}
        return out
    return {}


def lodo(ws: Workspace, space: str, s: LearnedSettings = LearnedSettings(), *, device: str = "auto",
         progress: Progress | None = None, only: list[str] | None = None) -> dict:
    """Run (or resume) every fold of the learned leave-one-design-out in one space; finished folds are kept."""
    from fingerprint_core import protocol

    progress = progress or Progress()
    table = ws.design().astype(str)
    table = table[table["model"].isin(ws.model_names())].reset_index(drop=True)
    folds = [f for f in protocol.lodo_folds(table) if only is None or f.design in only]
    bar = progress.task(f"learned leave-one-design-out ({space})", len(folds))
    for f in folds:
        rel = f"lodo/{space}-{fold_key(ws, space, s, f.design, f.models)}"
        if not ws.intact(rel):
            t0 = time.perf_counter()
            result = lodo_fold(ws, space, s, f.design, f.models, table, device=device)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            ws.write_entry(rel, {}, files={FOLD: json.dumps(result, indent=1).encode()})
        with ws.writing(wait_s=3600.0):
            record = ws.manifest.setdefault(LODO, {}).setdefault(space, {"folds": {}})
            record["settings"] = asdict(s)
            record["folds"][f.design] = rel
            ws.commit()
        bar.update()
    bar.close()
    return lodo_summary(ws).get(space, {})


def lodo_summary(ws: Workspace) -> dict:
    """Per space and factor: mean per-sample accuracy over the scored folds, chance, majority-vote
    accuracy and the folds, from the finished fold entries the manifest names."""
    out: dict = {}
    for space, record in (ws.manifest.get(LODO) or {}).items():
        folds = []
        for rel in record.get("folds", {}).values():
            if ws.intact(rel):
                folds.append(json.loads((ws.file(rel) / FOLD).read_text()))
        factors = sorted({f for x in folds for f in x["factors"]})
        out[space] = {}
        for factor in factors:
            scored = [x for x in folds if x["factors"].get(factor, {}).get("learnable")]
            if not scored:
                continue
            acc = [x["factors"][factor]["accuracy"] for x in scored]
            out[space][factor] = {
                "accuracy": float(np.nanmean(acc)),
                "chance": float(np.mean([x["factors"][factor]["chance"] for x in scored])),
                "vote_accuracy": float(np.mean([x["factors"][factor]["predicted"] == x["factors"][factor]["truth"] for x in scored])),
                "folds": [{"design": x["design"], "models": x["models"], "n": x["n"], **x["factors"][factor]} for x in scored],
            }
    return out


def export_lodo(ws: Workspace, folder: Path) -> int:
    """Write the finished learned leave-one-design-out folds into folder/<space>/ (one JSON per fold, with its key)."""
    from fingerprint_core.fsio import atomic_write

    n = 0
    for space, record in (ws.manifest.get(LODO) or {}).items():
        (Path(folder) / space).mkdir(parents=True, exist_ok=True)
        for i, rel in enumerate(record.get("folds", {}).values()):
            doc = {"entry": Path(rel).name, "fold": json.loads((ws.file(rel) / FOLD).read_text())}
            atomic_write(Path(folder) / space / f"fold-{i:02d}.json", json.dumps(doc, indent=1).encode())
            n += 1
    return n


def install_lodo(ws: Workspace, folder: Path, s: LearnedSettings = LearnedSettings()) -> tuple[int, list[str]]:
    """Install shipped folds whose keys match this workspace's (same artifacts, designs and settings)."""
    from fingerprint_core import protocol

    table = ws.design().astype(str)
    table = table[table["model"].isin(ws.model_names())].reset_index(drop=True)
    installed, why = 0, []
    for sub in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        space = sub.name
        if space not in ws.space_names():
            continue
        wanted = {f"{space}-{fold_key(ws, space, s, f.design, f.models)}": f.design for f in protocol.lodo_folds(table)}
        shipped = [json.loads(p.read_text()) for p in sorted(sub.glob("fold-*.json"))]
        matching = [d for d in shipped if d["entry"] in wanted]
        if len(matching) < len(shipped):
            why.append(f"shipped learned leave-one-design-out ({space}): {len(shipped) - len(matching)} fold(s) were made "
                       f"from other artifacts or settings; `manifpt analyze {ws.path} --lodo-learned` recomputes them")
        if not matching:
            continue
        with ws.writing(wait_s=60):
            record = ws.manifest.setdefault(LODO, {}).setdefault(space, {"folds": {}})
            record["settings"] = asdict(s)
            for d in matching:
                rel = ws.write_entry(f"lodo/{d['entry']}", {}, files={FOLD: json.dumps(d["fold"], indent=1).encode()})
                record["folds"][wanted[d["entry"]]] = rel
                installed += 1
            ws.commit()
    return installed, why
