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


def write_foreign_set(root: Path, n: int, size: int, seed: int = 9) -> Path:
    """A foreign set in the zoo's samples.npz layout (grayscale N x H x W uint8): two toy generators no
    toy workspace has, toy_cols (column stripes) and toy_grid (a coarse grid of bright dots)."""
    rng = np.random.default_rng(seed)
    for name in ("toy_cols", "toy_grid"):
        x = blob_images(n, size, 1, rng)[..., 0].astype(np.float32)
        if name == "toy_cols":
            x[:, :, ::2] += 15
        else:
            x[:, ::4, ::4] = 255
        (root / name).mkdir(parents=True)
        np.savez_compressed(root / name / "samples.npz", images=np.clip(x, 0, 255).round().astype(np.uint8))
    return root


def add_model(root: Path, name: str, design: tuple[str, str, str, str], images: np.ndarray) -> None:
    """Write a model folder of PNGs (images N x H x W x C) and append its row to models.csv."""
    target = root / "models" / name
    target.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(target / f"{i:03d}.png")
    with open(root / "models.csv", "a") as f:
        f.write(",".join((name, *design)) + "\n")


# A dataset with known structure: each upsampling level leaves its own faint periodic trace, under
# per-sample content (blobs) that dominates the raw artifacts; normalization leaves none.
TRACES = ("transposed_conv", "nearest_conv", "bilinear_conv", "pixel_shuffle")
NORMS = ("batch", "spectral", "none")


def _trace(level: str, size: int) -> np.ndarray:
    y, x = np.indices((size, size))
    pattern = {"transposed_conv": (x + y) % 2, "nearest_conv": (y // 2) % 2, "bilinear_conv": (x // 4) % 2,
               "pixel_shuffle": x % 2}[level]
    return (pattern * 2 - 1).astype(np.float32)


def make_design_dataset(folder: Path, *, size: int = 16, n_real: int = 400, n_per_model: int = 60, seeds: int = 2,
                        trace: float = 7.0, model_offset: float = 4.0, seed: int = 0, shuffle_designs: bool = False) -> Path:
    """12 designs (4 upsampling x 3 normalization, GANs), each trained `seeds` times: a model's samples
    are blobs + its upsampling trace (amplitude `trace` in 0-255 units) + a faint pattern of its own.
    With shuffle_designs the models.csv rows are permuted among designs (the traces stay): no design
    label then means anything."""
    rng = np.random.default_rng(seed)
    (folder / "real").mkdir(parents=True)
    np.savez_compressed(folder / "real" / "real.npz", images=blob_images(n_real, size, 1, rng)[..., 0])
    designs = [(u, n) for u in TRACES for n in NORMS]
    rows = []
    for d, (up, norm) in enumerate(designs):
        for s in range(seeds):
            name = f"m{d:02d}-s{s}"  # the name says nothing of the design
            x = blob_images(n_per_model, size, 1, rng).astype(np.float32)[..., 0]
            own = rng.normal(0, 1, (size, size)).astype(np.float32)
            x += trace * _trace(up, size)[None] + model_offset * own[None]
            add_images = np.clip(x, 0, 255).round().astype(np.uint8)[..., None]
            target = folder / "models" / name
            target.mkdir(parents=True)
            for i, img in enumerate(add_images):
                Image.fromarray(img[..., 0]).save(target / f"{i:03d}.png")
            rows.append({"model": name, "family": "gan", "upsampling": up, "loss": "hinge", "normalization": norm, "seed": s})
    table = pd.DataFrame(rows)
    if shuffle_designs:  # permute whole designs (twins stay twins), so labels carry no information
        order = rng.permutation(len(designs))
        per_design = {designs[i]: designs[order[i]] for i in range(len(designs))}
        pairs = zip(table["upsampling"], table["normalization"], strict=True)
        table[["upsampling", "normalization"]] = [per_design[p] for p in pairs]
    table.to_csv(folder / "models.csv", index=False)
    return folder
