"""How well fingerprints encode design choices: NMI of a clustering, silhouette, and prediction
for designs nobody has seen (leave one design out).

All functions are pure: per-sample feature rows (already reduced, e.g. by PCA) and per-sample
labels in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score, silhouette_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class Interval:
    """A value with a bootstrap interval (2.5th and 97.5th percentiles)."""

    value: float
    low: float
    high: float


def nmi(features: np.ndarray, labels: np.ndarray, *, seed: int = 0, restarts: int = 10, n_boot: int = 200) -> Interval:
    """NMI between k-means clusters (k = number of label levels) and the labels, with a bootstrap.

    As in the paper: cluster without labels, then compare. The interval resamples samples with
    replacement and recomputes the NMI of the (label, cluster) pairs: the uncertainty from the
    finite sample, given the clustering.
    """
    labels = np.asarray(labels)
    k = len(np.unique(labels))
    if k < 2:
        return Interval(float("nan"), float("nan"), float("nan"))
    clusters = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit_predict(features)
    value = normalized_mutual_info_score(labels, clusters)
    rng = np.random.default_rng(seed)
    boots = [
        normalized_mutual_info_score(labels[i], clusters[i])
        for i in (rng.integers(0, len(labels), len(labels)) for _ in range(n_boot))
    ]
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
    chance: float  # majority-level share among the training designs
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
        """Mean accuracy of always answering the training designs' most common level."""
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
    sample (models trained from the same design share it, so a twin cannot leak the answer);
    models: the model name per sample.
    """
    labels, designs, models = (np.asarray(a).astype(str) for a in (labels, designs, models))
    out = LeaveOneDesignOut(factor)
    for design in dict.fromkeys(designs):  # first-seen order
        test = designs == design
        train_labels = labels[~test]
        levels, counts = np.unique(train_labels, return_counts=True)
        truth = labels[test][0]
        if len(levels) < 2:
            continue  # nothing to learn from
        # chance: answer the most common level of the training designs (counted per design)
        per_design = {d: labels[designs == d][0] for d in dict.fromkeys(designs[~test])}
        d_levels, d_counts = np.unique(list(per_design.values()), return_counts=True)
        majority = d_levels[np.argmax(d_counts)]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        clf.fit(features[~test], train_labels)
        pred = clf.predict(features[test])
        values, votes = np.unique(pred, return_counts=True)
        out.folds.append(
            HeldOutDesign(
                design=str(design),
                models=sorted(set(models[test])),
                truth=str(truth),
                predicted=str(values[np.argmax(votes)]),
                accuracy=float(np.mean(pred == truth)),
                chance=float(majority == truth),
                unseen=bool(truth not in levels),
            )
        )
    return out
