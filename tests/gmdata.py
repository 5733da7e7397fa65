"""Small GM datasets on disk for tests: real images, model folders, models.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# Design rows of the toy models, in the vocabulary of DESIGN.md section 4.
TOY_MODELS = {
    "toy_gan": ("gan", "transposed_conv", "non_saturating", "batch"),
    "toy_vae": ("vae", "bilinear_conv", "elbo", "group"),
}
BAD_FILE = "bad.png"  # a text file with an image name, in the first model's folder


def blob_images(n: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 N x H x W x C images: a few smooth Gaussian blobs plus mild noise (not pure noise)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((n, size, size, channels), np.float32)
    for i in range(n):
        img = np.full((size, size, channels), 0.15, np.float32)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(2, size - 2, 2)
            sigma = rng.uniform(size / 10, size / 4)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
            img += blob[..., None] * rng.uniform(0.3, 0.8, channels)
        out[i] = img + rng.normal(0, 0.03, img.shape)
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def model_images(kind: str, n: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Toy samples with a model-specific trace: a checkerboard (transposed conv) or a blur (VAE)."""
    x = blob_images(n, size, channels, rng).astype(np.float32)
    if kind == "toy_gan":
        checker = (np.indices((size, size)).sum(0) % 2 * 2 - 1).astype(np.float32)
        x += 12 * checker[None, ..., None]
    else:
        x = (x + np.roll(x, 1, 1) + np.roll(x, -1, 1) + np.roll(x, 1, 2) + np.roll(x, -1, 2)) / 5
    return np.clip(x, 0, 255).round().astype(np.uint8)


def make_gm_dataset(folder: Path, *, channels: int = 1, size: int = 16, n_real: int = 300,
                    n_per_model: int = 24, seed: int = 0, bad_file: bool = True) -> Path:
    """Write a GM dataset (real/*.npz, models/<name>/*.png, models.csv, one bad file); returns it."""
    rng = np.random.default_rng(seed)
    (folder / "real").mkdir(parents=True)
    real = blob_images(n_real, size, channels, rng)
    np.savez_compressed(folder / "real" / "real.npz", images=real[..., 0] if channels == 1 else real)
    for name in TOY_MODELS:
        target = folder / "models" / name
        target.mkdir(parents=True)
        for i, img in enumerate(model_images(name, n_per_model, size, channels, rng)):
            Image.fromarray(img[..., 0] if channels == 1 else img).save(target / f"{i:03d}.png")
    if bad_file:
        (folder / "models" / next(iter(TOY_MODELS)) / BAD_FILE).write_text("not an image")
    rows = [dict(zip(("model", "family", "upsampling", "loss", "normalization"), (m, *d), strict=True))
            for m, d in TOY_MODELS.items()]
    pd.DataFrame(rows).to_csv(folder / "models.csv", index=False)
    return folder


def add_model(root: Path, name: str, design: tuple[str, str, str, str], images: np.ndarray) -> None:
    """Write a model folder of PNGs (images N x H x W x C) and append its row to models.csv."""
    target = root / "models" / name
    target.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(target / f"{i:03d}.png")
    with open(root / "models.csv", "a") as f:
        f.write(",".join((name, *design)) + "\n")
