"""Frank20 (Frank et al., ICML 2020, "Leveraging frequency analysis for deep fake image
recognition"): log-scaled 2-D DCT coefficients, standardised, and a linear classifier (their
ridge-regression variant: here an L2-penalised logistic regression per head)."""

from __future__ import annotations

import numpy as np
from scipy.fft import dctn

from fingerprint_core.attribution.baselines.common import FeatureMethod

EPS = 1e-4  # in log(|D| + eps), below the uint8 quantisation floor of an orthonormal coefficient (~1e-3)


def log_dct(images: np.ndarray) -> np.ndarray:
    """float32 N x (C H W): log(|DCT-II(x)| + eps) per channel, orthonormal, x in [0, 1]."""
    d = dctn(images.astype(np.float64) / 255.0, type=2, norm="ortho", axes=(-2, -1))
    return np.log(np.abs(d) + EPS).reshape(len(images), -1).astype(np.float32)


class Frank20(FeatureMethod):
    """log-DCT + L2-penalised linear classifier (one per head); standardised inside the classifier."""

    name = "Frank20"
    classifier_kind = "linear"

    def extract(self, images):
        return log_dct(images)
