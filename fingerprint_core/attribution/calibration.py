"""Calibrated probabilities: temperature scaling of the model head (Guo et al., ICML 2017) and the
expected calibration error with its reliability diagram (15 equal-width confidence bins).

The temperature is fitted on validation logits only (one scalar: the arg-max, so the accuracy, is
unchanged); ECE and the diagram are then measured on test samples the fit never saw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from fingerprint_core.attribution.method import softmax

BINS = 15
T_RANGE = (0.05, 20.0)  # a temperature outside this says the logits are degenerate, not miscalibrated


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(z)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the validation NLL (1.0 when there is nothing to fit on)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 1.0
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    res = minimize_scalar(lambda t: nll(logits, labels, float(np.exp(t))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    return float(np.exp(res.x))


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature), float64."""
    return softmax(np.asarray(logits, np.float64) / temperature)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Per confidence bin: its range, the mean confidence, the accuracy and the count (empty bins kept)."""
    probs = np.asarray(probs, np.float64)
    conf = probs.max(1) if len(probs) else np.zeros(0)
    right = probs.argmax(1) == np.asarray(labels) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)  # (lo, hi], the first bin from 0
    rows = []
    for b in range(bins):
        m = which == b
        rows.append({"lo": edges[b], "hi": edges[b + 1], "count": int(m.sum()),
                     "confidence": float(conf[m].mean()) if m.any() else float("nan"),
                     "accuracy": float(right[m].mean()) if m.any() else float("nan")})
    return pd.DataFrame(rows)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: sum over bins of (share of samples) x |accuracy - confidence|."""
    r = reliability(probs, labels, bins)
    n = r["count"].sum()
    if n == 0:
        return float("nan")
    used = r[r["count"] > 0]
    return float((used["count"] / n * (used["accuracy"] - used["confidence"]).abs()).sum())
