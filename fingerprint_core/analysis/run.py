"""`manifpt analyze`: the fingerprint map, spectra and design-choice metrics of a workspace,
computed once and cached in it (keyed by the fingerprints they were made from)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fingerprint_core import protocol
from fingerprint_core import spaces as space_registry
from fingerprint_core.analysis import design, fingerprint_map, learned, levels, model_level, spectra
from fingerprint_core.pipeline import Progress
from fingerprint_core.workspace import REAL, Workspace, WorkspaceError, key_of

ANALYSIS_VERSION = "analysis-v4"  # v4: three levels with design nulls; designs, folds and chance from protocol
WAIT_FOR_WRITER_S = 3600.0


@dataclass(frozen=True)
class Settings:
    """Every choice that changes a number (part of the cache key)."""

    seed: int = 0
    pca_components: int = 50
    metric_samples_per_model: int = 300  # per-sample rows per model for NMI / silhouette / LOMO
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    kmeans_restarts: int = 10
    bootstrap: int = 200


def _fingerprints(ws: Workspace, space: str, models: list[str], per_model: int | None, seed: int):
    """Stacked float32 artifacts of the models (optionally a seeded subsample each) and their rows."""
    rng = np.random.default_rng(seed)
    parts, rows = [], []
    for m in models:
        a = ws.artifacts(m, space)
        idx = np.arange(len(a)) if per_model is None or len(a) <= per_model else np.sort(rng.choice(len(a), per_model, replace=False))
        parts.append(np.asarray(a[idx], dtype=np.float32))
        rows.append(pd.DataFrame({"model": m, "index": idx}))
    return np.concatenate(parts), pd.concat(rows, ignore_index=True)


def generated_design(ws: Workspace) -> pd.DataFrame:
    """The design table of the generated models that have fingerprints (the real row left out)."""
    table = ws.design().astype(str)
    return table[table["model"].isin(ws.model_names()) & (table["model"] != REAL)].reset_index(drop=True)


def design_metrics(ws: Workspace, space: str, s: Settings) -> dict:
    """The raw level: NMI (design bootstrap interval, design-permutation null) and silhouette per test
    group, and leave-one-design-out accuracy (LDA on the reduced artifacts) per factor."""
    table = generated_design(ws)
    feats, rows = _fingerprints(ws, space, list(table["model"]), s.metric_samples_per_model, s.seed)
    reduced = fingerprint_map.reduce(feats, n_components=s.pca_components, seed=s.seed)
    sample_models = rows["model"].to_numpy().astype(str)
    tests = levels.groups(table)
    out = levels.per_sample(reduced, sample_models, table, tests, seed=s.seed, restarts=s.kmeans_restarts, n_boot=s.bootstrap)
    out["lomo"] = {}
    design_id = rows["model"].map(protocol.design_id(table)).to_numpy()  # same choices = same design, any seed
    per_sample = rows.merge(table, on="model", how="left")
    for g in tests:
        if g.strata is not None:
            continue  # leave-one-design-out predicts a level; holding another factor fixed is a test of the nulls only
        keep = np.isin(sample_models, g.models)
        labels = per_sample[g.factor].to_numpy()[keep]
        lodo = design.leave_one_design_out(reduced[keep], labels, design_id[keep], sample_models[keep], factor=g.name, seed=s.seed)
        out["lomo"][g.name] = {
            "accuracy": lodo.accuracy,
            "chance": lodo.chance,
            "vote_accuracy": lodo.vote_accuracy,
            "folds": [f.__dict__ for f in lodo.folds],
        }
    return out


def analysed_spaces(ws: Workspace) -> list[str]:
    """The spaces every model (the held-out real set included) has fingerprints in."""
    return [sp for sp in ws.space_names() if all(ws.has(m, sp) for m in ws.model_names(include_real=True))]


def analysis_key(ws: Workspace, settings: dict) -> str:
    """The cache key of an analysis: its settings and the fingerprints and design table it reads."""
    spaces = analysed_spaces(ws)
    sources = {m: {sp: ws.manifest["models"][m]["spaces"][sp]["key"] for sp in spaces} for m in ws.model_names(include_real=True)}
    return key_of(ANALYSIS_VERSION, settings, sources, ws.manifest.get("design"))


def analyze(ws: Workspace, *, settings: Settings | None = None, progress: Progress | None = None, force: bool = False,
            levels_wanted: tuple[str, ...] | list[str] = levels.LEVELS, device: str = "auto",
            learned_settings: learned.LearnedSettings | None = None) -> dict:
    """Compute (or reuse) every analysis of the workspace at the wanted levels; returns the metrics summary.

    The learned and model levels train the design-blind attributors first when they are missing
    (each space committed as soon as it is done)."""
    s = settings or Settings()
    ls = learned_settings or learned.LearnedSettings()
    progress = progress or Progress()
    wanted = tuple(v for v in levels.LEVELS if v in set(levels_wanted))
    bad = sorted(set(levels_wanted) - set(levels.LEVELS))
    if bad or not wanted:
        raise ValueError(f"levels {', '.join(bad) or '(none)'}: choose from {', '.join(levels.LEVELS)}")
    spaces = analysed_spaces(ws)
    records: dict[str, dict] = {}
    if "learned" in wanted or "model" in wanted:
        records = learned.ensure(ws, spaces, ls, device=device, progress=progress)  # reloads the manifest
    key = analysis_key(ws, {**s.__dict__, "levels": list(wanted), "learned": {sp: r["key"] for sp, r in records.items()},
                            "permutations": levels.PERMUTATIONS})
    cached = ws.manifest.get("analysis")
    if cached and cached.get("key") == key and not force and ws.intact(cached["dir"]):
        metrics = json.loads((ws.path / cached["dir"] / "metrics.json").read_text())
        return with_learned_lodo(ws, metrics)
    if ws.busy():
        raise WorkspaceError(f"workspace {ws.path} is being written by another run (fingerprint or train); "
                             "run `manifpt analyze` when it has finished")
    models = ws.model_names(include_real=True)
    code = {m: i for i, m in enumerate(models)}
    table = generated_design(ws)
    tests = levels.groups(table)
    arrays: dict[str, np.ndarray] = {"models.npy": np.array(models)}
    metrics: dict = {"settings": {**s.__dict__, "levels": list(wanted), "learned": {sp: r["key"] for sp, r in records.items()},
                                  "permutations": levels.PERMUTATIONS},
                     "spaces": spaces, "nmi": {}, "silhouette": {}, "lomo": {}}
    raw: dict = {"nmi": {}, "lodo": {}, "silhouette": {}, "purity": {}}
    for sp in spaces:
        bar = progress.task(f"raw level ({sp}): fingerprint map", 1)
        feats, rows = _fingerprints(ws, sp, models, None, s.seed)
        reduced = fingerprint_map.reduce(feats, n_components=s.pca_components, seed=s.seed)
        xy = fingerprint_map.umap_2d(reduced, seed=s.seed, n_neighbors=s.umap_neighbors, min_dist=s.umap_min_dist)
        arrays[f"umap_{sp}.npy"] = xy
        arrays[f"umap_{sp}_model.npy"] = rows["model"].map(code).to_numpy(np.int32)
        arrays[f"umap_{sp}_index.npy"] = rows["index"].to_numpy(np.int64)
        raw["purity"][sp] = levels.purity(xy, rows["model"].to_numpy(), seed=s.seed)
        bar.update()
        bar.close()
        bar = progress.task(f"raw level ({sp}): NMI, silhouette, leave-one-design-out", 1)
        d = design_metrics(ws, sp, s)
        metrics["nmi"][sp] = {f: v["value"] for f, v in d["nmi"].items()}
        metrics["silhouette"][sp] = {f: v["value"] for f, v in d["silhouette"].items()}
        metrics["lomo"][sp] = {f: {"accuracy": v["accuracy"], "chance": v["chance"]} for f, v in d["lomo"].items()}
        raw["nmi"][sp], raw["silhouette"][sp] = d["nmi"], d["silhouette"]
        raw["lodo"][sp] = {f: {"accuracy": v["accuracy"], "chance": v["chance"], "folds": v["folds"]} for f, v in d["lomo"].items()}
        bar.update()
        bar.close()
    found: dict = {}
    if "raw" in wanted:
        found["raw"] = raw
    learned_feats = {sp: learned.load(ws, r) for sp, r in records.items()}  # features as stored, and their rows
    if "learned" in wanted:
        found["learned"] = {"nmi": {}, "lodo": {}, "silhouette": {}, "purity": {}}
        for sp, (f, rows) in learned_feats.items():
            bar = progress.task(f"learned level ({sp}): map, NMI, silhouette", 1)
            z = model_level.standardise(f)
            xy = fingerprint_map.umap_2d(z, seed=s.seed, n_neighbors=s.umap_neighbors, min_dist=s.umap_min_dist)
            arrays[f"umap_learned_{sp}.npy"] = xy
            arrays[f"umap_learned_{sp}_model.npy"] = rows["model"].map(code).to_numpy(np.int32)
            arrays[f"umap_learned_{sp}_index.npy"] = rows["index"].to_numpy(np.int64)
            gen = (rows["model"] != REAL).to_numpy()
            d = levels.per_sample(z[gen], rows["model"].to_numpy()[gen], table, tests, seed=s.seed,
                                  restarts=s.kmeans_restarts, n_boot=s.bootstrap)
            found["learned"]["nmi"][sp], found["learned"]["silhouette"][sp] = d["nmi"], d["silhouette"]
            found["learned"]["purity"][sp] = levels.purity(xy, rows["model"].to_numpy(), seed=s.seed)
            bar.update()
            bar.close()
    if "model" in wanted:
        generated = list(table["model"])
        m: dict = {"models": generated, "distance": {}, "tests": {}, "clustering": {}, "order": {}, "nesting": levels.nesting(table)}
        for sp in spaces:
            bar = progress.task(f"model level ({sp}): distances, tests, clustering", 1)
            lf = None
            if sp in learned_feats:
                f, rows = learned_feats[sp]
                lf = (f, rows["model"].to_numpy().astype(str))  # class_mean_distance standardises them
            dist = levels.distances(lf, {g: ws.artifacts(g, sp) for g in generated}, generated, seed=s.seed)
            m["tests"][sp], m["clustering"][sp] = levels.model_tests(dist, generated, table, tests, seed=s.seed)
            m["distance"][sp] = {name: np.round(dm, 6).tolist() for name, dm in dist.items()}
            primary = dist["learned_means"] if "learned_means" in dist else dist["energy"]
            m["order"][sp] = [generated[i] for i in model_level.leaf_order(primary)]
            m.setdefault("order_by_distance", {})[sp] = {name: [generated[i] for i in model_level.leaf_order(dm)]
                                                         for name, dm in dist.items()}
            bar.update()
            bar.close()
        found["model"] = m
    pixel_space = next((s for s in spaces if space_registry.info(s).pixel_exact), None)
    if pixel_space:  # spectra of pixel artifacts, per model, stacked in the order of models.npy
        bar = progress.task(f"spectra ({pixel_space})", 1)
        per_model = [spectra.model_spectra(ws.images(m), ws.artifacts(m, pixel_space)) for m in models]
        for part in SPECTRA_PARTS:
            arrays[f"spectra_{part}.npy"] = np.stack([getattr(x, part) for x in per_model]).astype(np.float32)
        bar.update()
        bar.close()
    metrics["levels"] = found
    metrics["reading"] = levels.reading(found)
    metrics = _json_safe(metrics)
    payload = json.dumps(metrics, indent=1).encode()
    # minutes of work above: wait for a writer that started meanwhile (say `manifpt train`) rather
    # than lose it, and commit on top of what that writer committed
    with ws.writing(wait_s=WAIT_FOR_WRITER_S):  # reloads what that writer committed
        rel = ws.write_entry(f"analysis-{key}", arrays, files={"metrics.json": payload})
        ws.manifest["analysis"] = {"key": key, "dir": rel}
        ws.commit(collect=("analysis-", "learned", "lodo"))
    return with_learned_lodo(ws, metrics)


SPECTRA_PARTS = ("artifact", "sample", "artifact_profile", "sample_profile", "artifact_channels", "sample_channels")


def _map_name(space: str, level: str) -> str:
    if level not in ("raw", "learned"):
        raise ValueError(f"level {level!r}: a map is drawn at the raw or the learned level")
    return f"umap_{space}" if level == "raw" else f"umap_learned_{space}"


def with_learned_lodo(ws: Workspace, metrics: dict) -> dict:
    """The learned level's leave-one-design-out, read live from its folds (`manifpt analyze --lodo-learned`)."""
    lodo = learned.lodo_summary(ws)
    if lodo and "learned" in metrics.get("levels", {}):
        metrics["levels"]["learned"]["lodo"] = _json_safe(lodo)
    return metrics


def _json_safe(obj):
    """Plain JSON: numpy scalars to Python, NaN (a metric with nothing to measure) to null."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


@dataclass
class Analysis:
    """The cached analysis of a workspace, read back (memory-mapped arrays)."""

    path: object
    metrics: dict
    models: list[str]
    key: str | None = None  # the cache key it was made under

    @classmethod
    def load(cls, ws: Workspace) -> Analysis | None:
        """The workspace's analysis, or None when `manifpt analyze` has not run (or is stale)."""
        return cls.read(ws)[1]

    @classmethod
    def state(cls, ws: Workspace) -> str:
        """One of "missing" (never analysed), "stale" (fingerprints or design table changed since) or "current"."""
        return cls.read(ws)[0]

    @classmethod
    def read(cls, ws: Workspace) -> tuple[str, Analysis | None]:
        """(state, the analysis when current): one read of the entry for callers that need both."""
        found = cls._read(ws)
        if found is None:
            return "missing", None
        return ("current", found) if found.is_current(ws) else ("stale", None)

    @classmethod
    def _read(cls, ws: Workspace) -> Analysis | None:
        """The analysis the manifest names, current or not (None when there is none)."""
        entry = ws.manifest.get("analysis")
        if not entry:
            return None
        d = ws.path / entry["dir"]
        metrics = with_learned_lodo(ws, json.loads((d / "metrics.json").read_text()))
        found = cls(d, metrics, [str(m) for m in np.load(d / "models.npy")])
        found.key = entry.get("key")
        return found

    def is_current(self, ws: Workspace) -> bool:
        """Whether this analysis was made from the workspace's present fingerprints and design table."""
        return self.key == analysis_key(ws, self.metrics.get("settings", {}))

    @property
    def spaces(self) -> list[str]:
        """The spaces that have a fingerprint map and design metrics."""
        return list(self.metrics.get("spaces", []))

    @property
    def has_spectra(self) -> bool:
        """Whether spectra were computed (they need the rgb space)."""
        return (self.path / "spectra_artifact.npy").is_file()

    def _npy(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    def map_levels(self, space: str) -> list[str]:
        """The fingerprint levels with a map in this space: "learned" (when present) first, then "raw"."""
        return [v for v in ("learned", "raw") if (self.path / f"{_map_name(space, v)}.npy").is_file()]

    def fingerprint_map(self, space: str, level: str = "raw") -> pd.DataFrame:
        """One row per sample: model, index (into the model's samples), x, y. At the learned level only
        the test samples, which the design-blind attributor never trained on."""
        name = _map_name(space, level)
        xy = self._npy(name)
        model = np.asarray(self.models)[self._npy(f"{name}_model")]
        return pd.DataFrame({"model": model, "index": self._npy(f"{name}_index"), "x": xy[:, 0], "y": xy[:, 1]})

    @property
    def levels(self) -> dict:
        """The per-level metrics (raw, learned, model) of `manifpt analyze`, as in its --json output."""
        return self.metrics.get("levels", {})

    def spectra(self, model: str) -> spectra.ModelSpectra:
        """The mean log power spectra of a model's RGB artifacts and samples, and their profiles."""
        i = self.models.index(model)
        have = [p for p in SPECTRA_PARTS if (self.path / f"spectra_{p}.npy").is_file()]  # older caches: no channels
        return spectra.ModelSpectra(**{p: np.asarray(self._npy(f"spectra_{p}")[i]) for p in have})
