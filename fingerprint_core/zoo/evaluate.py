"""Quality of the zoo's models in the SL space: figures into each card and DIR/quality.csv."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fingerprint_core import spaces
from fingerprint_core.fsio import atomic_write
from fingerprint_core.zoo import cards, quality
from fingerprint_core.zoo.results import BuildError, finished_results

N_REAL = 2000  # test images the samples are compared with
REAL_SEED = 0  # which 2,000 of the 10,000 test images
QUALITY_COLUMNS = ("model", "fid", "precision", "recall", "k", "n_samples", "n_real", "passes")


def real_test_images(n: int = N_REAL, seed: int = REAL_SEED) -> np.ndarray:
    """A seeded subset of n Fashion-MNIST test images, uint8 (n, 1, 32, 32)."""
    from fingerprint_core.datasets import load_fashion_mnist

    images, _ = load_fashion_mnist("test")
    pick = np.sort(np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False))
    return images[pick]


def figures(sample_features, real_features, *, k: int = quality.K) -> dict:
    """FID and k-NN precision/recall of sample features against real features."""
    precision, recall = quality.precision_recall(sample_features, real_features, k)
    return {"fid": quality.frechet_distance(sample_features, real_features), "precision": precision,
            "recall": recall, "k": k, "n_samples": len(sample_features), "n_real": len(real_features)}


def evaluate(out: str | os.PathLike, *, encoder: str | os.PathLike | None = None,
             real_images: np.ndarray | None = None, names: Sequence[str] | None = None,
             n_samples: int = 2000, device: str | torch.device = "auto", k: int = quality.K,
             real_seed: int = REAL_SEED) -> pd.DataFrame:
    """Measure every finished model (or names) in the SL space; update result.json, card.md, quality.csv.

    encoder: SL weights (default: the SL space's default weights); real_images: uint8 (M, 1, 32, 32)
    (default: 2,000 seeded Fashion-MNIST test images).
    """
    out = Path(out)
    encoder = Path(encoder) if encoder else spaces.default_weights("sl")
    space = spaces.get("sl", weights=encoder, device=device)  # FileNotFoundError says how to get one
    sha = hashlib.sha256(encoder.read_bytes()).hexdigest()
    if real_images is None:
        real_images = real_test_images(seed=real_seed)
    real_features = space.embed(real_images)  # (M, D)
    results = finished_results(out)
    if names is not None:
        missing = [n for n in names if n not in results]
        if missing:
            raise BuildError(f"not finished in {out}: {', '.join(missing)}")
        results = {n: results[n] for n in names}
    for name, result in results.items():
        model_dir = out / "models" / name
        with np.load(model_dir / "samples.npz") as npz:
            samples = npz["images"][:n_samples]  # (N, 32, 32)
        figs = figures(space.embed(samples[:, None]), real_features, k=k)
        figs.update(encoder=encoder.name, encoder_sha256=sha, real_seed=real_seed)
        result["quality"] = figs
        cards.write_card(model_dir, result)
        atomic_write(model_dir / "result.json", (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    return write_quality_csv(out)


def write_quality_csv(out: Path) -> pd.DataFrame:
    """Regenerate out/quality.csv from the quality figures stored with the finished models."""
    rows = []
    for name, result in finished_results(out).items():
        q = result.get("quality")
        if q:
            passes = q["precision"] >= cards.PRECISION_MIN and q["recall"] >= cards.RECALL_MIN
            rows.append({"model": name, **{c: q[c] for c in QUALITY_COLUMNS[1:-1]}, "passes": passes})
    table = pd.DataFrame(rows, columns=list(QUALITY_COLUMNS))
    atomic_write(out / "quality.csv", table.to_csv(index=False).encode("utf-8"))
    return table
