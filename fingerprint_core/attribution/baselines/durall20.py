"""Durall20 (Durall, Keuper, Keuper, CVPR 2020, "Watch your up-convolution"): the azimuthally
averaged 1-D power spectrum of an image, classified by logistic regression."""

from __future__ import annotations

import numpy as np

from fingerprint_core.attribution.baselines.common import FeatureMethod, azimuthal_mean, power_spectrum, radius_map

EPS = 1e-10  # inside log(power + eps): a zero ring (a flat image) stays finite


def azimuthal_spectrum(images: np.ndarray) -> np.ndarray:
    """float32 N x B: per ring of integer radius floor(r) (B rings, out to the corners), the log of
    the mean power of the grayscale image, min-max scaled to [0, 1] per image (as Durall et al.)."""
    n, _, h, w = images.shape
    rings = np.floor(radius_map(h, w)).astype(np.int64)
    n_rings = int(rings.max()) + 1
    if n == 0:
        return np.zeros((0, n_rings), np.float32)
    profile = np.log(azimuthal_mean(power_spectrum(images), rings, n_rings) + EPS)
    low, high = profile.min(1, keepdims=True), profile.max(1, keepdims=True)
    return ((profile - low) / np.maximum(high - low, 1e-12)).astype(np.float32)


class Durall20(FeatureMethod):
    """Azimuthal power spectrum + logistic regression (one per head)."""

    name = "Durall20"
    classifier_kind = "linear"

    def extract(self, images):
        return azimuthal_spectrum(images)
