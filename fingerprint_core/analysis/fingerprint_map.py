"""The fingerprint map: a seeded 2-D UMAP of per-sample fingerprints, and per-model centroids."""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np
import pandas as pd
from platformdirs import user_cache_path

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


def knn_graph(features: np.ndarray, k: int, *, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row among the rows, itself first: (indices int64 N x k,
    Euclidean distances float32 N x k). Chunked matmul in torch: never N x N at once."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    sq = (x * x).sum(1)
    idx = np.empty((len(x), k), dtype=np.int64)
    dist = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), chunk):
        q = x[start:start + chunk]
        # |r|^2 - 2 q.r in one fused pass (|q|^2 is the same along a row: it cannot change the order)
        d2 = torch.addmm(sq[None, :], q, x.T, beta=1.0, alpha=-2.0)
        rows = torch.arange(len(q))
        d2[rows, rows + start] = float("-inf")  # the point itself comes first, even among exact duplicates
        top = torch.topk(d2, k, dim=1, largest=False, sorted=True)
        idx[start:start + len(q)] = top.indices.numpy()
        d2_top = top.values + sq[start:start + len(q), None]
        d2_top[:, 0] = 0.0
        dist[start:start + len(q)] = d2_top.clamp_min(0).sqrt().numpy()
    return idx, dist


LARGE = 10_000  # above this many points UMAP's own default is 200 epochs; we take 100


def umap_2d(features: np.ndarray, *, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
            n_epochs: int | None = None) -> np.ndarray:
    """Seeded 2-D UMAP coordinates (N x 2, float32) of feature rows; reproducible with its seed.

    n_epochs None: UMAP's default up to LARGE points, 100 above (a seeded UMAP runs on one thread;
    at 60,000 points 100 epochs took 25 s here against 48 s for 200, for a layout of the same clusters).
    """
    os.environ.setdefault("NUMBA_CACHE_DIR", str(user_cache_path("manifpt", appauthor=False) / "numba"))
    import umap  # imported late: numba compiles on first use

    x = np.asarray(features, dtype=np.float32)
    k = min(n_neighbors, max(len(x) - 1, 2))
    # the exact neighbour graph by matmul takes seconds; UMAP's own approximate search (NN-descent,
    # single-threaded when seeded) took most of a minute per space at 60,000 points
    knn = knn_graph(x, k) if len(x) > k else None
    with _UMAP_LOCK, warnings.catch_warnings():
        # our exact graph has no search index: only UMAP.transform (unused here) would need one
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        epochs = n_epochs if n_epochs is not None else (100 if len(x) > LARGE else None)
        reducer = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, random_state=seed, n_jobs=1, n_epochs=epochs,
                            precomputed_knn=knn if knn is not None else (None, None, None))
        return reducer.fit_transform(x).astype(np.float32)


def centroids(coords: np.ndarray, models: np.ndarray) -> pd.DataFrame:
    """Mean map position of each model's samples: columns model, x, y, n."""
    df = pd.DataFrame({"model": np.asarray(models), "x": coords[:, 0], "y": coords[:, 1]})
    out = df.groupby("model", sort=False).agg(x=("x", "mean"), y=("y", "mean"), n=("x", "size"))
    return out.reset_index()
