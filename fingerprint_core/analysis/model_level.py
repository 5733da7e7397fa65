"""Model-level fingerprints: a model's fingerprint as a set, and whether models that share a design
choice are closer than models that do not.

Distances between every pair of models (class means of standardised features, energy distance,
MMD), then tests on the model x model distance matrix judged by permuting designs among designs
(seed twins keep a shared design; a factor tested with another held fixed permutes within the
other's levels), a hierarchical clustering of the models with its NMI against a factor, and the
nesting of the design table (a level of one factor that only occurs with one level of another).

Pure functions: arrays and a design table in, numbers out; every random draw is seeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import dendrogram, fcluster, linkage
from scipy.spatial.distance import pdist, squareform

from fingerprint_core.analysis.nulls import (
    _distance_blocks,
    _nmi_counts_null,
    design_codes,
    design_factors,
    design_ids,
    p_value,
    permuted_model_labels,
    testable,
)

# ---- distances between models ----------------------------------------------------------------------

def standardise(x: np.ndarray, fit: np.ndarray | None = None) -> np.ndarray:
    """Each feature centred and scaled to unit spread, the statistics taken over the rows fit selects (default:
    all rows), in x's dtype; a feature without spread is only centred."""
    ref = x if fit is None else x[fit]
    sd = ref.std(0)
    return (x - ref.mean(0)) / np.where(sd > 0, sd, 1.0)


def class_mean_distance(features: np.ndarray, sample_models: np.ndarray, models: Sequence[str]) -> np.ndarray:
    """Euclidean distances between the models' mean features (models x models), each feature standardised over all samples first."""
    x = np.asarray(features, dtype=np.float64)
    sample_models = np.asarray(sample_models).astype(str)
    models = [str(m) for m in models]
    if missing := [m for m in models if not (sample_models == m).any()]:
        raise ValueError(f"models without samples: {', '.join(missing)}")
    z = standardise(x)
    means = np.stack([z[sample_models == m].mean(0) for m in models])
    return squareform(pdist(means))


def _subsamples(sets: Sequence[np.ndarray], max_per_model: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled float64 rows of seeded subsamples (at most max_per_model per set; each set its own stream) and their set index."""
    parts, owner = [], []
    for i, a in enumerate(sets):
        a = np.asarray(a)
        a = a.reshape(len(a), -1)
        if max_per_model is not None and len(a) > max_per_model:
            idx = np.sort(np.random.default_rng([seed, i]).choice(len(a), max_per_model, replace=False))
            a = a[idx]
        if len(a) < 2:
            raise ValueError(f"set {i} has {len(a)} sample(s); a set distance needs at least 2")
        parts.append(np.asarray(a, dtype=np.float64))
        owner.append(np.full(len(a), i))
    return np.concatenate(parts), np.concatenate(owner)


def _pair_sums(z: np.ndarray, owner: np.ndarray, n_sets: int, fn=None) -> np.ndarray:
    """Sum over point pairs (all ordered pairs, self pairs included at distance 0) of fn(distance), per pair of sets."""
    onehot = (owner[:, None] == np.arange(n_sets)).astype(np.float64)
    out = np.zeros((n_sets, n_sets))
    for s, d in _distance_blocks(z, upper=True):  # the distances are symmetric: compute each block pair once
        v = d if fn is None else fn(d)
        e = s + len(d)
        rows = onehot[s:e].T
        out += rows @ (v[:, : e - s] @ onehot[s:e])  # the square block on the diagonal: both orders already in it
        off = rows @ (v[:, e - s:] @ onehot[e:])
        out += off + off.T
    return out


def _by_model(artifacts_by_model: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    """The sets in order (a mapping's values in its key order)."""
    return list(artifacts_by_model.values()) if isinstance(artifacts_by_model, Mapping) else list(artifacts_by_model)


def energy_distance_matrix(
    artifacts_by_model: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    *,
    max_per_model: int | None = 300,
    seed: int = 0,
    unbiased: bool = False,
) -> np.ndarray:
    """Energy distance (Szekely-Rizzo) between every pair of models' sets, on seeded subsamples (models x models).

    E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'| with Euclidean |.|. By default each expectation is
    the mean over all pairs of the samples (the V-statistic, self pairs included at 0: never
    negative, in 1-D equal to scipy.stats.energy_distance squared, and biased upwards by about
    (1/n + 1/m) E|X - X'|, the same for every pair when the sets are equally large). unbiased=True
    averages E|X - X'| over distinct pairs only (the U-statistic: unbiased, may fall below zero).
    Rows follow the mapping's key order; float64 throughout.
    """
    sets = _by_model(artifacts_by_model)
    z, owner = _subsamples(sets, max_per_model, seed)
    n = np.bincount(owner, minlength=len(sets)).astype(np.float64)
    sums = _pair_sums(z, owner, len(sets))
    mean = sums / np.outer(n, n)
    within = np.diag(sums) / (n * (n - 1)) if unbiased else np.diag(mean)
    e = 2 * mean - within[:, None] - within[None, :]
    np.fill_diagonal(e, 0.0)
    return e if unbiased else np.maximum(e, 0.0)  # the V-statistic is never negative: only rounding goes below 0


def median_distance(z: np.ndarray, *, max_points: int = 2000, seed: int = 0) -> float:
    """Median Euclidean distance between distinct points (on a seeded subset of at most max_points)."""
    z = np.asarray(z, dtype=np.float64)
    if len(z) > max_points:
        z = z[np.sort(np.random.default_rng(seed).choice(len(z), max_points, replace=False))]
    return float(np.median(pdist(z)))


def mmd_matrix(
    artifacts_by_model: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    *,
    bandwidth: float | str = "median",
    max_per_model: int | None = 300,
    seed: int = 0,
) -> np.ndarray:
    """Unbiased MMD^2 between every pair of models' sets with a Gaussian kernel, on seeded subsamples (models x models).

    Kernel k(x, y) = exp(-|x - y|^2 / (2 sigma^2)); sigma = bandwidth, or with "median" the median
    distance between distinct points of all models' pooled subsamples (one sigma for the whole
    matrix, so its entries compare). MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j)
    - 2 mean k(x_i, y_j) (Gretton et al., JMLR 2012): unbiased, so it can fall slightly below zero
    for sets from one distribution. Rows follow the mapping's key order; the diagonal is 0.
    """
    sets = _by_model(artifacts_by_model)
    z, owner = _subsamples(sets, max_per_model, seed)
    sigma = median_distance(z, seed=seed) if bandwidth == "median" else float(bandwidth)
    if not sigma > 0:
        raise ValueError(f"the kernel bandwidth must be positive, got {sigma}")
    gamma = 1.0 / (2.0 * sigma**2)
    n = np.bincount(owner, minlength=len(sets)).astype(np.float64)
    k = _pair_sums(z, owner, len(sets), lambda d: np.exp(-gamma * d * d))
    within = (np.diag(k) - n) / (n * (n - 1))  # self pairs have k = 1 exactly (distance set to 0)
    cross = k / np.outer(n, n)
    out = within[:, None] + within[None, :] - 2 * cross
    np.fill_diagonal(out, 0.0)
    return out


# ---- tests on the distance matrix -------------------------------------------------------------------

def _square(distance: np.ndarray | pd.DataFrame, design_table: pd.DataFrame, models: Sequence[str] | None):
    """The distance matrix as float64 and its model order (a DataFrame's index, models, or the table's rows)."""
    if isinstance(distance, pd.DataFrame):
        models = [str(m) for m in distance.index] if models is None else models
        distance = distance.to_numpy()
    d = np.asarray(distance, dtype=np.float64)
    models = [str(m) for m in (design_table["model"] if models is None else models)]
    if d.ndim != 2 or d.shape != (len(models), len(models)):
        raise ValueError(f"the distance matrix is {d.shape}, but there are {len(models)} models")
    return (d + d.T) / 2, models


def share_test(
    distance: np.ndarray | pd.DataFrame,
    design_table: pd.DataFrame,
    factor: str,
    *,
    models: Sequence[str] | None = None,
    strata: str | None = None,
    exclude_twins: bool | str = False,
    permutations: int = 2000,
    seed: int = 0,
) -> dict:
    """Are model pairs that share the factor's level closer than pairs that differ? Permutation test over designs.

    effect = mean distance of differing pairs - mean distance of sharing pairs (in the distance's
    units; relative_effect divides it by the mean of all compared pairs). p is one-sided (sharing
    closer), designs permuted among designs, twins keeping a shared design. With strata (another
    factor held fixed), designs permute within its levels and only pairs within one stratum are
    compared (testable is False when no permutation changes the grouping, e.g. a factor fully
    crossed with the strata, one design per cell: then p = 1 says nothing). exclude_twins=True
    drops pairs of seed twins (same design) from both sides; exclude_twins="both" returns the test
    with twins (effect, p, ...) and without them (effect_without_twins, p_without_twins, ...).
    Rows of distance follow models (default: a DataFrame's index, else the design table's rows).
    """
    if exclude_twins not in (False, True, "both"):
        raise ValueError(f"exclude_twins must be False, True or 'both', got {exclude_twins!r}")
    d, models = _square(distance, design_table, models)
    codes = design_codes(design_table, factor, models, strata=strata)
    i, j = np.triu_indices(len(models), 1)
    keep = np.ones(len(i), bool)
    if codes.stratum is not None:
        st = codes.stratum[codes.design]
        keep &= st[i] == st[j]
    twin = codes.design[i] == codes.design[j]
    labels = np.concatenate([codes.model_labels[None], permuted_model_labels(codes, permutations, seed=seed)])
    same = labels[:, i] == labels[:, j]  # (1 + P) x pairs; row 0 is the observed design

    def test(mask: np.ndarray) -> dict:
        dv, s = d[i, j][mask], same[:, mask]
        n_share, n_diff = s.sum(1), (~s).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = (s * dv).sum(1) / n_share
            diff = ((~s) * dv).sum(1) / n_diff
        effect = diff - share
        mean_all = dv.mean() if len(dv) else float("nan")
        return {
            "effect": float(effect[0]),
            "relative_effect": float(effect[0] / mean_all) if mean_all > 0 else float("nan"),
            "p": p_value(effect[1:], float(effect[0])),
            "testable": testable(effect[1:]),
            "share_mean": float(share[0]),
            "differ_mean": float(diff[0]),
            "share_pairs": int(n_share[0]),
            "differ_pairs": int(n_diff[0]),
        }

    out = test(keep & ~twin if exclude_twins is True else keep)
    out.update(permutations=int(permutations), twin_pairs=int((keep & twin).sum()), twins_excluded=exclude_twins is True)
    if exclude_twins == "both":
        without = test(keep & ~twin)
        out.update({f"{k}_without_twins": v for k, v in without.items()})
    return out


def _linkage(d: np.ndarray) -> np.ndarray:
    """Average-linkage tree of a symmetric distance matrix."""
    d = d.copy()
    np.fill_diagonal(d, 0.0)
    return linkage(squareform(d, checks=False), method="average")


def model_clusters(distance: np.ndarray, k: int) -> np.ndarray:
    """Average-linkage clusters of the models, the tree cut into at most k clusters (labels 1..k)."""
    d = np.asarray(distance, dtype=np.float64)
    return fcluster(_linkage((d + d.T) / 2), t=k, criterion="maxclust")


def cluster_nmi(
    distance: np.ndarray | pd.DataFrame,
    design_table: pd.DataFrame,
    factor: str,
    *,
    models: Sequence[str] | None = None,
    permutations: int = 1000,
    strata: str | None = None,
    seed: int = 0,
) -> dict:
    """NMI between an average-linkage clustering of the models (k = the factor's levels) and the factor, beside its design null.

    Each model counts once. The clustering is fixed; the null permutes designs among designs
    (within strata if given). Returns value, null_mean, null_p95, p, k and the cluster of each model.
    """
    d, models = _square(distance, design_table, models)
    codes = design_codes(design_table, factor, models, strata=strata)
    k = len(codes.levels)
    clusters = model_clusters(d, k)
    counts = (clusters[:, None] == np.unique(clusters)[None, :]).astype(np.float64)  # models x clusters
    out = _nmi_counts_null(counts, codes, permutations, seed)
    out.update(k=k, clusters=dict(zip(models, clusters.tolist(), strict=True)))
    return out


def leaf_order(distance: np.ndarray | pd.DataFrame) -> list[int]:
    """Row order of the models for a heatmap: the leaves of their average-linkage dendrogram."""
    d = np.asarray(distance.to_numpy() if isinstance(distance, pd.DataFrame) else distance, dtype=np.float64)
    if len(d) < 2:
        return list(range(len(d)))
    return [int(v) for v in dendrogram(_linkage((d + d.T) / 2), no_plot=True)["leaves"]]


# ---- nesting of the design ----------------------------------------------------------------------------

class Nesting(NamedTuple):
    """A level of one factor that only occurs with one level of another."""

    factor: str
    level: str
    within: str  # the other factor
    within_level: str  # the only level of it that occurs with factor = level
    designs: int  # distinct designs with factor = level


def nesting(design_table: pd.DataFrame, *, factors: Sequence[str] | None = None, min_designs: int = 2) -> list[Nesting]:
    """Levels nested in another factor's level (e.g. loss = elbo only with family = vae), over the design table's rows.

    A level seen in fewer than min_designs distinct designs is skipped (a level of one design is
    trivially nested in everything); the other factor must have two or more levels.
    """
    table = design_table.astype(str)
    facs = list(factors) if factors is not None else [f for f in design_factors(table) if table[f].nunique() >= 2]
    design = design_ids(table, design_factors(table))
    out = []
    for a in facs:
        for level in sorted(table[a].unique()):
            rows = (table[a] == level).to_numpy()
            n_designs = len(np.unique(design[rows]))
            if n_designs < min_designs:
                continue
            for b in facs:
                if b == a:
                    continue
                with_b = table[b][rows].unique()
                if len(with_b) == 1:
                    out.append(Nesting(a, str(level), b, str(with_b[0]), int(n_designs)))
    return out


def determines(design_table: pd.DataFrame, factor: str, within: str) -> bool:
    """Whether every level of factor occurs with exactly one level of within (then factor carries within, as loss carries family)."""
    table = design_table.astype(str)
    return bool((table.groupby(factor)[within].nunique() == 1).all()) and table[within].nunique() >= 2
