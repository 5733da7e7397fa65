"""Marra19 (Marra et al., MIPR 2019, "Do GANs leave artificial fingerprints?"): the noise residual of
an image (the image minus a denoised version), each source's fingerprint is the mean residual of its
training images, and an image is attributed by its normalised correlation with each fingerprint.

Their denoiser is a wavelet filter (BM3D in a variant); here a 3 x 3 median filter per channel, the
high-pass the ManiFPT authors' spectra scripts use (x - median3(x)): edge-preserving like theirs,
cheap and exact on uint8 images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fingerprint_core.attribution.baselines.common import ABSENT, check_fit, images_of, in_blocks
from fingerprint_core.attribution.method import Method, read_config, write_config

SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)  # logits = scale x correlation; scale on validation


def residual(images: np.ndarray) -> np.ndarray:
    """float32 N x (C H W): x - median3(x) per channel, x in [0, 1], reflected borders."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0  # (N, C, H, W)
    n, c, h, w = x.shape
    if n == 0:
        return np.zeros((0, c * h * w), np.float32)
    patches = F.unfold(F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="reflect"), 3)  # (NC, 9, HW)
    med = patches.median(dim=1).values.reshape(n, c, h, w)
    return (x - med).reshape(n, -1).numpy()


def normalise(rows: np.ndarray) -> np.ndarray:
    """Each row minus its mean, divided by its L2 norm (zero rows stay zero)."""
    z = rows - rows.mean(1, keepdims=True)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.where(norm > 0, norm, 1.0)).astype(np.float32)


class Marra19(Method):
    """Mean noise residual per class (one set per head) + normalised correlation."""

    name = "Marra19"
    needs = ("images",)

    def __init__(self, *, scales: tuple[float, ...] = SCALES) -> None:
        self.scales = tuple(float(s) for s in scales)

    def fit(self, train, targets, val, val_targets, *, classes, seed=0, device="auto"):
        X = images_of(train, self.name)
        check_fit(targets, classes, len(X), self.name)
        self.classes_ = {h: list(n) for h, n in classes.items()}
        sums = {h: np.zeros((len(n), int(np.prod(X.shape[1:]))), np.float64) for h, n in classes.items()}
        counts = {h: np.zeros(len(n), np.int64) for h, n in classes.items()}
        for a in range(0, len(X), 4096):  # running sums: memory bounded by the block
            r = residual(np.asarray(X[a:a + 4096]))
            for h in classes:
                y = np.asarray(targets[h][a:a + 4096])
                onehot = np.zeros((len(classes[h]), len(y)))
                onehot[y, np.arange(len(y))] = 1.0
                sums[h] += onehot @ r  # per class, the sum of its residuals
                counts[h] += np.bincount(y, minlength=len(classes[h]))
        self.fingerprints_ = {h: (sums[h] / np.maximum(counts[h], 1)[:, None]).astype(np.float32) for h in classes}
        self.seen_ = {h: counts[h] > 0 for h in classes}
        corr = self._correlations(images_of(val, self.name))
        self.scale_ = {h: self._pick_scale(corr[h], val_targets[h], self.seen_[h]) for h in classes}
        return self

    def _pick_scale(self, corr: np.ndarray, y: np.ndarray, seen: np.ndarray) -> float:
        """The scale with the lowest validation cross-entropy (the ranking does not depend on it)."""
        if len(y) == 0:
            return self.scales[len(self.scales) // 2]
        losses = []
        for s in self.scales:
            z = np.where(seen, s * corr, ABSENT).astype(np.float64)
            z -= z.max(1, keepdims=True)
            losses.append(float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y])))
        return self.scales[int(np.argmin(losses))]

    def _correlations(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if not hasattr(self, "fingerprints_"):
            raise RuntimeError(f"{self.name} is not fitted yet: call fit() or load() first")
        fps = {h: normalise(f) for h, f in self.fingerprints_.items()}
        parts = in_blocks(lambda b: np.concatenate([normalise(residual(b)) @ fps[h].T for h in fps], 1), images)
        out, at = {}, 0
        for h, f in fps.items():
            out[h], at = parts[:, at:at + len(f)], at + len(f)
        return out

    def logits(self, x):
        corr = self._correlations(images_of(x, self.name))
        return {h: np.where(self.seen_[h], self.scale_[h] * c, ABSENT).astype(np.float32) for h, c in corr.items()}

    def features(self, x):
        """The correlations with the fingerprints of the model head."""
        return self._correlations(images_of(x, self.name))["model"].astype(np.float32)

    def save(self, folder):
        folder = Path(folder)
        if not hasattr(self, "fingerprints_"):
            raise RuntimeError(f"{self.name} is not fitted yet: nothing to save")
        write_config(folder, {"name": self.name, "params": {"scales": list(self.scales)}, "classes": self.classes_,
                              "scale": self.scale_})
        np.savez(folder / "weights.npz", **{f"fingerprint.{h}": f for h, f in self.fingerprints_.items()},
                 **{f"seen.{h}": s for h, s in self.seen_.items()})

    @classmethod
    def load(cls, folder):
        cfg = read_config(folder)
        self = cls(scales=tuple(cfg["params"]["scales"]))
        self.classes_, self.scale_ = cfg["classes"], {h: float(s) for h, s in cfg["scale"].items()}
        with np.load(Path(folder) / "weights.npz", allow_pickle=False) as z:
            self.fingerprints_ = {h: z[f"fingerprint.{h}"] for h in self.classes_}
            self.seen_ = {h: z[f"seen.{h}"] for h in self.classes_}
        return self
