"""Per-sample structure metrics with a null that keeps the models and shuffles their designs.

Learned fingerprints cluster by model by construction, so any label that is constant within a
model (a design choice) scores above zero by chance. Every measure here is therefore set beside a
design-permutation null: the models, their samples and the clustering stay fixed; only the design
each model has is shuffled. The unit of permutation is the design, not the model: seed twins
(models with identical design choices) keep a shared design, so the design rows are permuted among
design ids. A factor nested in another (loss within family) is permuted within the outer factor's
levels (strata).

p-values are one-sided, p = (1 + #{null >= observed}) / (1 + permutations). Intervals bootstrap
over designs (resample design ids with replacement, keep all samples of the drawn designs), never
over samples, whose dependence within a model would make them far too narrow.

All functions are pure: arrays and a design table (one row per model: model, factor columns and an
optional seed) in, numbers out. Every random draw is seeded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from fingerprint_core.protocol import IDENTIFIERS as NOT_FACTORS
from fingerprint_core.protocol import design_columns

_TIE = 1e-12  # a null value this close to the observed one counts as reaching it (float noise of equal tables)


# ---- designs and their permutations --------------------------------------------------------------

def design_factors(design_table: pd.DataFrame) -> list[str]:
    """The design-choice columns of a design table (fingerprint_core.protocol.design_columns)."""
    return design_columns(design_table)


def design_ids(design_table: pd.DataFrame, factors: Sequence[str] | None = None) -> np.ndarray:
    """A design id per row (0, 1, ... in first-seen order), integer-coded from the protocol's definition of a
    design (the same choices in every design column, whatever the seed); factors restricts the columns."""
    facs = list(factors) if factors is not None else design_factors(design_table)
    if not facs:
        return np.zeros(len(design_table), dtype=np.int64)
    keys = design_table[facs].astype(str).agg("|".join, axis=1)
    return pd.factorize(keys, sort=False)[0].astype(np.int64)


@dataclass(frozen=True)
class DesignCodes:
    """A factor's levels coded per model and per design, for a fixed model order."""

    models: list[str]  # the model order every per-model array follows
    design: np.ndarray  # design id per model (0 .. n_designs - 1)
    levels: list[str]  # the factor's levels
    label: np.ndarray  # level code per design
    stratum: np.ndarray | None  # stratum code per design (the outer factor's level), or None

    @property
    def n_designs(self) -> int:
        """Number of distinct designs among the models."""
        return len(self.label)

    @property
    def model_labels(self) -> np.ndarray:
        """Level code per model."""
        return self.label[self.design]


def design_codes(
    design_table: pd.DataFrame, factor: str, models: Sequence[str] | None = None, *, strata: str | None = None
) -> DesignCodes:
    """Code a factor per model and per design (and the strata factor per design) for the given models.

    models: the order of the per-model arrays (default: the table's rows). Only these models take part:
    a design none of them has is left out of the permutations, so a subset (say the GANs) is tested
    among itself.
    """
    table = design_table.copy()
    if "model" not in table:
        raise ValueError("the design table has no 'model' column")
    table["model"] = table["model"].astype(str)
    for col in (factor, strata):
        if col is not None and col not in table:
            raise ValueError(f"the design table has no column {col!r} (columns: {', '.join(map(str, table.columns))})")
    if dups := sorted(table["model"][table["model"].duplicated()].unique()):
        raise ValueError(f"the design table lists these models more than once: {', '.join(dups)}")
    if models is None:
        models = list(table["model"])
    models = [str(m) for m in models]
    missing = sorted(set(models) - set(table["model"]))
    if missing:
        raise ValueError(f"models missing from the design table: {', '.join(missing)}")
    table = table.set_index("model").loc[models].reset_index()
    facs = design_factors(table)
    if factor not in facs or (strata is not None and strata not in facs):
        raise ValueError(f"{factor!r} and {strata!r} must be design factors, not identifiers {NOT_FACTORS}")
    design = design_ids(table, facs)
    first = np.unique(design, return_index=True)[1]  # the first model of each design, in design-id order
    values = table[factor].astype(str).to_numpy()
    levels, label = np.unique(values[first], return_inverse=True)
    stratum = None
    if strata is not None:
        stratum = np.unique(table[strata].astype(str).to_numpy()[first], return_inverse=True)[1]
    return DesignCodes(models, design, [str(v) for v in levels], label.astype(np.int64), stratum)


def design_permutations(
    n_designs: int, permutations: int, *, strata: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Seeded permutations of the design ids (permutations x n_designs): design d takes the design row perm[p, d].

    With strata (a code per design), a design only ever takes the row of a design in its own stratum.
    """
    rng = np.random.default_rng(seed)
    keys = rng.random((permutations, n_designs))
    if strata is None:
        return np.argsort(keys, axis=1)
    strata = np.asarray(strata)
    out = np.empty((permutations, n_designs), dtype=np.int64)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        out[:, idx] = idx[np.argsort(keys[:, idx], axis=1)]
    return out


def permuted_model_labels(codes: DesignCodes, permutations: int, *, seed: int = 0) -> np.ndarray:
    """Level code per model under each seeded design permutation (permutations x models)."""
    perms = design_permutations(codes.n_designs, permutations, strata=codes.stratum, seed=seed)
    return codes.label[perms][:, codes.design]


def p_value(null: np.ndarray, observed: float) -> float:
    """One-sided permutation p-value, (1 + #{null >= observed}) / (1 + permutations); an undefined null value counts as reaching it."""
    null = np.asarray(null, dtype=np.float64)
    if not np.isfinite(observed):
        return float("nan")
    reach = ~(null < observed - _TIE * max(1.0, abs(observed)))  # NaN counts (conservative)
    return float((1 + reach.sum()) / (1 + len(null)))


def _summary(value: float, null: np.ndarray) -> dict:
    """The observed value beside its null: mean, 95th percentile and p."""
    finite = null[np.isfinite(null)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    p95 = float(np.percentile(finite, 95)) if len(finite) else float("nan")
    return {"value": float(value), "null_mean": mean, "null_p95": p95, "p": p_value(null, value),
            "permutations": int(len(null)), "testable": testable(null)}


def testable(null: np.ndarray) -> bool:
    """Whether the null takes more than one value: if every permutation gives the same number, p = 1 says nothing.

    (For example a factor tested within the levels of one it is fully crossed with, one design per
    cell: every within-stratum permutation keeps the same grouping of the designs.)
    """
    finite = np.asarray(null, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return bool(len(finite) and np.ptp(finite) > _TIE * max(1.0, float(np.abs(finite).max())))


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values and a code per element."""
    uniq, inv = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return uniq, inv.astype(np.int64)


def _model_index(sample_models: np.ndarray, codes_models: list[str]) -> np.ndarray:
    """Index into codes_models of every sample's model."""
    pos = {m: i for i, m in enumerate(codes_models)}
    return np.fromiter((pos[m] for m in np.asarray(sample_models).astype(str)), dtype=np.int64, count=len(sample_models))


def _present_models(sample_models: np.ndarray, design_table: pd.DataFrame) -> list[str]:
    """The models that have samples, in the design table's row order (a clear error for unknown ones)."""
    present = set(np.unique(np.asarray(sample_models).astype(str)))
    listed = [str(m) for m in design_table["model"]]
    unknown = sorted(present - set(listed))
    if unknown:
        raise ValueError(f"samples of models missing from the design table: {', '.join(unknown)}")
    return [m for m in listed if m in present]


# ---- NMI -------------------------------------------------------------------------------------------

def nmi_of_tables(tables: np.ndarray) -> np.ndarray:
    """NMI of each label x cluster count table (... x L x K), as sklearn's normalized_mutual_info_score (arithmetic mean)."""
    t = np.asarray(tables, dtype=np.float64)
    n = t.sum(axis=(-2, -1), keepdims=True)
    p = t / np.where(n > 0, n, 1)
    pl, pk = p.sum(-1, keepdims=True), p.sum(-2, keepdims=True)
    outer = pl * pk
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / np.where(outer > 0, outer, 1)), 0.0)
        hl = -np.where(pl > 0, pl * np.log(np.where(pl > 0, pl, 1)), 0.0).sum(axis=(-2, -1))
        hk = -np.where(pk > 0, pk * np.log(np.where(pk > 0, pk, 1)), 0.0).sum(axis=(-2, -1))
    mi = np.clip(terms.sum(axis=(-2, -1)), 0.0, None)
    n_classes, n_clusters = (pl[..., 0] > 0).sum(-1), (pk[..., 0, :] > 0).sum(-1)
    denom = (hl + hk) / 2
    out = np.where(mi > 0, mi / np.where(denom > 0, denom, 1), 0.0)
    return np.where((n_classes == n_clusters) & (n_classes <= 1), 1.0, out)


def _label_tables(counts: np.ndarray, labels: np.ndarray, n_levels: int) -> np.ndarray:
    """Label x cluster tables (P x L x K) from unit x cluster counts (M x K) and a level per unit per draw (P x M)."""
    onehot = (labels[..., None] == np.arange(n_levels)).astype(np.float64)  # P x M x L
    return np.einsum("pml,mk->plk", onehot, counts, optimize=True)


def _nmi_counts_null(counts: np.ndarray, codes: DesignCodes, permutations: int, seed: int) -> dict:
    """NMI of the observed labels and its design-permutation null, from unit x cluster counts."""
    L = len(codes.levels)
    value = float(nmi_of_tables(_label_tables(counts, codes.model_labels[None], L))[0])
    null = np.empty(permutations)
    labels = permuted_model_labels(codes, permutations, seed=seed)
    for s in range(0, permutations, 2000):  # bounded memory for many permutations
        null[s:s + 2000] = nmi_of_tables(_label_tables(counts, labels[s:s + 2000], L))
    return _summary(value, null)


def model_cluster_counts(clusters: np.ndarray, sample_models: np.ndarray, models: list[str]) -> np.ndarray:
    """Samples per model x cluster (models in the given order, clusters in sorted order)."""
    _, cl = _codes(clusters)
    mi = _model_index(sample_models, models)
    k = int(cl.max()) + 1 if len(cl) else 0
    return np.bincount(mi * k + cl, minlength=len(models) * k).reshape(len(models), k).astype(np.float64)


def nmi_null(
    clusters: np.ndarray,
    sample_models: np.ndarray,
    design_table: pd.DataFrame,
    factor: str,
    *,
    strata: str | None = None,
    permutations: int = 1000,
    seed: int = 0,
) -> dict:
    """NMI between fixed clusters and a factor's per-sample levels, beside its design-permutation null.

    clusters: a cluster label per sample (k-means, computed once on the features, k = the factor's
    number of levels); sample_models: the model of each sample. Returns value, null_mean, null_p95, p
    (and permutations). Only the models with samples take part.
    """
    models = _present_models(sample_models, design_table)
    codes = design_codes(design_table, factor, models, strata=strata)
    counts = model_cluster_counts(clusters, sample_models, models)
    return _nmi_counts_null(counts, codes, permutations, seed)


def _bootstrap_weights(rng: np.random.Generator, n_boot: int, n_designs: int, strata: np.ndarray | None) -> np.ndarray:
    """How often each design is drawn in each bootstrap (n_boot x n_designs), within strata if given."""
    groups = [np.arange(n_designs)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    w = np.zeros((n_boot, n_designs))
    for idx in groups:
        draws = idx[rng.integers(0, len(idx), (n_boot, len(idx)))]
        np.add.at(w, (np.repeat(np.arange(n_boot), len(idx)), draws.ravel()), 1.0)
    return w


def nmi_design_bootstrap(
    clusters: np.ndarray,
    sample_models: np.ndarray,
    design_table: pd.DataFrame,
    factor: str,
    *,
    strata: str | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the NMI, bootstrapping designs (all samples of each drawn design), clusters fixed.

    With strata, designs are redrawn within each stratum, keeping the strata's sizes.
    """
    models = _present_models(sample_models, design_table)
    codes = design_codes(design_table, factor, models, strata=strata)
    counts = model_cluster_counts(clusters, sample_models, models)
    per_design = np.zeros((codes.n_designs, counts.shape[1]))
    np.add.at(per_design, codes.design, counts)  # design x cluster counts
    onehot = (codes.label[:, None] == np.arange(len(codes.levels))).astype(np.float64)  # D x L
    w = _bootstrap_weights(np.random.default_rng(seed), n_boot, codes.n_designs, codes.stratum)
    tables = np.einsum("bd,dl,dk->blk", w, onehot, per_design, optimize=True)
    values = nmi_of_tables(tables)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


# ---- silhouette --------------------------------------------------------------------------------------

def _distance_blocks(x: np.ndarray, chunk: int = 2048, *, upper: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Row blocks (start, block x N) of the Euclidean distances among the rows of x (float64, centred, exact zero diagonal).

    upper: each block holds only the columns from its first row on (start, block x (N - start)).
    """
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0)  # distances unchanged, smaller norms, smaller rounding
    sq = np.einsum("ij,ij->i", x, x)
    for s in range(0, len(x), chunk):
        e = min(s + chunk, len(x))
        c = s if upper else 0
        d2 = sq[s:e, None] - 2.0 * (x[s:e] @ x[c:].T) + sq[None, c:]
        np.maximum(d2, 0.0, out=d2)
        d = np.sqrt(d2, out=d2)
        d[np.arange(e - s), np.arange(s - c, e - c)] = 0.0
        yield s, d


def model_distance_sums(features: np.ndarray, unit: np.ndarray, n_units: int) -> np.ndarray:
    """Sum of Euclidean distances from every row to the rows of each unit (N x units)."""
    onehot = (np.asarray(unit)[:, None] == np.arange(n_units)).astype(np.float64)
    out = np.empty((len(features), n_units))
    for s, d in _distance_blocks(features):
        out[s:s + len(d)] = d @ onehot
    return out


def silhouette_of_sums(sums: np.ndarray, unit: np.ndarray, unit_labels: np.ndarray, n_levels: int) -> np.ndarray:
    """Silhouette (as sklearn's silhouette_score) of each labelling of the units (P x units), from distance sums (N x units).

    A labelling maps units (models) to levels, so a point's summed distance to level c is the sum of
    its sums to the units labelled c, and its mean distance divides by that level's size (less one
    for its own level, whose sum includes the zero distance to itself): a(i) and b(i) of the
    silhouette are then exact, and (b - a) / max(a, b), averaged, is the silhouette of the labelling.
    A point alone in its level scores 0, as in sklearn; fewer than two levels present gives NaN.
    """
    unit = np.asarray(unit)
    sizes = np.bincount(unit, minlength=sums.shape[1]).astype(np.float64)
    labels = np.atleast_2d(unit_labels)
    onehot = (labels[..., None] == np.arange(n_levels)).astype(np.float64)  # P x M x L
    level_sums = np.einsum("nm,pml->pnl", sums, onehot, optimize=True)  # P x N x L
    level_sizes = np.einsum("m,pml->pl", sizes, onehot)  # P x L
    own = labels[:, unit]  # P x N
    own_sum = np.take_along_axis(level_sums, own[..., None], axis=2)[..., 0]
    own_size = np.take_along_axis(level_sizes, own, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = own_sum / (own_size - 1)
        means = level_sums / level_sizes[:, None, :]
    means = np.where(level_sizes[:, None, :] > 0, means, np.inf)
    np.put_along_axis(means, own[..., None], np.inf, axis=2)
    b = means.min(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b - a) / np.maximum(a, b)
    s = np.where((own_size > 1) & np.isfinite(s), s, 0.0)
    out = s.mean(axis=1)
    return np.where((level_sizes > 0).sum(1) >= 2, out, np.nan)


def silhouette_null(
    features: np.ndarray,
    sample_models: np.ndarray,
    design_table: pd.DataFrame,
    factor: str,
    *,
    strata: str | None = None,
    permutations: int = 500,
    max_samples: int = 3000,
    seed: int = 0,
) -> dict:
    """Silhouette of a factor's levels in feature space (Euclidean, seeded subsample), beside its design-permutation null.

    The subsample (at most max_samples points, uniform, seeded) is fixed; each permutation's
    silhouette is exact on it (see silhouette_of_sums). Returns value, null_mean, null_p95, p.
    """
    features = np.asarray(features)
    sample_models = np.asarray(sample_models).astype(str)
    rng = np.random.default_rng(seed)
    idx = np.arange(len(features))
    if len(idx) > max_samples:
        idx = np.sort(rng.choice(len(idx), max_samples, replace=False))
    models = _present_models(sample_models[idx], design_table)
    codes = design_codes(design_table, factor, models, strata=strata)
    unit = _model_index(sample_models[idx], models)
    sums = model_distance_sums(features[idx], unit, len(models))
    L = len(codes.levels)
    value = float(silhouette_of_sums(sums, unit, codes.model_labels[None], L)[0])
    labels = permuted_model_labels(codes, permutations, seed=seed + 1)
    batch = max(1, int(2e7 // max(1, len(idx) * max(L, len(models)))))  # keep P x N x L within ~160 MB
    null = np.concatenate([silhouette_of_sums(sums, unit, labels[s:s + batch], L) for s in range(0, permutations, batch)])
    return _summary(value, null)


# ---- purity of a 2-D map -----------------------------------------------------------------------------

def _neighbours(xy_2d: np.ndarray, k: int) -> np.ndarray:
    """The k nearest neighbours of every point of the map, itself excluded (N x k indices)."""
    nn = NearestNeighbors(n_neighbors=k).fit(np.asarray(xy_2d, dtype=np.float64))
    return nn.kneighbors(return_distance=False)


def purity(xy_2d: np.ndarray, sample_models: np.ndarray, k: int = 10) -> float:
    """Share of each point's k nearest neighbours in the 2-D map that come from its own model, averaged over points."""
    _, unit = _codes(sample_models)
    nb = _neighbours(xy_2d, k)
    return float((unit[nb] == unit[:, None]).mean())


def purity_null(
    xy_2d: np.ndarray, sample_models: np.ndarray, k: int = 10, *, permutations: int = 200, seed: int = 0
) -> dict:
    """Purity of the map beside the purity of an unstructured map: model labels shuffled across points.

    Why this null: purity asks whether a point's neighbours come from its own model. Relabelling
    whole models (any permutation of the model names, which is what a design permutation does to
    models) leaves it unchanged, so a design null cannot judge it; the question purity answers is
    "does the map show clusters of models?", whose null is a map without model structure: the same
    points and the same neighbour graph, with the per-point model labels shuffled (each model keeps
    its number of points). Its mean is sum_m n_m (n_m - 1) / (N (N - 1)), about the sum of squared
    model shares (returned as chance). Whether the map groups models by design is level_purity_null.
    """
    _, unit = _codes(sample_models)
    nb = _neighbours(xy_2d, k)
    value = float((unit[nb] == unit[:, None]).mean())
    rng = np.random.default_rng(seed)
    null = np.empty(permutations)
    for p in range(permutations):
        u = rng.permutation(unit)
        null[p] = (u[nb] == u[:, None]).mean()
    n = np.bincount(unit).astype(np.float64)
    out = _summary(value, null)
    out["chance"] = float((n * (n - 1)).sum() / (n.sum() * (n.sum() - 1))) if n.sum() > 1 else float("nan")
    return out


def level_purity_null(
    xy_2d: np.ndarray,
    sample_models: np.ndarray,
    design_table: pd.DataFrame,
    factor: str,
    k: int = 10,
    *,
    strata: str | None = None,
    permutations: int = 1000,
    seed: int = 0,
) -> dict:
    """Share of each point's k map neighbours that share its level of a factor, beside its design-permutation null.

    Neighbours from the point's own model always share its level, so this is above chance whenever
    the map clusters models; the design null (neighbour graph fixed, designs shuffled) keeps that
    part and asks whether neighbouring models share the level more than shuffled designs would.
    """
    sample_models = np.asarray(sample_models).astype(str)
    models = _present_models(sample_models, design_table)
    codes = design_codes(design_table, factor, models, strata=strata)
    unit = _model_index(sample_models, models)
    nb = _neighbours(xy_2d, k)
    M = len(models)
    pairs = np.bincount((unit[:, None] * M + unit[nb]).ravel(), minlength=M * M).reshape(M, M) / nb.size

    def share(labels: np.ndarray) -> np.ndarray:
        same = labels[:, :, None] == labels[:, None, :]  # P x M x M
        return (same * pairs).sum(axis=(1, 2))

    value = float(share(codes.model_labels[None])[0])
    labels = permuted_model_labels(codes, permutations, seed=seed)
    null = np.concatenate([share(labels[s:s + 1000]) for s in range(0, permutations, 1000)])
    return _summary(value, null)


# ---- multiple testing --------------------------------------------------------------------------------

def holm(pvalues: Mapping[str, float] | Sequence[float] | np.ndarray) -> dict | np.ndarray:
    """Holm-corrected p-values, in the input's shape (a dict stays a dict); NaN stays NaN and does not count."""
    if isinstance(pvalues, Mapping):
        keys = list(pvalues)
        adj = holm(np.array([pvalues[k] for k in keys], dtype=np.float64))
        return {k: float(v) for k, v in zip(keys, adj, strict=True)}
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    out = np.full(flat.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(flat))
    m = len(ok)
    if m:
        order = ok[np.argsort(flat[ok], kind="stable")]
        scaled = flat[order] * (m - np.arange(m))
        out[order] = np.clip(np.maximum.accumulate(scaled), None, 1.0)
    return out.reshape(p.shape)
