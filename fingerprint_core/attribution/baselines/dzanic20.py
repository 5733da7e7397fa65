"""Dzanic20 (Dzanic, Shah, Witherden, NeurIPS 2020, "Fourier spectrum discrepancies in deep network
generated images"): a power law fitted to the high-frequency end of the reduced (azimuthally
averaged) spectrum; its decay exponent and magnitude are the features of a k-NN classifier."""

from __future__ import annotations

import numpy as np

from fingerprint_core.attribution.baselines.common import FeatureMethod, azimuthal_mean, power_spectrum, radius_map

TAIL = 0.25  # the fit uses the top quarter of frequencies, k >= 0.75 k_max (as the paper's threshold)
EPS = 1e-12


def reduced_spectrum(images: np.ndarray) -> np.ndarray:
    """float64 N x (k_max + 1): mean power per ring of rounded radius k <= k_max = min(H, W) // 2,
    divided by the zero-frequency power (the scale of the image's brightness)."""
    _, _, h, w = images.shape
    k_max = min(h, w) // 2
    rings = np.rint(radius_map(h, w)).astype(np.int64)
    rings[rings > k_max] = -1  # the corners: only part of each ring exists there
    spec = azimuthal_mean(power_spectrum(images), rings, k_max + 1)
    return spec / np.maximum(spec[:, :1], EPS)


def decay_features(images: np.ndarray, tail: float = TAIL) -> np.ndarray:
    """float32 N x 2: (b, log E(k_T)) of the least-squares fit log E(k) = log a + b log k over
    k_T = ceil((1 - tail) k_max) <= k <= k_max; b is the decay exponent, E(k_T) the fitted
    magnitude where the tail starts (less tied to b than a itself)."""
    spec = reduced_spectrum(images)
    k_max = spec.shape[1] - 1
    k_t = max(1, int(np.ceil((1 - tail) * k_max)))
    k = np.arange(k_t, k_max + 1, dtype=np.float64)
    if len(k) < 2:
        raise ValueError(f"images of {images.shape[-2]} x {images.shape[-1]} px leave fewer than 2 tail frequencies to fit")
    lk, le = np.log(k), np.log(spec[:, k_t:] + EPS)  # (K,), (N, K)
    lk_c = lk - lk.mean()
    b = (le - le.mean(1, keepdims=True)) @ lk_c / (lk_c @ lk_c)
    log_a = le.mean(1) - b * lk.mean()
    return np.stack([b, log_a + b * lk[0]], axis=1).astype(np.float32)


class Dzanic20(FeatureMethod):
    """Spectral decay features + k-NN (one vote per head; k chosen on validation)."""

    name = "Dzanic20"
    classifier_kind = "knn"

    def extract(self, images):
        return decay_features(images)
