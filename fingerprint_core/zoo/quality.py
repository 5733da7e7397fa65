"""Sample quality from feature arrays: Frechet distance (FID) and k-NN manifold precision / recall.

Pure functions of two feature sets, (N, D) and (M, D), numpy or torch; all arithmetic in float64.
"""

from __future__ import annotations

import numpy as np
import torch

K = 3  # neighbours that set a manifold radius (Kynkaanniemi et al. 2019 use k = 3)


def _as_float64(features) -> torch.Tensor:
    t = features.detach().cpu() if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if t.ndim != 2:
        raise ValueError(f"features must be N x D, got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    w, v = torch.linalg.eigh((c + c.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(a, b) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) of Gaussians fitted to two feature sets.

    The trace of (C_a C_b)^(1/2) equals that of (S C_b S)^(1/2) with S = C_a^(1/2); the latter is
    symmetric PSD, so its eigenvalues are real and clipping round-off negatives at 0 replaces the
    "drop the tiny imaginary part" step of sqrtm-based code.
    """
    x, y = _as_float64(a), _as_float64(b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("need at least 2 features in each set to fit a covariance")
    mu_x, mu_y = x.mean(0), y.mean(0)
    d = x.shape[1]
    c_x, c_y = torch.cov(x.T).reshape(d, d), torch.cov(y.T).reshape(d, d)  # reshape: D = 1 gives a scalar
    s = _psd_sqrt(c_x)
    cross = torch.linalg.eigvalsh(s @ c_y @ s).clamp(min=0).sqrt().sum()
    fd = (mu_x - mu_y).square().sum() + torch.trace(c_x) + torch.trace(c_y) - 2 * cross
    return float(fd.clamp(min=0))


def _distances(x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distances (N, M), computed in row chunks."""
    if not len(x):
        return x.new_zeros((0, len(y)))
    return torch.cat([torch.cdist(x[i:i + chunk], y, compute_mode="donot_use_mm_for_euclid_dist")
                      for i in range(0, len(x), chunk)])


def knn_radii(features, k: int = K) -> torch.Tensor:
    """Distance of each feature to its k-th nearest other feature of the same set, (N,)."""
    x = _as_float64(features)
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} must be between 1 and the set size - 1 = {len(x) - 1}")
    # the smallest distance of each row is the point to itself (0), hence the (k + 1)-th
    return torch.cat([_distances(x[i:i + 1024], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), 1024)])

def coverage_fraction(queries, support, k: int = K) -> float:
    """Share of queries inside the k-NN manifold of support: within some support point's k-NN radius."""
    q, s = _as_float64(queries), _as_float64(support)
    radii = knn_radii(s, k)  # (M,)
    inside = torch.cat([(_distances(q[i:i + 1024], s) <= radii[None]).any(dim=1) for i in range(0, len(q), 1024)])
    return float(inside.to(torch.float64).mean())


def precision_recall(fake, real, k: int = K) -> tuple[float, float]:
    """k-NN manifold precision (fakes on the real manifold) and recall (reals on the fake manifold)."""
    return coverage_fraction(fake, real, k), coverage_fraction(real, fake, k)
