"""Artifact spectra: where in frequency a model's artifacts (and samples) put their energy.

Per model: the mean log power spectrum of its RGB artifacts and of its raw samples, their
azimuthal averages, and their differences from the real control (the held-out real images,
whose "artifact" is real minus nearest real). Spectra are fftshifted: DC at the centre
(row H // 2, column W // 2), the Nyquist frequencies on the first row and column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-12  # inside the log, as for the FREQ space


def log_power(images: np.ndarray, *, batch: int = 4096) -> np.ndarray:
    """Mean over images of log(|fftshift(fft2(x))|^2 + eps), averaged over channels: H x W.

    images: N x C x H x W (or N x D with a square single channel), any real dtype.
    """
    x = np.asarray(images)
    if x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        x = x.reshape(len(x), 1, side, side)
    total = np.zeros(x.shape[-2:], dtype=np.float64)
    for a in range(0, len(x), batch):
        block = np.asarray(x[a : a + batch], dtype=np.float64)  # (n, C, H, W)
        f = np.fft.fftshift(np.fft.fft2(block), axes=(-2, -1))
        total += np.log(np.abs(f) ** 2 + EPS).mean(axis=1).sum(axis=0)
    return total / max(len(x), 1)


def azimuthal_average(spectrum: np.ndarray) -> np.ndarray:
    """Mean of an fftshifted H x W spectrum over rings of integer radius from DC (index = radius)."""
    h, w = spectrum.shape
    yy, xx = np.indices((h, w))
    r = np.rint(np.hypot(yy - h // 2, xx - w // 2)).astype(np.int64)
    sums = np.bincount(r.ravel(), weights=spectrum.ravel())
    counts = np.bincount(r.ravel())
    return sums / np.maximum(counts, 1)


@dataclass
class ModelSpectra:
    """The spectra of one model (or of the real control)."""

    artifact: np.ndarray  # H x W mean log power of RGB artifacts
    sample: np.ndarray  # H x W mean log power of samples in [0, 1]
    artifact_profile: np.ndarray  # azimuthal average of `artifact`
    sample_profile: np.ndarray


def model_spectra(images_uint8: np.ndarray, rgb_artifacts: np.ndarray) -> ModelSpectra:
    """Spectra of one model from its uint8 samples and its RGB artifacts (N x D, D = C*H*W)."""
    n, c, h, w = images_uint8.shape
    art = log_power(np.asarray(rgb_artifacts, dtype=np.float32).reshape(n, c, h, w))
    smp = log_power(np.asarray(images_uint8, dtype=np.float32) / 255)
    return ModelSpectra(art, smp, azimuthal_average(art), azimuthal_average(smp))


def difference(model: ModelSpectra, real: ModelSpectra) -> ModelSpectra:
    """A model's spectra minus the real control's (log power ratio: > 0 where it has more energy)."""
    return ModelSpectra(
        model.artifact - real.artifact,
        model.sample - real.sample,
        model.artifact_profile - real.artifact_profile,
        model.sample_profile - real.sample_profile,
    )
