"""Artifacts (a generated image's embedding minus its nearest real one) and fingerprints."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fingerprint_core.manifold import Manifold
from fingerprint_core.spaces import Space


@dataclass
class Projection:
    """Each sample's nearest real image on the manifold, and its artifact, in one space."""

    nearest: torch.Tensor  # LongTensor N: index into the reference set
    distance: torch.Tensor  # float32 N: squared L2 distance to it
    artifacts: torch.Tensor  # float32 N x D: phi(x) - phi(x*)


@torch.no_grad()
def project(space: Space, images: torch.Tensor | np.ndarray, manifold: Manifold, *, batch_size: int = 4096) -> Projection:
    """Nearest real image and artifact of every image, in batches so memory stays bounded."""
    parts = []
    for a in range(0, len(images), batch_size):
        batch = images[a : a + batch_size]
        emb = space.embed(batch)
        # A pixel-exact space (RGB) searches uint8 codes directly: exact integer arithmetic, 4x less data.
        query = batch if space.info.pixel_exact and manifold.pixels else emb
        idx, dist = manifold.nearest(query)
        parts.append((idx, dist, emb - manifold.reference(idx).to(emb.device)))
    if not parts:
        empty = torch.empty(0)
        return Projection(empty.long(), empty.float(), torch.empty((0, manifold.dim)))
    idx, dist, art = (torch.cat(t) for t in zip(*parts, strict=True))
    return Projection(idx, dist, art)


def compute(space: Space, images: torch.Tensor | np.ndarray, manifold: Manifold) -> torch.Tensor:
    """float32 N x D artifacts: space.embed(images) - reference[nearest]."""
    return project(space, images, manifold).artifacts
