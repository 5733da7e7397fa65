"""Artifact spectra: where in frequency a model's artifacts (and samples) put their energy.

Per model: the mean log power spectrum of its RGB artifacts and of its raw samples, their
azimuthal averages, and their differences from the real control (the held-out real images,
whose "artifact" is real minus nearest real). Spectra are fftshifted: DC at the centre
(row H // 2, column W // 2), the Nyquist frequencies on the first row and column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fingerprint_core import memory

EPS = 1e-12  # inside the log, as for the FREQ space


def log_power(images: np.ndarray, *, per_channel: bool = False) -> np.ndarray:
    """Mean over images of log(|fftshift(fft2(x))|^2 + eps): C x H x W per channel, or its channel mean H x W.

    images: N x C x H x W (or N x D with a square single channel), any real dtype. Read in blocks
    sized from the working set (a 256 x 256 x 3 image's complex spectrum is 1.5 MB).
    """
    x = np.asarray(images) if not isinstance(images, np.memmap) else images
    if x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        x = x.reshape(len(x), 1, side, side)
    total = np.zeros(x.shape[1:], dtype=np.float64)
    batch = memory.rows_per_chunk(int(np.prod(x.shape[1:])) * 48, share=0.5)  # complex128 + float64 temporaries
    for a in range(0, len(x), batch):
        block = np.asarray(x[a : a + batch], dtype=np.float64)  # (n, C, H, W)
        f = np.fft.fftshift(np.fft.fft2(block), axes=(-2, -1))
        total += np.log(np.abs(f) ** 2 + EPS).sum(axis=0)
    per = total / max(len(x), 1)
    return per if per_channel else per.mean(axis=0)


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

    artifact: np.ndarray  # H x W mean log power of pixel artifacts, averaged over channels
    sample: np.ndarray  # H x W mean log power of samples in [0, 1]
    artifact_profile: np.ndarray  # azimuthal average of `artifact`
    sample_profile: np.ndarray
    artifact_channels: np.ndarray | None = None  # C x H x W: the same per channel (colour traces differ by channel)
    sample_channels: np.ndarray | None = None


def model_spectra(images_uint8: np.ndarray, pixel_artifacts: np.ndarray) -> ModelSpectra:
    """Spectra of one model from its uint8 samples and its pixel (RGB) artifacts (N x D, D = C*H*W)."""
    n, c, h, w = images_uint8.shape
    step = memory.rows_per_chunk(c * h * w * 4, share=0.25)  # float32 copies, a block at a time
    art_sum = np.zeros((c, h, w))
    smp_sum = np.zeros((c, h, w))
    for a in range(0, n, step):
        m = min(step, n - a)
        art_sum += m * log_power(np.asarray(pixel_artifacts[a : a + step], dtype=np.float32).reshape(m, c, h, w), per_channel=True)
        smp_sum += m * log_power(np.asarray(images_uint8[a : a + step], dtype=np.float32) / 255, per_channel=True)
    art, smp = art_sum / max(n, 1), smp_sum / max(n, 1)
    return ModelSpectra(art.mean(0), smp.mean(0), azimuthal_average(art.mean(0)), azimuthal_average(smp.mean(0)), art, smp)


def difference(model: ModelSpectra, real: ModelSpectra) -> ModelSpectra:
    """A model's spectra minus the real control's (log power ratio: > 0 where it has more energy)."""
    return ModelSpectra(
        model.artifact - real.artifact,
        model.sample - real.sample,
        model.artifact_profile - real.artifact_profile,
        model.sample_profile - real.sample_profile,
        *((model.artifact_channels - real.artifact_channels, model.sample_channels - real.sample_channels)
          if model.artifact_channels is not None and real.artifact_channels is not None else ()),
    )
