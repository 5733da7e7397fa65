"""The benchmark: every attribution method (the six baselines and ManiFPT per space and fused) on
one workspace, one split, six protocols, in one resumable run.

Protocols (the split is fixed at SPLIT_SEED; a "seed" is the training seed: init, batch order,
augmentation):

    a closed   model-head accuracy on the test split, per seed
    b twins    models whose design was trained with several seeds: train on them only, tell each
               test sample's twins apart (chance 1 / twins), per seed
    c robust   the closed-set models on test images after JPEG 50 / 75 / 90, resizing by 0.5 and
               back (bilinear), Gaussian noise sigma 2/255; ManiFPT's artifacts are recomputed from
               the perturbed images (embedded, projected on the manifold again), per seed
    d lodo     leave one design out (all its seeds): design heads trained on the rest predict the
               held-out models' design choices, per factor vs protocol.chance (the better of the
               majority level and the frequency guess, per training design: the Design page's);
               K seeded designs, first seed only (the folds are the repetitions)
    e openset  whole models held out (protocol.heldout_model_folds): threshold set on one group, AUROC and TPR/FPR
               measured on the next, with openset.py's scores on every method's features/logits;
               first seed only
    f fisher   Fisher discriminant ratio (trace of between- over within-class scatter) of the
               closed-set model's features on the test split, model labels, per seed
    g foreign  with --foreign DIR (generators outside the workspace, never trained or calibrated on):
               the closed-set model's three-step decision (decision.fit on its training and
               validation features) measured by open_world.evaluate: per image, AUROC of foreign
               against known generated test images and the share of foreign images called real
               (beside the share of real test images kept); per set of one source at n = 5, 20, 50,
               the set AUROC and the share of known sets given the right model; first seed only

Layout of the output folder (everything JSON or safetensors/npz; nothing pickled)::

    DIR/parts/<method>/<protocol>-s<seed>.json           one finished part: {"key", "result"}
    DIR/parts/<method>/<protocol>-s<seed>/fold-<i>.json  one finished fold (lodo, openset)
    DIR/models/<method>/s<seed>-<key>/                   the closed-set model (robust and fisher read it)
    DIR/results.json   config, per-part results, summary rows
    DIR/results.csv    summary: method, protocol, metric, mean, std, n, over
    DIR/results.md     methods x protocols, mean ± std

A part is reused when its key (workspace content, method settings, protocol settings) matches; a
changed workspace or setting recomputes only what it changes.

Robust training (Settings.robust, `manifpt bench --robust`): every fit sees the clean training and
validation rows plus `robust_copies` perturbed copies of them (robustness.augment, the recipe of
`manifpt train --robust`): the image-based baselines the perturbed images, ManiFPT the artifacts of
the perturbed images re-projected through each space and its exact manifold (the workspace's banks,
robustness.banks, shared with `manifpt train --robust`). The robust setting is part of every key.

Synthetic unknowns (Settings.synthetic, `bench/openset_scores.py --synthetic`): methods whose fit takes
outliers (ManiFPT) also train on the augmentation nets' traces of the fold's known models' training
images (synthetic.py, outlier exposure); part of their keys when on.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fingerprint_core import devices, protocol
from fingerprint_core.attribution import baselines, open_world, openset, robustness, synthetic
from fingerprint_core.attribution import decision as decision_mod
from fingerprint_core.attribution import sets as sets_mod
from fingerprint_core.attribution import split as split_mod
from fingerprint_core.attribution.bench_report import (
    PROTOCOLS,
    SCORE,
    headline,
    jsonable,
    std_or_zero,
    summarise,
    write_results,
)
from fingerprint_core.attribution.method import Inputs, Method
from fingerprint_core.attribution.robustness import (
    JPEG_QUALITIES,
    JPEG_QUALITY,
    NOISE_SIGMA,
    PERTURBATIONS,
    Reprojector,
    perturb,
)
from fingerprint_core.fsio import atomic_write
from fingerprint_core.pipeline import Progress
from fingerprint_core.workspace import Workspace, key_of

VERSION = 1  # bump when the same settings would give different numbers
# bump when a lodo fold's numbers mean something else (only lodo parts are recomputed). 2: chance,
# unseen and learnable from protocol (chance was the majority level only; unseen counted the real row)
LODO_VERSION = 2
SPLIT_SEED = 0
SEEDS = (0, 1, 2)
LODO_FOLDS = 6  # held-out designs (each a full training run per method); 0 = every design
OPENSET_GROUPS = 5  # each held-out-model fold trains on 3 of 5 groups of models

Factory = Callable[[], Method]


# ---- pure pieces ---------------------------------------------------------------------------------

def fisher_ratio(features: np.ndarray, labels: np.ndarray) -> float:
    """tr(S_B) / tr(S_W): between-class over within-class scatter of the feature rows."""
    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    mu = f.mean(0)
    between = within = 0.0
    for k in np.unique(labels):
        rows = f[labels == k]
        mk = rows.mean(0)
        between += len(rows) * float(np.sum((mk - mu) ** 2))
        within += float(np.sum((rows - mk) ** 2))
    return between / within if within > 0 else float("inf")


def subsample_train(table: pd.DataFrame, per_model: int) -> pd.DataFrame:
    """The split with all but a seeded per_model training rows of each model marked "unused"
    (validation and test rows untouched); per_model <= 0 keeps every row."""
    if per_model <= 0:
        return table
    part = table["part"].to_numpy().copy()
    rng = np.random.default_rng(SPLIT_SEED)
    for model in dict.fromkeys(table["model"]):
        train = np.flatnonzero((table["model"].to_numpy() == model) & (part == "train"))
        if len(train) > per_model:
            part[rng.permutation(train)[per_model:]] = "unused"
    return table.assign(part=part)


# ---- methods -------------------------------------------------------------------------------------

def manifpt_kinds() -> tuple[str, ...]:
    """ManiFPT's attributor kinds (rgb, freq, sl, ssl, fused), or none if the module is missing."""
    try:
        from fingerprint_core.attribution.manifpt import kinds
    except ImportError:
        return ()
    return kinds()


def all_method_names() -> list[str]:
    """Every method the benchmark knows, in table order."""
    return baselines.names() + [f"manifpt-{k}" for k in manifpt_kinds()]


def _capped(cls, params: dict, max_epochs: int) -> dict:
    """params plus epochs = min(the class's default, max_epochs) when the class trains in epochs."""
    default = inspect.signature(cls.__init__).parameters.get("epochs")
    if max_epochs > 0 and default is not None and isinstance(default.default, int):
        return {**params, "epochs": min(default.default, max_epochs)}
    return params


def method_factories(ws: Workspace, names: list[str] | None = None, *, max_epochs: int = 0
                     ) -> tuple[dict[str, Factory], dict[str, str]]:
    """(name -> factory of a fresh method, name -> why it cannot run on this workspace); max_epochs > 0
    caps every epoch-trained method alike."""
    known = all_method_names()
    groups = {"baselines": baselines.names(), "manifpt": [k for k in known if k.startswith("manifpt-")]}
    wanted = []
    for n in names or known:
        match = groups.get(str(n).lower()) or [k for k in known if k.lower() == str(n).lower()]
        if not match:
            raise ValueError(f"unknown method {n!r}; choose from {', '.join(known)} (or 'baselines', 'manifpt')")
        wanted += [m for m in match if m not in wanted]
    factories, skipped = {}, {}
    shape = tuple(int(v) for v in ws.config.get("image_shape", [])) or None
    for name in wanted:
        if name in baselines.BASELINES:
            kw = _capped(baselines.lookup(name), {}, max_epochs)
            factories[name] = lambda name=name, kw=kw: baselines.create(name, **kw)
            continue
        from fingerprint_core.attribution.manifpt import ManiFPT
        from fingerprint_core.attribution.train import available

        kind = name.split("-", 1)[1]
        if kind not in available(ws):
            skipped[name] = f"the workspace has no {kind} artifacts for every model (spaces: {', '.join(ws.space_names())})"
            continue
        kw = _capped(ManiFPT, {"image_shape": shape}, max_epochs)
        factories[name] = lambda kind=kind, kw=kw: ManiFPT(kind, **kw)
    return factories, skipped


def identity(method: Method) -> dict:
    """The settings that make a method's numbers (its part keys): JSON-able public attributes."""
    out = {"class": type(method).__name__, "name": method.name}
    for k, v in vars(method).items():
        if k.startswith("_") or k.endswith("_") or callable(v):
            continue
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out


def workspace_key(ws: Workspace) -> str:
    """Hash of what the numbers depend on in a workspace: images, artifacts, design table."""
    models = {m: {"images": e["images"]["key"], "spaces": {s: v["key"] for s, v in e.get("spaces", {}).items()}}
              for m, e in ws.manifest.get("models", {}).items()}
    return key_of(models, ws.manifest.get("design"), ws.manifest.get("real", {}).get("key"))


def default_out(workspace: str | Path) -> Path:
    """Where a workspace's benchmark goes unless told otherwise (and where the Benchmark page looks
    first): <workspace>-bench beside it. Never inside: a workspace's commit deletes every folder its
    manifest does not name."""
    workspace = Path(workspace)
    return workspace.parent / f"{workspace.name}-bench"


# ---- the run -------------------------------------------------------------------------------------

@dataclass
class Settings:
    """What a bench run was asked for."""

    seeds: tuple[int, ...] = SEEDS
    lodo_folds: int = LODO_FOLDS
    openset_groups: int = OPENSET_GROUPS
    device: str = "auto"
    train_per_model: int = 0  # > 0: a seeded subset of each model's training split (CPU budgets); 0 = all of it
    max_epochs: int = 0  # > 0: caps the epochs of every epoch-trained method alike
    robust: bool = False  # train every method on clean + perturbed copies (robustness.augment)
    robust_copies: int = 1
    robust_p: float = robustness.P
    foreign: str | None = None  # a foreign set's folder (<model>/samples.npz): the g protocol
    foreign_sets: int = open_world.N_SETS  # seeded sets per source and size in the g protocol
    synthetic: bool = False  # methods that take outliers also train on synthetic unknowns (synthetic.py)

    def synthetic_unknowns(self) -> dict | None:
        """The synthetic-unknown setting as data (None when off): part of every part's key."""
        return synthetic.recipe() if self.synthetic else None

    def robust_training(self) -> dict | None:
        """The robust-training setting as data (None when off): part of every part's key."""
        if not self.robust:
            return None
        return {"recipe": robustness.recipe(self.robust_p), "copies": int(self.robust_copies)}


class Bench:
    """One benchmark run over a workspace into an output folder (resumable)."""

    def __init__(self, ws: Workspace, out: str | Path, factories: dict[str, Factory], *,
                 settings: Settings | None = None, skipped: dict[str, str] | None = None,
                 progress: Progress | None = None) -> None:
        self.ws, self.out, self.factories = ws, Path(out), factories
        if self.out.resolve().is_relative_to(ws.path.resolve()):
            raise ValueError(f"the bench folder {self.out} is inside the workspace {ws.path}, whose next commit "
                             "would delete it; pick a folder outside it")
        self.settings = settings or Settings()
        if not self.settings.seeds:
            raise ValueError("give at least one seed")
        if self.settings.lodo_folds < 0:
            raise ValueError(f"lodo_folds={self.settings.lodo_folds} must be >= 0 (0 = every design)")
        if self.settings.openset_groups < 3:
            raise ValueError(f"openset_groups={self.settings.openset_groups} must be >= 3: each fold trains on "
                             "the groups left after one to calibrate and one to test")
        self.skipped = dict(skipped or {})
        self.progress = progress or Progress()
        self.table = subsample_train(split_mod.workspace_split(ws, seed=SPLIT_SEED), self.settings.train_per_model)
        self.classes = split_mod.classes(ws)
        if len(self.classes["model"]) < 2:
            raise ValueError(f"workspace {ws.path} has {len(self.classes['model'])} class(es); the benchmark needs two")
        self.design = ws.design()
        self.generated = ws.model_names()
        self.factors = [h for h in self.classes if h != "model"]  # the design heads every fit trains
        self.lodo_factors = self._lodo_factors()
        self.ws_key = workspace_key(ws)
        self.part = {p: np.flatnonzero(self.table["part"].to_numpy() == p) for p in ("train", "val", "test")}
        self._images: np.ndarray | None = None
        self._arts: dict[str, np.ndarray] = {}
        self._perturbed: dict[tuple[str, str], np.ndarray] = {}
        self._models: dict[tuple[str, int], Method] = {}
        self._reprojector = Reprojector(ws, device=self.settings.device)
        if self.settings.robust and (self.settings.robust_copies < 1 or not 0 < self.settings.robust_p <= 1):
            raise ValueError(f"robust_copies={self.settings.robust_copies} must be >= 1 and "
                             f"robust_p={self.settings.robust_p} in (0, 1]")
        # the rows every fit draws from (train + val); their perturbed copies are made once, on first need
        self._fit_rows = np.flatnonzero(np.isin(self.table["part"].to_numpy(), ("train", "val")))
        self._fit_pos = np.full(len(self.table), -1, np.int64)
        self._fit_pos[self._fit_rows] = np.arange(len(self._fit_rows))
        self._robust: dict[tuple[str, int], np.ndarray] = {}  # (images | space, copy) -> arrays of the fit rows
        self.lodo_plan = self._lodo_plan()
        self.openset_plan = self._openset_plan()
        self._foreign: dict[str, np.ndarray] = {}  # "images" | space -> the foreign images' rows, all models
        self._foreign_names: np.ndarray | None = None
        self._foreign_key = None
        if self.settings.foreign is not None:  # read (and refused, by file) before any training
            loaded = open_world.load_foreign(self.settings.foreign, tuple(int(v) for v in ws.config["image_shape"]))
            self._foreign_key = open_world.foreign_key(loaded)
            self._foreign["images"] = np.concatenate(list(loaded.values()))
            self._foreign_names = np.concatenate([[m] * len(x) for m, x in loaded.items()])

    # -- data ----------------------------------------------------------------------------------
    def inputs(self, needs: tuple[str, ...], rows: np.ndarray) -> Inputs:
        """The rows (positions in the split table) of what a method needs, each array read once."""
        if "images" in needs and self._images is None:
            self._images = split_mod.load_inputs(self.ws, self.table, ("images",)).images
        for s in needs:
            if s != "images" and s not in self._arts:
                self.progress.log(f"loading the {s} artifacts")
                self._arts[s] = split_mod.load_inputs(self.ws, self.table, (s,)).artifacts[s]
        return Inputs(self._images[rows] if "images" in needs else None,
                      {s: self._arts[s][rows] for s in needs if s != "images"})

    def perturbed(self, kind: str, needs: tuple[str, ...]) -> Inputs:
        """The test rows after a perturbation; artifacts recomputed from the perturbed images."""
        test = self.part["test"]
        if (kind, "images") not in self._perturbed:
            self._perturbed[(kind, "images")] = perturb(self.inputs(("images",), test).images, kind)
        images = self._perturbed[(kind, "images")]
        for s in needs:
            if s != "images" and (kind, s) not in self._perturbed:
                self.progress.log(f"re-projecting the {kind} test images in {s}")
                self._perturbed[(kind, s)] = self._reprojector.artifacts(images, s)
        return Inputs(images if "images" in needs else None,
                      {s: self._perturbed[(kind, s)] for s in needs if s != "images"})

    def robust_inputs(self, needs: tuple[str, ...], rows: np.ndarray) -> list[Inputs]:
        """Per perturbed copy, the rows (train or val positions in the split table) of what a method
        needs after robustness.augment (seed = copy, ids = rows): images, or artifacts re-projected."""
        pos = self._fit_pos[rows]
        if (pos < 0).any():
            raise ValueError("robust copies exist only for training and validation rows")
        s = self.settings
        for c in range(s.robust_copies):
            if "images" in needs and ("images", c) not in self._robust:
                images = self.inputs(("images",), self._fit_rows).images
                self._robust[("images", c)] = robustness.augment(images, c, ids=self._fit_rows, p=s.robust_p)
        for space in needs:
            if space != "images" and (space, 0) not in self._robust:
                self.progress.log(f"perturbed {space} banks: {s.robust_copies} copies of {len(self._fit_rows)} images")
                made = robustness.banks(self.ws, self.table, self._fit_rows, space, s.robust_copies, p=s.robust_p,
                                        reprojector=self._reprojector, log=self.progress.log)
                for c, arts in enumerate(made):
                    self._robust[(space, c)] = arts
        return [Inputs(self._robust[("images", c)][pos] if "images" in needs else None,
                       {sp: self._robust[(sp, c)][pos] for sp in needs if sp != "images"})
                for c in range(s.robust_copies)]

    def synthetic_inputs(self, needs: tuple[str, ...], rows: np.ndarray) -> Inputs:
        """Synthetic unknowns for a fit on these training rows: the augmentation nets' traces on a
        seeded subset of each known generated model's rows, re-projected (banks in the workspace)."""
        src = synthetic.source_rows(self.table, rows, split_mod.REAL)
        arts = {}
        for space in needs:
            if space == "images":
                raise ValueError("synthetic unknowns are artifacts; a method reading images does not take them")
            arts[space] = robustness.banks(self.ws, self.table, src, space, 1, transform=synthetic.transform(),
                                           reprojector=self._reprojector, log=self.progress.log)[0]
        return Inputs(None, arts)

    def foreign_inputs(self, needs: tuple[str, ...]) -> dict[str, Inputs]:
        """model -> its foreign images, or their artifacts projected through each space and its exact
        manifold like any user's image (projected once per run)."""
        for s in needs:
            if s != "images" and s not in self._foreign:
                self.progress.log(f"projecting the foreign images in {s}")
                self._foreign[s] = self._reprojector.artifacts(self._foreign["images"], s)
        x = Inputs(self._foreign["images"] if "images" in needs else None,
                   {s: self._foreign[s] for s in needs if s != "images"})
        return {m: x.take(np.flatnonzero(self._foreign_names == m)) for m in dict.fromkeys(self._foreign_names)}

    def targets(self, rows: np.ndarray, classes: dict[str, list[str]]) -> dict[str, np.ndarray]:
        return split_mod.targets(self.ws, self.table.iloc[rows], classes)

    def rows_of(self, models: list[str], part: str | None = None) -> np.ndarray:
        keep = self.table["model"].isin(models).to_numpy().copy()
        if part is not None:
            keep &= self.table["part"].to_numpy() == part
        return np.flatnonzero(keep)

    # -- parts ---------------------------------------------------------------------------------
    def _key(self, name: str, protocol: str, seed: int, fold: int | None = None) -> str:
        extra = {"lodo": [LODO_VERSION, self.lodo_plan],
                 "openset": [[(f.calibration, f.test) for f in self.openset_plan], openset.SCORES, sets_mod.STATISTICS,
                             self.settings.foreign_sets, decision_mod.VERSION, sets_mod.SET_SIZES, sets_mod.REJECT,
                             sets_mod.REJECTS, decision_mod.REAL_KEEPS, decision_mod.REAL_REGION, decision_mod.UNKNOWN_SCORE],
                 "robust": [PERTURBATIONS, JPEG_QUALITIES, NOISE_SIGMA],
                 "foreign": [self._foreign_key, self.settings.foreign_sets, decision_mod.VERSION, decision_mod.REAL_KEEP,
                             decision_mod.REAL_REGION, decision_mod.UNKNOWN_SCORE, decision_mod.FIT_PER_CLASS,
                             sets_mod.STATISTIC, sets_mod.SET_SIZES, sets_mod.REJECT, sets_mod.N_SETS, sets_mod.BANK]}.get(protocol)
        parts = [VERSION, self.ws_key, SPLIT_SEED, self.settings.train_per_model, identity(self.factories[name]()),
                 protocol, seed, fold, extra]
        robust = self.settings.robust_training()
        if robust is not None:  # appended only when on: the keys of clean runs stay as they were
            parts.append({"robust_training": robust})
        if self.settings.synthetic and _takes(self.factories[name](), "outliers"):
            parts.append({"synthetic_unknowns": self.settings.synthetic_unknowns()})
        return key_of(*parts)

    def _path(self, name: str, protocol: str, seed: int, fold: int | None = None) -> Path:
        base = self.out / "parts" / name
        return base / f"{protocol}-s{seed}.json" if fold is None else base / f"{protocol}-s{seed}" / f"fold-{fold}.json"

    def _cached(self, name: str, protocol: str, seed: int, fold: int | None = None) -> dict | None:
        path = self._path(name, protocol, seed, fold)
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return None  # unreadable: computed again
            if saved.get("key") == self._key(name, protocol, seed, fold):
                return saved["result"]
        return None

    def _store(self, name: str, protocol: str, seed: int, result: dict, fold: int | None = None) -> dict:
        path = self._path(name, protocol, seed, fold)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"key": self._key(name, protocol, seed, fold), "result": result}
        atomic_write(path, json.dumps(blob, indent=1, default=jsonable).encode())
        return result

    def _do(self, name: str, protocol: str, seed: int, compute: Callable[[], dict], fold: int | None = None) -> dict:
        """A part from its file if finished before, else computed and saved at once."""
        hit = self._cached(name, protocol, seed, fold)
        label = f"{name} · {protocol} · seed {seed}" + ("" if fold is None else f" · fold {fold}")
        if hit is not None:
            self.reused += 1
        else:
            t0 = time.perf_counter()
            hit = self._store(name, protocol, seed, {**compute(), "seconds": round(time.perf_counter() - t0, 1)}, fold)
            self.computed += 1
            self.progress.log(f"{label}: {headline(protocol, hit)} ({hit['seconds']:.0f} s)")
        self._bar.update(1)
        return hit

    # -- fitting -------------------------------------------------------------------------------
    def _fit(self, name: str, seed: int, classes: dict[str, list[str]], train: np.ndarray, val: np.ndarray) -> Method:
        method = self.factories[name]()
        xs, ys = self.inputs(method.needs, train), self.targets(train, classes)
        xv, yv = self.inputs(method.needs, val), self.targets(val, classes)
        if self.settings.robust:  # clean rows first, then each perturbed copy with the same targets
            xs = _stack([xs, *self.robust_inputs(method.needs, train)])
            xv = _stack([xv, *self.robust_inputs(method.needs, val)])
            k = 1 + self.settings.robust_copies
            ys, yv = ({h: np.concatenate([t] * k) for h, t in y.items()} for y in (ys, yv))
        extra = {}
        if self.settings.synthetic and _takes(method, "outliers"):
            extra["outliers"] = self.synthetic_inputs(method.needs, train)
        method.fit(xs, ys, xv, yv, classes=classes, seed=seed, device=self.settings.device, **extra)
        return method

    def _model_dir(self, name: str, seed: int) -> Path:
        return self.out / "models" / name / f"s{seed}-{self._key(name, 'closed', seed)}"

    def closed_model(self, name: str, seed: int) -> Method:
        """The closed-set model of (method, seed): in memory, saved in DIR/models, or trained now."""
        if (name, seed) in self._models:
            return self._models[(name, seed)]
        folder = self._model_dir(name, seed)
        if self._cached(name, "closed", seed) is not None and (folder / "config.json").is_file():
            cls = type(self.factories[name]())
            takes_device = "device" in inspect.signature(cls.load).parameters
            model = cls.load(folder, device=self.settings.device) if takes_device else cls.load(folder)
        else:
            model = self._fit(name, seed, self.classes, self.part["train"], self.part["val"])
            for old in folder.parent.glob(f"s{seed}-*"):  # an older setting's model of this seed
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
            model.save(folder)
        self._models[(name, seed)] = model
        return model

    # -- protocols -----------------------------------------------------------------------------
    def closed(self, name: str, seed: int) -> dict:
        def compute():
            path = self._path(name, "closed", seed)
            path.unlink(missing_ok=True)  # a stale part must not let closed_model load an old folder
            model = self.closed_model(name, seed)
            test = self.part["test"]
            z = model.logits(self.inputs(model.needs, test))
            y = self.targets(test, self.classes)
            heads = {h: float(np.mean(z[h].argmax(1) == y[h])) for h in self.classes}
            return {"accuracy": heads["model"], "heads": heads, "chance": 1 / len(self.classes["model"]),
                    "n_test": len(test)}
        return self._do(name, "closed", seed, compute)

    def robust(self, name: str, seed: int) -> dict:
        def compute():
            model = self.closed_model(name, seed)
            y = self.targets(self.part["test"], self.classes)["model"]
            return {p: float(np.mean(model.logits(self.perturbed(p, model.needs))["model"].argmax(1) == y))
                    for p in PERTURBATIONS}
        return self._do(name, "robust", seed, compute)

    def fisher(self, name: str, seed: int) -> dict:
        def compute():
            model = self.closed_model(name, seed)
            test = self.part["test"]
            feats = model.features(self.inputs(model.needs, test))
            return {"fdr": fisher_ratio(feats, self.targets(test, self.classes)["model"]), "dim": int(feats.shape[1])}
        return self._do(name, "fisher", seed, compute)

    def twins(self, name: str, seed: int) -> dict:
        groups = protocol.twin_groups(self.design, self.generated)
        if not groups:
            return self._skip(name, "twins", seed, "no design was trained with several seeds")

        def compute():
            models = [m for g in groups for m in g]
            cls = {"model": models}
            method = self._fit(name, seed, cls, self.rows_of(models, "train"), self.rows_of(models, "val"))
            test = self.rows_of(models, "test")
            z = method.logits(self.inputs(method.needs, test))["model"]
            y = self.targets(test, cls)["model"]
            group_of = {models.index(m): [models.index(t) for t in g] for g in groups for m in g}
            # each sample chooses among its own twins only
            pick = np.array([group_of[t][int(np.argmax(z[i, group_of[t]]))] for i, t in enumerate(y)])
            return {"accuracy": float(np.mean(pick == y)), "chance": float(np.mean([1 / len(group_of[t]) for t in y])),
                    "accuracy_all": float(np.mean(z.argmax(1) == y)), "groups": groups, "n_test": len(test)}
        return self._do(name, "twins", seed, compute)

    def _lodo_factors(self) -> list[str]:
        """The design heads leave-one-design-out scores: protocol's factors (two levels among the
        generated models; the real row's levels do not count) that the bench trains a head for."""
        facs = protocol.factors(self.design, self.generated)
        return [f for f in self.factors if f in facs]

    def _lodo_plan(self) -> list[list]:
        """[design id, its models] of the held-out designs: a seeded choice of K (all if K = 0)."""
        if not self.lodo_factors:
            return []
        return [[f.design, list(f.models)]
                for f in protocol.lodo_folds(self.design, self.generated, k=self.settings.lodo_folds, seed=SPLIT_SEED)]

    def lodo(self, name: str, seed: int) -> dict:
        if not self.lodo_plan:
            return self._skip(name, "lodo", seed, "fewer than two designs, or no design column with two levels")
        folds = [self._do(name, "lodo", seed, lambda d=d, m=m: self._lodo_fold(name, seed, d, m), fold=i)
                 for i, (d, m) in enumerate(self.lodo_plan)]
        out = {"folds": folds, "factors": {}}
        for f in self.lodo_factors:
            scored = [x["factors"][f] for x in folds if x["factors"][f].get("learnable", True)]
            if not scored:
                continue  # every held-out design was the only one of its level: nothing to learn from
            acc = [x["accuracy"] for x in scored]
            out["factors"][f] = {"accuracy": float(np.mean(acc)), "std": std_or_zero(acc),
                                 "chance": float(np.mean([x["chance"] for x in scored])),
                                 "vote_accuracy": float(np.mean([x["vote"] for x in scored])), "n_folds": len(scored)}
        return out

    def lodo_truths(self, held_design: str) -> dict[str, protocol.HeldOutLevel]:
        """Per scored factor, the held-out design's truth, chance and flags (protocol.held_out_level)."""
        return {f: protocol.held_out_level(protocol.design_levels(self.design, f, self.generated), held_design)
                for f in self.lodo_factors}

    def _lodo_fold(self, name: str, seed: int, design_id: str, held: list[str]) -> dict:
        table = self.design.astype(str).set_index("model")
        train_models = [m for m in self.ws.model_names(include_real=True) if m not in held]
        cls = {"model": train_models, **{f: sorted(table.loc[train_models, f].unique()) for f in self.factors}}
        method = self._fit(name, seed, cls, self.rows_of(train_models, "train"), self.rows_of(train_models, "val"))
        test = self.rows_of(held, "test")
        z = method.logits(self.inputs(method.needs, test))
        out = {"design": design_id, "models": held, "factors": {}}
        for f, h in self.lodo_truths(design_id).items():
            pred = np.asarray(cls[f])[z[f].argmax(1)]
            levels, votes = np.unique(pred, return_counts=True)
            out["factors"][f] = {"truth": h.truth, "accuracy": float(np.mean(pred == h.truth)),
                                 "vote": float(levels[np.argmax(votes)] == h.truth) if len(pred) else 0.0,
                                 "chance": h.chance, "unseen": h.unseen, "learnable": h.learnable}
        return out

    def _openset_plan(self) -> list:
        try:
            return protocol.heldout_model_folds(self.generated, n_groups=self.settings.openset_groups, seed=SPLIT_SEED)
        except ValueError:
            return []

    def openset(self, name: str, seed: int) -> dict:
        if len(self.openset_plan) < 2 or len(self.generated) < 3:
            return self._skip(name, "openset", seed, "fewer than three generated models")
        folds = [self._do(name, "openset", seed, lambda f=f: self._openset_fold(name, seed, f), fold=i)
                 for i, f in enumerate(self.openset_plan)]
        out = {"folds": folds}
        for kind in openset.SCORES:
            out[kind] = {k: float(np.mean([x[kind][k] for x in folds])) for k in folds[0][kind]}
            out[kind]["auroc_std"] = std_or_zero([x[kind]["auroc"] for x in folds])
        out["sets"] = {}
        for kind, by_n in folds[0]["sets"].items():  # mean over folds per set statistic and size
            out["sets"][kind] = {n: {**{k: float(np.nanmean([x["sets"][kind][n][k] for x in folds])) for k in v},
                                     "auroc_std": std_or_zero([x["sets"][kind][n]["auroc"] for x in folds])}
                                 for n, v in by_n.items()}
        out["real_keep"] = {keep: {**{k: float(np.mean([x["real_keep"][keep][k] for x in folds])) for k in v},
                                   "real_kept_worst": float(min(x["real_keep"][keep]["real_kept"] for x in folds))}
                            for keep, v in folds[0]["real_keep"].items()}
        return out

    def _openset_fold(self, name: str, seed: int, fold) -> dict:
        held = set(fold.held_out)
        cls = dict(self.classes, model=[m for m in self.classes["model"] if m not in held])
        known = [m for m in self.ws.model_names(include_real=True) if m not in held]
        method = self._fit(name, seed, cls, self.rows_of(known, "train"), self.rows_of(known, "val"))

        def seen(rows):
            x = self.inputs(method.needs, rows)
            return method.features(x), method.logits(x)["model"]

        f_tr, _ = seen(self.rows_of(known, "train"))
        y_tr = self.targets(self.rows_of(known, "train"), cls)["model"]
        sets = {s: seen(r) for s, r in (("val", self.rows_of(known, "val")), ("test", self.rows_of(known, "test")),
                                        ("calibration", self.rows_of(list(fold.calibration))),
                                        ("unknown", self.rows_of(list(fold.test))))}
        out = {"calibration": list(fold.calibration), "test": list(fold.test)}
        for kind in openset.SCORES:
            rule = openset.fit(kind, f_tr, y_tr, len(cls["model"]), *sets["val"])
            s = {k: rule.score(*v) for k, v in sets.items()}
            out[kind] = openset.evaluate_fold(s["val"], s["calibration"], s["test"], s["unknown"])
        labels = {p: self.targets(self.rows_of(known, p), cls)["model"] for p in ("val", "test")}
        held = self.table["model"].to_numpy()[self.rows_of(list(fold.test))]
        out["sets"], out["real_keep"] = self._openset_sets(cls["model"], (f_tr, y_tr), (*sets["val"], labels["val"]),
                                         (*sets["test"], labels["test"]), {m: (sets["unknown"][0][held == m],
                                                                               sets["unknown"][1][held == m])
                                                                           for m in dict.fromkeys(held)}, seed)
        return out

    def _openset_sets(self, classes: list[str], train, val, test, unknown: dict, seed: int) -> tuple[dict, dict]:
        """Sets of one source on a held-out-models fold, for every set statistic: the held-out models'
        sets against the known models' test sets (open_world.evaluate, the foreign protocol's code); for
        sets.STATISTIC also at each share of own validation sets rejected in sets.REJECTS ("<kind>@<reject>").
        Also, per image, at each share of real validation images kept in decision.REAL_KEEPS: the real test
        images called real and the held-out models' images called real."""
        f_tr, y_tr = train
        f_te, z_te, y_te = test
        d = decision_mod.fit(classes, (f_tr, None, y_tr), val)
        names = np.asarray(classes)[y_te]
        real = names == split_mod.REAL
        known_te, real_te = (f_te[~real], z_te[~real], names[~real]), (f_te[real], z_te[real])
        real_keep = {}
        for keep in decision_mod.REAL_KEEPS:
            fig = open_world.evaluate(decision_mod.with_real_keep(d, val, keep), known_te, real_te, unknown, sizes=())
            real_keep[f"{keep:g}"] = {"real_kept": fig["real_called_real"], "held_out_called_real": fig["foreign_called_real"]}
        out = {}
        for kind in sets_mod.STATISTICS:
            rule = sets_mod.fit(classes, f_tr, y_tr, val[0], val[2], kind=kind)
            for reject in sets_mod.REJECTS if kind == sets_mod.STATISTIC else (sets_mod.REJECT,):
                d.set_rule = dataclasses.replace(rule, thresholds=sets_mod.thresholds_at(rule.null, reject), reject=reject)
                fig = open_world.evaluate(d, known_te, real_te, unknown, n_sets=self.settings.foreign_sets, seed=seed)
                out[sets_mod.reject_label(kind, reject)] = {str(n): v for n, v in open_world.set_summary(fig).items()}
        return out, real_keep

    def foreign(self, name: str, seed: int) -> dict:
        if self.settings.foreign is None:
            return self._skip(name, "foreign", seed, "no foreign set given (--foreign DIR)")

        def compute():
            model = self.closed_model(name, seed)
            classes = self.classes["model"]

            def seen(x: Inputs) -> tuple[np.ndarray, np.ndarray]:
                if hasattr(model, "features_and_logits"):  # one pass where the method has it
                    f, z = model.features_and_logits(x)
                    return f, z["model"]
                return model.features(x), model.logits(x)["model"]

            def part(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                return (*seen(self.inputs(model.needs, rows)), self.targets(rows, self.classes)["model"])

            fit_rows = self.table.index.get_indexer(decision_mod.part_rows(self.table, "train", decision_mod.FIT_PER_CLASS).index)
            d = decision_mod.fit(classes, part(fit_rows), part(self.part["val"]))
            f, z, y = part(self.part["test"])
            names = np.asarray(classes)[y]
            real = names == split_mod.REAL
            foreign = {m: seen(x) for m, x in self.foreign_inputs(model.needs).items()}
            fig = open_world.evaluate(d, (f[~real], z[~real], names[~real]), (f[real], z[real]), foreign,
                                      n_sets=self.settings.foreign_sets, seed=seed)
            return {"auroc": fig.get("foreign_auroc_open_set", float("nan")),
                    "called_real": fig.get("foreign_called_real", float("nan")), "real_kept": fig["real_called_real"],
                    "per_model_auroc": fig.get("foreign_per_model_auroc", {}), "per_image": fig["per_image"],
                    "sets": {str(n): v for n, v in open_world.set_summary(fig).items()},
                    "right_model_chance": 1 / max(1, len(d.generated())), "models": list(foreign)}
        return self._do(name, "foreign", seed, compute)

    def _skip(self, name: str, protocol: str, seed: int, reason: str) -> dict:
        self._bar.update(1)
        return {"skipped": reason}

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> dict:
        """Every (method, protocol, seed) part, reusing finished ones; writes the results files."""
        s = self.settings
        self.out.mkdir(parents=True, exist_ok=True)
        self.computed = self.reused = 0
        self._t0 = time.perf_counter()
        per_method = 4 * len(s.seeds) + max(1, len(self.lodo_plan)) + max(1, len(self.openset_plan)) + 1
        self._bar = self.progress.task("bench", per_method * len(self.factories))
        parts: dict[str, dict] = {}
        try:
            for name in self.factories:
                p = parts[name] = {proto: {} for proto in PROTOCOLS}
                for seed in s.seeds:
                    p["closed"][f"s{seed}"] = self.closed(name, seed)
                    p["robust"][f"s{seed}"] = self.robust(name, seed)
                    p["fisher"][f"s{seed}"] = self.fisher(name, seed)
                    p["twins"][f"s{seed}"] = self.twins(name, seed)
                first = s.seeds[0]
                p["lodo"][f"s{first}"] = self.lodo(name, first)
                p["openset"][f"s{first}"] = self.openset(name, first)
                p["foreign"][f"s{first}"] = self.foreign(name, first)
                self._models = {k: v for k, v in self._models.items() if k[0] != name}  # free the memory
                write_results(self.out, self.results(parts))
        finally:
            self._bar.close()
        return self.results(parts)

    def results(self, parts: dict[str, dict]) -> dict:
        """The results document: settings, notes, per-part results, summary rows."""
        from fingerprint_core.workspace import versions

        s = self.settings
        return {
            "workspace": str(self.ws.path),
            "workspace_key": self.ws_key,
            "versions": versions(),
            "settings": {"split_seed": SPLIT_SEED, "training_seeds": list(s.seeds), "lodo_folds": s.lodo_folds,
                         "openset_groups": s.openset_groups, "device": s.device, "perturbations": list(PERTURBATIONS),
                         "jpeg_quality": JPEG_QUALITY, "noise_sigma_codes": NOISE_SIGMA, "openset_score": SCORE,
                         "jpeg_qualities": JPEG_QUALITIES, "train_per_model": s.train_per_model,
                         "max_epochs": s.max_epochs, "robust_training": s.robust_training(),
                         "synthetic_unknowns": s.synthetic_unknowns(),
                         "foreign": s.foreign, "foreign_key": self._foreign_key, "foreign_sets": s.foreign_sets},
            "plans": {"lodo": self.lodo_plan, "openset": [{"calibration": list(f.calibration), "test": list(f.test)}
                                                           for f in self.openset_plan],
                      "twins": protocol.twin_groups(self.design, self.generated)},
            "budget": (budget := self.budget(parts)),
            "notes": notes(s, len(self.lodo_plan), len(self.openset_plan), budget),
            "methods": {n: identity(f()) for n, f in self.factories.items()},
            "skipped_methods": self.skipped,
            "skipped_protocols": {proto: r["skipped"] for p in parts.values() for proto, by in p.items()
                                  for r in by.values() if "skipped" in r},
            "parts": parts,
            "summary": summarise(parts, s.seeds),
        }


    def budget(self, parts: dict[str, dict]) -> dict:
        """The CPU budget: torch threads, the CPU, this run's wall seconds, and the seconds each method's
        parts took when computed (reused parts count what they took then)."""
        import torch

        def seconds(r) -> float:
            return float(r.get("seconds", 0.0)) + sum(seconds(f) for f in r.get("folds", []) if isinstance(f, dict))

        per_method = {m: round(sum(seconds(r) for by in p.values() for r in by.values() if isinstance(r, dict)), 1)
                      for m, p in parts.items()}
        return {"threads": torch.get_num_threads(), "cpu": devices.cpu_name(), "device": self.settings.device,
                "load_average": [round(v, 2) for v in os.getloadavg()],
                "run_seconds": round(time.perf_counter() - getattr(self, "_t0", time.perf_counter()), 1),
                "computed_parts": getattr(self, "computed", 0), "reused_parts": getattr(self, "reused", 0),
                "method_seconds": per_method}


def _stack(inputs: list[Inputs]) -> Inputs:
    """The rows of several Inputs one after the other."""
    images = [x.images for x in inputs]
    return Inputs(None if images[0] is None else np.concatenate(images),
                  {s: np.concatenate([x.artifacts[s] for x in inputs]) for s in inputs[0].artifacts})


def _takes(method: Method, name: str) -> bool:
    """Whether the method's fit takes the keyword name."""
    return name in inspect.signature(method.fit).parameters


def notes(s: Settings, n_lodo: int, n_openset: int, budget: dict | None = None) -> list[str]:
    seeds = ",".join(map(str, s.seeds))
    robust = s.robust_training()
    return [
        f"Split fixed at seed {SPLIT_SEED} (70/10/20 per model); training seeds {seeds} change init, batch order, augmentation.",
        ("Training rows: all of each model's 70%." if s.train_per_model <= 0 else
         f"Training rows: a seeded {s.train_per_model} of each model's 70% (the same rows for every method); "
         "validation and test rows: all."),
        ("Epochs: each method's default." if s.max_epochs <= 0 else
         f"Epochs: at most {s.max_epochs} for every epoch-trained method (early stopping on validation as usual)."),
        f"a, b, c, f: mean ± std over training seeds {seeds}; d, e: first seed only, mean ± std over folds.",
        "a closed: model-head test accuracy (the held-out real images are one class).",
        "b twins: models of one design trained with several seeds; each sample chooses among its own twins.",
        ("Training: clean rows only." if robust is None else
         f"Training: robust, every method on the clean training and validation rows plus {s.robust_copies} perturbed "
         f"cop{'y' if s.robust_copies == 1 else 'ies'} (each with p {s.robust_p:g}: JPEG quality 50-100, resize 0.5-1 and "
         "back, noise sigma 0-3/255, blur sigma 0-1 px); ManiFPT on the re-projected artifacts of the perturbed images."),
        *([] if not s.synthetic else [
            f"Synthetic unknowns: ManiFPT also trains on {synthetic.NETS} random augmentation nets' traces of "
            f"{synthetic.PER_MODEL} training images per known model (outlier exposure, weight {synthetic.WEIGHT:g})."]),
        f"c robust: closed-set models on test images after JPEG {', '.join(str(q) for q in JPEG_QUALITIES.values())} "
        f"(headline {JPEG_QUALITY}), resize 0.5 (antialiased bilinear down, bilinear back), noise sigma "
        f"{NOISE_SIGMA:g}/255; ManiFPT's artifacts recomputed from the perturbed images.",
        f"d lodo: {n_lodo} held-out design(s) (seeded choice, --lodo-folds {s.lodo_folds}); per factor, held-out sample accuracy; "
        "chance = the better of two guesses that ignore the fingerprints, counted per training design: always the "
        "most common level (ties split), or a level drawn with the designs' frequencies (the Design page's chance); "
        "a held-out design whose factor has one level among the training designs is not scored.",
        f"e openset: {n_openset} folds of whole models held out; threshold by Youden's J on one group, TPR/FPR on the next; "
        f"{SCORE} score on each method's features (energy on logits in results.json).",
        "f fisher: trace(S_between) / trace(S_within) of the features on the test split, model labels.",
        ("g foreign: not run (no --foreign DIR)." if s.foreign is None else
         f"g foreign: the foreign set {s.foreign} (never trained or calibrated on); each closed-set model (first seed) "
         "with its three-step decision fitted on its training and validation features (real first at "
         f"{decision_mod.REAL_KEEP:.0%} of real validation images kept, then the {decision_mod.UNKNOWN_SCORE} unknown score); "
         "AUROC of foreign against known generated test images (real excluded), share of foreign images called real, "
         f"share of real test images kept; {s.foreign_sets} seeded sets per source and size n: set AUROC foreign vs known, "
         "share of known sets given the right model (chance 1 / generated models)."),
    ] + ([] if budget is None else [
        f"CPU budget: {budget['threads']} torch thread(s) on {budget['cpu']} (device {budget['device']}, load average "
        f"{' '.join(f'{v:.2f}' for v in budget['load_average'])}); this run {budget['run_seconds']:.0f} s "
        f"({budget['computed_parts']} parts computed, {budget['reused_parts']} reused); seconds per method, as computed: "
        + ", ".join(f"{m} {v:.0f}" for m, v in budget["method_seconds"].items()) + "."])


def run(ws: Workspace, out: str | Path, *, methods: list[str] | dict[str, Factory] | None = None,
        seeds: tuple[int, ...] = SEEDS, lodo_folds: int = LODO_FOLDS, openset_groups: int = OPENSET_GROUPS,
        device: str = "auto", train_per_model: int = 0, max_epochs: int = 0, robust: bool = False,
        robust_copies: int = 1, robust_p: float = robustness.P, foreign: str | Path | None = None,
        foreign_sets: int = open_world.N_SETS, progress: Progress | None = None) -> dict:
    """Run (or resume) the benchmark of a workspace into out; returns the results document.

    methods: names (default: every baseline and ManiFPT kind the workspace allows) or a dict of
    name -> factory (tests pass tiny settings this way).
    """
    if isinstance(methods, dict):
        factories, skipped = dict(methods), {}
    else:
        factories, skipped = method_factories(ws, methods, max_epochs=max_epochs)
    if not factories:
        raise ValueError("no method can run on this workspace: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    settings = Settings(tuple(int(s) for s in seeds), int(lodo_folds), int(openset_groups), device,
                        int(train_per_model), int(max_epochs), bool(robust), int(robust_copies), float(robust_p),
                        None if foreign is None else str(foreign), int(foreign_sets))
    return Bench(ws, out, factories, settings=settings, skipped=skipped, progress=progress).run()
