"""Small GM datasets on disk for tests: real images, model folders, models.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HEADER = "model,family,upsampling,loss,normalization\n"
DESIGNS = {
    "gan_tconv": "gan,transposed_conv,non_saturating,batch",
    "vae_nearest": "vae,nearest_conv,elbo,none",
    "gan_pixel": "gan,pixel_shuffle,hinge,spectral",
}


def blobs(rng: np.random.Generator, n: int, channels: int, size: int, sharp: float = 0.0) -> np.ndarray:
    """uint8 N x C x H x W images: smooth blobs plus a little noise, like small garments."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, channels, size, size), np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)
        img = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = img + sharp * ((np.indices((size, size)).sum(0) % 2) - 0.5)  # a checkerboard "artifact"
        for c in range(channels):
            noisy = img * rng.uniform(0.6, 1.0) + rng.normal(0, 0.03, img.shape)
            out[i, c] = np.clip(noisy * 255, 0, 255).astype(np.uint8)
    return out


def save_png(path: Path, image_chw: np.ndarray) -> None:
    arr = image_chw[0] if image_chw.shape[0] == 1 else image_chw.transpose(1, 2, 0)
    Image.fromarray(arr).save(path)


def add_model(root: Path, name: str, design: str, images: np.ndarray) -> None:
    """Write a model folder of PNGs and append its row to models.csv."""
    d = root / "models" / name
    d.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        save_png(d / f"{i:04d}.png", img)
    with open(root / "models.csv", "a") as f:
        f.write(f"{name},{design}\n")


def make_gm_dataset(root: Path, *, channels: int = 1, size: int = 16, n_real: int = 300, n_samples: int = 24, models=("gan_tconv", "vae_nearest"), seed: int = 0) -> Path:
    """A GM dataset: real/ as one npz, models/<name>/ as PNGs, models.csv."""
    rng = np.random.default_rng(seed)
    (root / "real").mkdir(parents=True, exist_ok=True)
    real = blobs(rng, n_real, channels, size)
    arr = real[:, 0] if channels == 1 else real.transpose(0, 2, 3, 1)
    np.savez_compressed(root / "real" / "real.npz", images=arr)
    (root / "models.csv").write_text(HEADER)
    for k, name in enumerate(models):
        add_model(root, name, DESIGNS[name], blobs(rng, n_samples, channels, size, sharp=0.05 * (k + 1)))
    return root
