"""Open-set scoring: "none of the known models". A score per sample (higher = less like any known
class), the threshold that accepts a chosen share of known samples, AUROC, and the held-out-models
protocol the benchmark runs.

Default score: Mahalanobis distance of the attributor's features to the nearest class mean under
one shared (tied) covariance, fitted on the training features (Lee et al., NeurIPS 2018). It reads
the features rather than the softmax, so a sample far from every class is caught even where the
heads extrapolate with confidence. Alternatives compared on the held-out-models protocol: energy (-logsumexp of the model-head
logits; Liu et al., NeurIPS 2020), the k-th nearest-neighbour distance of L2-normalised features to
the training features (Sun et al., ICML 2022) and the maximum softmax probability (the baseline of
Hendrycks and Gimpel, ICLR 2017), and their ensemble: the mean of the Mahalanobis, kNN and energy
scores, each standardised by its validation mean and spread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.covariance import ledoit_wolf
from sklearn.metrics import roc_auc_score, roc_curve

SCORES = ("mahalanobis", "energy", "knn", "msp", "ensemble")
ENSEMBLE = ("mahalanobis", "knn", "energy")  # each standardised on the validation scores, then averaged
KNN_K = 10  # the k-th neighbour (Sun et al. use k = 50 on 50,000 training images; the demo has ~1,200 per class)
KNN_BANK = 8000  # training features kept for the kNN score (a seeded subset)
ACCEPT = 0.95  # share of known validation samples the product threshold accepts
SHRINKAGE = 1e-3  # ridge on the shared covariance, relative to its mean variance (dead features stay invertible)
STATS = "openset.safetensors"
CONFIG = "openset.json"


# ---- scores ---------------------------------------------------------------------------------
def fit_gaussians(features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(means K x F, shared precision F x F) of the features per class; classes without samples get NaN means."""
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    means = np.full((n_classes, f.shape[1]), np.nan)
    centred = np.empty_like(f)
    for k in range(n_classes):
        rows = labels == k
        if rows.any():
            means[k] = f[rows].mean(0)
            centred[rows] = f[rows] - means[k]
    return means, np.linalg.inv(shrunk_covariance(centred))


def shrunk_covariance(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf covariance of centred rows: invertible and well conditioned even with fewer rows than features."""
    s, _ = ledoit_wolf(x, assume_centered=True)  # the rows are centred per class already
    p = s.shape[0]
    mu = np.trace(s) / p  # the shrinkage keeps the trace
    ridge = SHRINKAGE * max(mu, 1e-12)  # a floor: constant features (dead ReLUs) have zero variance
    return s + ridge * np.eye(p)


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Per sample, the squared Mahalanobis distance to the nearest class mean (N,)."""
    f = np.asarray(features, dtype=np.float64)
    mu = means[~np.isnan(means).any(1)]
    fp = f @ precision
    # (f - mu)' P (f - mu) = f'Pf - 2 f'P mu + mu'P mu, for every class at once: (N, K)
    d = np.einsum("nf,nf->n", fp, f)[:, None] - 2 * fp @ mu.T + np.einsum("kf,fg,kg->k", mu, precision, mu)[None, :]
    return np.maximum(d.min(1), 0.0)


def unit_rows(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def knn_distance(features: np.ndarray, bank: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Per sample, the Euclidean distance of its L2-normalised features to the k-th nearest bank row (N,)."""
    q = unit_rows(features)
    out = np.empty(len(q))
    k = min(k, len(bank))
    for a in range(0, len(q), 2048):
        d = np.maximum(2.0 - 2.0 * q[a:a + 2048] @ bank.T, 0.0)  # both sides have unit norm
        out[a:a + 2048] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
    return out


def msp(logits: np.ndarray) -> np.ndarray:
    """Minus the maximum softmax probability (N,): high when no class is probable."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    return -(1.0 / np.exp(z).sum(1))


def energy(logits: np.ndarray) -> np.ndarray:
    """-logsumexp of the model-head logits per sample (N,): high when no class scores high."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(1)
    return -(top + np.log(np.exp(z - top[:, None]).sum(1)))


# ---- measures -------------------------------------------------------------------------------
def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of an unknown > score of a known), ties counted half; NaN when either side is empty."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    return float(roc_auc_score(*_positives_unknown(known, unknown)))


def _positives_unknown(known: np.ndarray, unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_score) for sklearn's ROC functions: an unknown is a positive (rejected when high)."""
    y = np.r_[np.zeros(len(known), dtype=int), np.ones(len(unknown), dtype=int)]
    return y, np.concatenate([known, unknown]).astype(np.float64)


def threshold_for(known: np.ndarray, accept: float = ACCEPT) -> float:
    """The score at or below which `accept` of the known samples lie (those are accepted)."""
    if not 0 < accept <= 1:
        raise ValueError(f"accept={accept} must be in (0, 1]")
    known = np.asarray(known, np.float64)
    if len(known) == 0:
        raise ValueError("no known samples to set a threshold on")
    return float(np.quantile(known, accept, method="higher"))


def youden_threshold(known: np.ndarray, unknown: np.ndarray) -> float:
    """The threshold that maximises TPR - FPR between known and calibration-unknown scores.

    The threshold is one of the scores and rejects what lies strictly above it (as `rates` does);
    among equally good ones the lowest wins (the one that rejects most).
    """
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if len(known) == 0 or len(unknown) == 0:
        raise ValueError(f"{len(known)} known and {len(unknown)} unknown scores: the calibrated threshold needs both")
    # roc_curve rejects score >= thr[i], thr descending over the distinct scores (thr[0] = inf rejects
    # none); that is score > thr[i + 1], so point i's threshold in our convention is thr[i + 1]. The
    # last point (everything rejected) has none.
    fpr, tpr, thr = roc_curve(*_positives_unknown(known, unknown), drop_intermediate=False)
    j = (tpr - fpr)[:-1]
    best = np.flatnonzero(j >= j.max() - 1e-12)[-1]  # the last = the lowest threshold; 1e-12 absorbs rounding
    return float(thr[best + 1])


def rates(known: np.ndarray, unknown: np.ndarray, threshold: float) -> dict[str, float]:
    """TPR (unknowns rejected) and FPR (knowns rejected) when scores above threshold are rejected."""
    return {
        "tpr": float(np.mean(np.asarray(unknown) > threshold)) if len(unknown) else float("nan"),
        "fpr": float(np.mean(np.asarray(known) > threshold)) if len(known) else float("nan"),
    }


# ---- the product's open-set rule -----------------------------------------------------------------
@dataclass
class OpenSet:
    """A fitted score and its threshold: scores above the threshold answer "unknown"."""

    kind: str
    threshold: float
    accept: float
    means: np.ndarray | None = None  # K x F (mahalanobis)
    precision: np.ndarray | None = None  # F x F
    bank: np.ndarray | None = None  # M x F unit rows (knn)
    norm: list[float] | None = None  # ensemble: (mean, spread) of each ENSEMBLE score on validation samples

    def score(self, features: np.ndarray, model_logits: np.ndarray) -> np.ndarray:
        """(N,) open-set scores of samples (features and model-head logits from the attributor)."""
        if self.kind == "mahalanobis":
            return mahalanobis(features, self.means, self.precision)
        if self.kind == "knn":
            return knn_distance(features, self.bank)
        if self.kind == "msp":
            return msp(model_logits)
        if self.kind == "ensemble":
            return self._ensemble(features, model_logits)
        return energy(model_logits)

    def _parts(self, features: np.ndarray, model_logits: np.ndarray) -> list[np.ndarray]:
        return [mahalanobis(features, self.means, self.precision), knn_distance(features, self.bank), energy(model_logits)]

    def _ensemble(self, features: np.ndarray, model_logits: np.ndarray) -> np.ndarray:
        parts = self._parts(features, model_logits)
        return np.mean([(x - self.norm[2 * i]) / self.norm[2 * i + 1] for i, x in enumerate(parts)], axis=0)

    def save(self, folder: Path) -> None:
        """openset.json (+ openset.safetensors with the class means and precision)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stats = {k: np.ascontiguousarray(v) for k, v in (("means", self.means), ("precision", self.precision),
                                                          ("bank", self.bank)) if v is not None}
        if stats:
            save_file(stats, str(folder / STATS))
        (folder / CONFIG).write_text(json.dumps({"kind": self.kind, "threshold": self.threshold, "accept": self.accept,
                                                 "norm": self.norm}))

    @classmethod
    def load(cls, folder: Path) -> OpenSet:
        from safetensors.numpy import load_file

        folder = Path(folder)
        cfg = json.loads((folder / CONFIG).read_text())
        stats = load_file(str(folder / STATS)) if (folder / STATS).is_file() else {}
        return cls(cfg["kind"], float(cfg["threshold"]), float(cfg["accept"]), stats.get("means"), stats.get("precision"),
                   stats.get("bank"), cfg.get("norm"))


def fit(kind: str, train_features: np.ndarray, train_labels: np.ndarray, n_classes: int,
        val_features: np.ndarray, val_logits: np.ndarray, *, accept: float = ACCEPT) -> OpenSet:
    """Fit the score on training features, then the threshold that accepts `accept` of validation samples."""
    if kind not in SCORES:
        raise ValueError(f"open-set score {kind!r}: choose one of {', '.join(SCORES)}")
    means = precision = bank = None
    if kind in ("mahalanobis", "ensemble"):
        means, precision = fit_gaussians(train_features, train_labels, n_classes)
    if kind in ("knn", "ensemble"):
        keep = np.arange(len(train_features))
        if len(keep) > KNN_BANK:
            keep = np.sort(np.random.default_rng(0).choice(len(keep), KNN_BANK, replace=False))
        bank = unit_rows(np.asarray(train_features)[keep]).astype(np.float32)
    rule = OpenSet(kind, 0.0, accept, means, precision, bank)
    if kind == "ensemble":
        parts = rule._parts(val_features, val_logits)
        rule.norm = [float(v) for x in parts for v in (np.mean(x), max(float(np.std(x)), 1e-12))]
    rule.threshold = threshold_for(rule.score(val_features, val_logits), accept)
    return rule


# ---- the benchmark's protocol: whole models held out (folds: protocol.heldout_model_folds) ------------
def evaluate_fold(known_val: np.ndarray, calibration_unknown: np.ndarray, known_test: np.ndarray,
                  test_unknown: np.ndarray, *, accept: float = ACCEPT) -> dict[str, float]:
    """AUROC on the test group, and TPR/FPR there at the two thresholds (known-accept and calibrated)."""
    out = {"auroc": auroc(known_test, test_unknown)}
    t95 = threshold_for(known_val, accept)
    tcal = youden_threshold(known_val, calibration_unknown)
    for name, t in (("accept", t95), ("calibrated", tcal)):
        r = rates(known_test, test_unknown, t)
        out[f"tpr_{name}"], out[f"fpr_{name}"], out[f"threshold_{name}"] = r["tpr"], r["fpr"], t
    return out
