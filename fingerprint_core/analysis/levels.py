"""Structure at three levels of fingerprint (DESIGN.md section 8), each measure beside its null.

- raw: the per-sample artifacts (PCA-reduced);
- learned: the penultimate features of the design-blind attributor (test samples only);
- model: a model's fingerprint as a set (distances between models).

Every per-sample measure is judged against a null that keeps the models and permutes whole designs
among designs (twins keep a shared design; within strata when another factor is held fixed), with
the k-means clusters fixed; readings use Holm-corrected p-values. The groups of models a factor is
tested on (all models, within the largest family, with family held fixed, loss with upsampling held
fixed) are defined once here, for every level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from fingerprint_core import protocol
from fingerprint_core.analysis import model_level, nulls
from fingerprint_core.workspace import REAL

LEVELS = ("raw", "learned", "model")
PERMUTATIONS = 5000  # p >= 1/5001: with ~10 tests per level and space, Holm can still reach 0.002
SILHOUETTE_PERMUTATIONS = 200
ENERGY_PER_MODEL = 300


@dataclass(frozen=True)
class Group:
    """A factor tested on some of the models, optionally with another factor held fixed."""

    name: str  # "upsampling", "upsampling (gan)", "loss | family"
    factor: str
    models: tuple[str, ...]
    strata: str | None = None


def groups(table: pd.DataFrame) -> list[Group]:
    """The tests every level runs: each factor over all generated models; within the largest family
    (upsampling among GANs); a factor nested in family with family held fixed (so loss is not credited
    with what family did); loss within that family with upsampling held fixed."""
    t = table[table["model"] != REAL].astype(str)
    models = tuple(t["model"])
    facs = protocol.factors(t)
    out = [Group(f, f, models) for f in facs]
    if "family" not in facs:
        return out
    fam = t["family"].value_counts().idxmax()
    sub = t[t["family"] == fam]
    inner = tuple(sub["model"])
    inner_facs = [f for f in facs if f != "family" and sub[f].nunique() >= 2 and len(sub) >= 3]
    out += [Group(f"{f} ({fam})", f, inner) for f in inner_facs]
    out += [Group(f"{f} | family", f, models, "family") for f in facs
            if f != "family" and _nested_in(t, f, "family")]
    if "loss" in inner_facs and "upsampling" in inner_facs:
        out.append(Group(f"loss ({fam}) | upsampling", "loss", inner, "upsampling"))
    return out


def _nested_in(t: pd.DataFrame, factor: str, outer: str) -> bool:
    """Whether some level of factor occurs with one level of outer only (e.g. ELBO only in VAEs)."""
    return any(n.factor == factor and n.within == outer for n in model_level.nesting(t, factors=[factor, outer]))


def nesting(table: pd.DataFrame) -> list[dict]:
    """Levels nested in another factor's level, as plain dicts (for the JSON and the readings)."""
    t = table[table["model"] != REAL].astype(str)
    return [n._asdict() for n in model_level.nesting(t)]


# ---- per-sample levels (raw, learned) ----------------------------------------------------------------

def per_sample(features: np.ndarray, sample_models: np.ndarray, table: pd.DataFrame, tests: list[Group], *,
               seed: int = 0, restarts: int = 10, n_boot: int = 200, permutations: int = PERMUTATIONS) -> dict:
    """NMI (k-means, k = the factor's levels) and silhouette per group, each with its design null."""
    t = table.astype(str)
    sample_models = np.asarray(sample_models).astype(str)
    nmi, sil = {}, {}
    for g in tests:
        keep = np.isin(sample_models, g.models)
        if keep.sum() < 3:
            continue
        x, sm = features[keep], sample_models[keep]
        sub = t[t["model"].isin(g.models)]
        k = sub[g.factor].nunique()
        clusters = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit_predict(x)
        r = nulls.nmi_null(clusters, sm, sub, g.factor, strata=g.strata, permutations=permutations, seed=seed)
        low, high = nulls.nmi_design_bootstrap(clusters, sm, sub, g.factor, strata=g.strata, n_boot=n_boot, seed=seed)
        nmi[g.name] = {"value": r["value"], "low": low, "high": high, "null_mean": r["null_mean"],
                       "null_p95": r["null_p95"], "p": r["p"], "testable": r["testable"], "levels": int(k)}
        s = nulls.silhouette_null(x, sm, sub, g.factor, strata=g.strata, permutations=SILHOUETTE_PERMUTATIONS,
                                  max_samples=2000, seed=seed)
        sil[g.name] = {"value": s["value"], "null_p95": s["null_p95"], "p": s["p"]}
    _add_holm(nmi)
    return {"nmi": nmi, "silhouette": sil}


def purity(xy: np.ndarray, sample_models: np.ndarray, *, seed: int = 0) -> dict:
    """Share of each point's 10 map neighbours from its own model, beside a map without model structure."""
    r = nulls.purity_null(np.asarray(xy, dtype=np.float64), np.asarray(sample_models).astype(str), permutations=200, seed=seed)
    return {"value": r["value"], "null_p95": r["null_p95"], "chance": r["chance"]}


def _add_holm(tests: dict) -> None:
    """p_holm beside every p of one family of tests (one level, one space)."""
    adjusted = nulls.holm({k: v["p"] for k, v in tests.items()})
    for k, v in tests.items():
        v["p_holm"] = float(adjusted[k])


# ---- the model level ---------------------------------------------------------------------------------

def distances(learned: tuple[np.ndarray, np.ndarray] | None, artifacts: dict[str, np.ndarray], models: list[str],
              *, seed: int = 0) -> dict[str, np.ndarray]:
    """Distances between every pair of models in one space: between class means of the standardised
    learned features ("learned_means") and the energy distance between artifact sets ("energy",
    Szekely-Rizzo, a V-statistic on seeded subsets of 300 artifacts per model)."""
    out = {}
    if learned is not None:
        feats, sample_models = learned
        keep = np.isin(sample_models, models)
        out["learned_means"] = model_level.class_mean_distance(feats[keep], np.asarray(sample_models)[keep], models)
    out["energy"] = model_level.energy_distance_matrix([artifacts[m] for m in models], max_per_model=ENERGY_PER_MODEL,
                                                       seed=seed)
    return out


def model_tests(dist: dict[str, np.ndarray], models: list[str], table: pd.DataFrame, tests: list[Group], *,
                seed: int = 0) -> tuple[dict, dict]:
    """(share tests per distance and group: are models sharing a level closer? with and without seed
    twins; average-linkage clustering NMI per group on the primary distance)."""
    t = table.astype(str)
    out: dict = {}
    for name, d in dist.items():
        out[name] = {}
        for g in tests:
            idx = [models.index(m) for m in g.models]
            r = model_level.share_test(d[np.ix_(idx, idx)], t, g.factor, models=list(g.models), strata=g.strata,
                                       exclude_twins="both", permutations=PERMUTATIONS, seed=seed)
            out[name][g.name] = {"effect": r["effect"], "relative_effect": r["relative_effect"], "p": r["p"],
                                 "p_without_twins": r["p_without_twins"], "testable": r["testable"]}
        _add_holm(out[name])
    primary = "learned_means" if "learned_means" in dist else "energy"
    clustering = {}
    for g in tests:
        idx = [models.index(m) for m in g.models]
        if len(idx) < 3:
            continue
        r = model_level.cluster_nmi(dist[primary][np.ix_(idx, idx)], t, g.factor, models=list(g.models), strata=g.strata,
                                    permutations=PERMUTATIONS, seed=seed)
        clustering[g.name] = {"value": r["value"], "null_mean": r["null_mean"], "null_p95": r["null_p95"], "p": r["p"],
                              "testable": r["testable"], "distance": primary}
    _add_holm(clustering)
    return out, clustering


TINY = protocol.TINY_NMI


def reading(levels: dict, alpha: float = protocol.ALPHA) -> list[str]:
    """Plain sentences: which level shows which factor and how sure (Holm-corrected p < alpha against
    the design-permutation null), what is too small to matter, and what does not hold."""
    lines = []
    for level in ("raw", "learned"):
        for space, tests in (levels.get(level) or {}).get("nmi", {}).items():
            sure = {f: v for f, v in tests.items() if v.get("p_holm", 1) < alpha}
            shown = [f"{f} (NMI {v['value']:.2f}, null 95th pct {v['null_p95']:.2f}, Holm p {v['p_holm']:.2g})"
                     for f, v in sure.items() if v["value"] >= TINY]
            tiny = [f for f, v in sure.items() if v["value"] < TINY]
            none = [f for f in tests if f not in sure]
            if shown:
                lines.append(f"{level} level, {space}: the clusters follow " + "; ".join(shown) + ".")
            if tiny:
                lines.append(f"{level} level, {space}: {', '.join(tiny)} beat the null but with NMI below {TINY}: "
                             "detectable, too small to see on a map.")
            if none:
                lines.append(f"{level} level, {space}: nothing beyond the design null for " + ", ".join(none) + ".")
    m = levels.get("model") or {}
    for space, c in m.get("clustering", {}).items():
        found = [f"{f} (NMI {v['value']:.2f}, null 95th pct {v['null_p95']:.2f})" for f, v in c.items() if v.get("p_holm", 1) < alpha]
        lines.append(f"model level, {space}: clustering the models recovers "
                     + ("; ".join(found) if found else "no factor") + f" beyond the design null (Holm p < {alpha}).")
    nested: dict[str, list[str]] = {}
    for n in m.get("nesting", []):
        if n["within"] == "family" and n["factor"] != "family":
            nested.setdefault(n["factor"], []).append(f"{n['level']} only in {n['within_level']}")
    for factor, where in nested.items():
        lines.append(f"{factor} over all models is partly family in disguise ({'; '.join(where)}): read {factor} "
                     f"within a family and {factor} | family (family held fixed) instead.")
    return lines
