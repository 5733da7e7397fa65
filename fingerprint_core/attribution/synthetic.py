"""Synthetic unknown fingerprints, after POSE (Yang et al., 2023): small, randomly initialised
augmentation networks perturb known models' images, each net leaving a trace of its own, so the
attributor sees during training what "a generator it does not know" looks like.

An augmentation net adds a trace to an image: y = x + s * g(x) / rms(g(x)), where g is a 2x average
pool, a 3 x 3 convolution, a LeakyReLU, one upsampling block of the zoo's vocabulary (transposed
convolution, nearest or bilinear then a convolution, pixel shuffle) and a 3 x 3 convolution back to the
image's channels, all with weights drawn from the net's seed; s, the trace's RMS in pixel codes, is
drawn per image from STRENGTH. There are NETS nets; image i goes through one drawn from (copy, i).
The artifacts of the traced images are re-projected like any new image (robustness.banks: embedded,
nearest real image found again), so the synthetic fingerprints live where a foreign generator's would.

Training uses them as outliers (outlier exposure, Hendrycks et al., ICLR 2019): besides the heads'
cross-entropies, the model head's softmax on a batch of synthetic artifacts is pulled towards the
uniform distribution over the generated classes (so neither a known model nor "real" is confident
on them), weighted by WEIGHT (ManiFPT.fit(outliers=...)). Only known models' training rows are traced:
the held-out models of the benchmark's protocol and the foreign set are never read.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fingerprint_core.attribution.robustness import Transform

VERSION = 1  # bump when the same (images, copy, ids) would give other traced images
NETS = 16
WIDTH = 8
UPSAMPLING = ("transposed_conv", "nearest_conv", "bilinear_conv", "pixel_shuffle")
STRENGTH = (2.0, 8.0)  # the trace's RMS in pixel codes, uniform per image
PER_MODEL = 200  # traced training images per known generated model
WEIGHT = 0.5  # the outlier-exposure term's weight in the training loss


def recipe() -> dict:
    """The synthetic-unknown recipe as data (part of every key that depends on it)."""
    return {"kind": "synthetic-unknowns", "version": VERSION, "nets": NETS, "width": WIDTH,
            "upsampling": list(UPSAMPLING), "strength_codes": list(STRENGTH), "per_model": PER_MODEL,
            "weight": WEIGHT}


class AugmentationNet(nn.Module):
    """One randomly initialised trace generator (weights from its seed; never trained)."""

    def __init__(self, seed: int, channels: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(int(seed))
        self.upsampling = UPSAMPLING[int(torch.randint(len(UPSAMPLING), (1,), generator=gen))]
        self.inp = nn.Conv2d(channels, WIDTH, 3, padding=1)
        if self.upsampling == "transposed_conv":
            self.up = nn.ConvTranspose2d(WIDTH, WIDTH, 4, stride=2, padding=1)
        elif self.upsampling == "pixel_shuffle":
            self.up = nn.Sequential(nn.Conv2d(WIDTH, WIDTH * 4, 3, padding=1), nn.PixelShuffle(2))
        else:
            mode = "nearest" if self.upsampling == "nearest_conv" else "bilinear"
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(WIDTH, WIDTH, 3, padding=1))
        self.out = nn.Conv2d(WIDTH, channels, 3, padding=1)
        with torch.no_grad():  # seeded draws, independent of torch's global generator
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / max(1, p[0].numel())) ** 0.5 if p.dim() > 1
                        else torch.randn(p.shape, generator=gen) * 0.1)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.inp(F.avg_pool2d(x, 2)), 0.2)
        return self.out(F.leaky_relu(self.up(h), 0.2))


def trace(images: np.ndarray, copy: int, ids: np.ndarray) -> np.ndarray:
    """uint8 N x C x H x W: each image with the trace of its augmentation net (drawn from (copy, id)),
    at an RMS strength drawn from STRENGTH, rounded and clipped to pixel codes."""
    x = np.asarray(images)
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"trace takes uint8 N x C x H x W images; got {x.dtype} {x.shape}")
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"trace needs even image sides (a 2x pool and a 2x upsampling); got {x.shape[-2:]}")
    ids = np.asarray(ids, np.int64)
    if len(ids) != len(x):
        raise ValueError(f"{len(ids)} ids for {len(x)} images")
    draws = [np.random.default_rng([VERSION, int(copy), int(i)]) for i in ids]
    net_of = np.array([int(r.integers(NETS)) for r in draws])
    strength = np.array([r.uniform(*STRENGTH) for r in draws], np.float32)
    out = np.array(x, copy=True)
    with torch.no_grad():
        for k in np.unique(net_of):
            sel = np.flatnonzero(net_of == k)
            net = AugmentationNet(seed=int(k), channels=x.shape[1])
            t = torch.from_numpy(x[sel].astype(np.float32) / 127.5 - 1.0)
            g = net(t)
            g = g / g.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-8)
            y = x[sel].astype(np.float32) + torch.from_numpy(strength[sel])[:, None, None, None].numpy() * g.numpy()
            out[sel] = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return out


def transform() -> Transform:
    """The augmentation nets as a bank transform (robustness.banks)."""
    return Transform(recipe(), trace)


def source_rows(table, rows: np.ndarray, real: str, per_model: int = PER_MODEL, seed: int = 0) -> np.ndarray:
    """A seeded subset of per_model of the given rows (positions in the split table) per generated
    model: the known models' images the nets trace (real images are not traced)."""
    rows = np.asarray(rows, np.int64)
    models = table["model"].to_numpy()[rows]
    picked = [np.sort(np.random.default_rng([VERSION, int(seed), zlib.crc32(str(m).encode())])
                      .permutation(rows[models == m])[:per_model])  # a model's pick does not depend on the others
              for m in dict.fromkeys(models) if m != real]
    return np.concatenate(picked) if picked else np.zeros(0, np.int64)


def outlier_exposure(logits: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model head's softmax against the uniform distribution over the generated
    classes (a boolean mask over the classes): low when no class, real included, is favoured."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp[:, generated]).mean()
