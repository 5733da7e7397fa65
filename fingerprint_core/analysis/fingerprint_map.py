"""The fingerprint map: a seeded 2-D UMAP of per-sample fingerprints, and per-model centroids."""

from __future__ import annotations

import os
import threading

import numpy as np
import pandas as pd

# numba's default threading layer aborts the process when two threads run parallel code at
# once (the app serves sessions from threads): every UMAP call here holds this lock.
_UMAP_LOCK = threading.Lock()


def reduce(features: np.ndarray, *, n_components: int = 50, seed: int = 0) -> np.ndarray:
    """PCA to n_components (when the rows are wider than that), float32."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float32)
    k = min(n_components, x.shape[1], max(len(x) - 1, 1))
    if x.shape[1] <= n_components:
        return x
    return PCA(n_components=k, random_state=seed, svd_solver="randomized").fit_transform(x).astype(np.float32)


def umap_2d(features: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """Seeded 2-D UMAP coordinates (N x 2, float32) of feature rows; reproducible with its seed."""
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "manifpt", "numba"))
    import umap  # imported late: numba compiles on first use

    x = np.asarray(features, dtype=np.float32)
    with _UMAP_LOCK:
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, max(len(x) - 1, 2)), min_dist=min_dist,
                            random_state=seed, n_jobs=1)
        return reducer.fit_transform(x).astype(np.float32)


def centroids(coords: np.ndarray, models: np.ndarray) -> pd.DataFrame:
    """Mean map position of each model's samples: columns model, x, y, n."""
    df = pd.DataFrame({"model": np.asarray(models), "x": coords[:, 0], "y": coords[:, 1]})
    out = df.groupby("model", sort=False).agg(x=("x", "mean"), y=("y", "mean"), n=("x", "size"))
    return out.reset_index()
