"""How well fingerprints encode design choices: NMI of a clustering, silhouette, and prediction
for designs nobody has seen (leave one design out).

All functions are pure: per-sample feature rows (already reduced, e.g. by PCA) and per-sample
labels in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import silhouette_score

from fingerprint_core import protocol


@dataclass(frozen=True)
class Interval:
    """A value with a bootstrap interval (2.5th and 97.5th percentiles)."""

    value: float
    low: float
    high: float


def _nmi_of_counts(counts: np.ndarray) -> float:
    """NMI (arithmetic-mean normalisation, as sklearn's default) of a label x cluster count table."""
    n = counts.sum()
    p = counts / n
    pl, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pl, pc)[nz])).sum())
    h = [-float((q[q > 0] * np.log(q[q > 0])).sum()) for q in (pl, pc)]
    denom = (h[0] + h[1]) / 2
    return 1.0 if denom == 0 else max(mi, 0.0) / denom


def nmi(features: np.ndarray, labels: np.ndarray, *, seed: int = 0, restarts: int = 10, n_boot: int = 200) -> Interval:
    """NMI between k-means clusters (k = number of label levels) and the labels, with a bootstrap.

    As in the paper: cluster without labels, then compare. The interval resamples samples with
    replacement and recomputes the NMI of the (label, cluster) pairs: the uncertainty from the
    finite sample, given the clustering.
    """
    levels, codes = np.unique(np.asarray(labels), return_inverse=True)
    k = len(levels)
    if k < 2:
        return Interval(float("nan"), float("nan"), float("nan"))
    clusters = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit_predict(features)
    pair = codes * k + clusters  # one integer per (label, cluster): a bootstrap is one bincount

    def counts(idx: np.ndarray | slice) -> np.ndarray:
        return np.bincount(pair[idx], minlength=k * k).reshape(k, k)

    value = _nmi_of_counts(counts(slice(None)))
    rng = np.random.default_rng(seed)
    boots = [_nmi_of_counts(counts(rng.integers(0, len(pair), len(pair)))) for _ in range(n_boot)]
    low, high = np.percentile(boots, [2.5, 97.5]) if boots else (value, value)
    return Interval(float(value), float(low), float(high))


def silhouette(features: np.ndarray, labels: np.ndarray, *, seed: int = 0, max_samples: int = 5000) -> float:
    """Silhouette of the label groups in feature space (Euclidean), on a seeded subsample."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    n = min(max_samples, len(labels))
    return float(silhouette_score(features, labels, sample_size=n, random_state=seed))


@dataclass
class HeldOutDesign:
    """What the classifier said about the models of one held-out design."""

    design: str
    models: list[str]
    truth: str
    predicted: str  # majority vote over the design's samples
    accuracy: float  # share of its samples predicted correctly
    chance: float  # the best trivial guess's expected accuracy (protocol.chance)
    unseen: bool  # the true level never occurs in training (cannot be predicted)


@dataclass
class LeaveOneDesignOut:
    """Leave-one-design-out prediction of one factor."""

    factor: str
    folds: list[HeldOutDesign] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Mean per-design sample accuracy (each design weighs the same)."""
        return float(np.mean([f.accuracy for f in self.folds])) if self.folds else float("nan")

    @property
    def chance(self) -> float:
        """Mean over folds of the best trivial guess's expected accuracy (protocol.chance)."""
        return float(np.mean([f.chance for f in self.folds])) if self.folds else float("nan")

    @property
    def vote_accuracy(self) -> float:
        """Share of held-out designs whose majority vote is right."""
        return float(np.mean([f.predicted == f.truth for f in self.folds])) if self.folds else float("nan")


def leave_one_design_out(
    features: np.ndarray,
    labels: np.ndarray,
    designs: np.ndarray,
    models: np.ndarray,
    *,
    factor: str = "",
    seed: int = 0,
) -> LeaveOneDesignOut:
    """Hold out every model of one design (all its seeds), train on the other designs, predict.

    features: per-sample rows; labels: the factor's level per sample; designs: a design id per
    sample (protocol.design_id: models trained from the same design share it, so a twin cannot leak
    the answer); models: the model name per sample. The folds, truth, chance and unseen flag are
    protocol's, as the benchmark's are; a fold whose training designs have one level is not scored.
    """
    labels, designs, models = (np.asarray(a).astype(str) for a in (labels, designs, models))
    out = LeaveOneDesignOut(factor)
    levels = protocol.levels_by_design(designs, labels)
    for held in protocol.held_out_designs(designs):
        h = protocol.held_out_level(levels, held)
        if not h.learnable:
            continue  # nothing to learn from
        test = designs == held
        # a linear classifier with a shared, shrunk covariance: one pass over the data per fold (an
        # analysis has ~140 folds per space), where iterative logistic regression took ~0.2 s each
        clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
        clf.fit(features[~test], labels[~test])
        pred = clf.predict(features[test])
        values, votes = np.unique(pred, return_counts=True)
        out.folds.append(
            HeldOutDesign(
                design=held,
                models=sorted(set(models[test])),
                truth=h.truth,
                predicted=str(values[np.argmax(votes)]),
                accuracy=float(np.mean(pred == h.truth)),
                chance=h.chance,
                unseen=h.unseen,
            )
        )
    return out
