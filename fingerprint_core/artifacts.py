"""Artifacts (a generated image's embedding minus its nearest real one) and fingerprints.

Memory follows the working-set setting (fingerprint_core.memory), not the number of images: callers
that write artifacts to disk (the pipeline) call project() on chunks of chunk_rows() images, and
project() itself works through its input in such chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fingerprint_core import memory
from fingerprint_core.manifold import Manifold
from fingerprint_core.spaces import Space

# Peak bytes per embedding value (of max(D, C*H*W)) while a space embeds a batch: FREQ holds the
# float64 input, its complex128 transform and the shifted copy at once.
EMBED_BYTES_PER_VALUE = 48
# Bytes per value one projected row holds: uint8 input, float32 embedding, the search's float64 and
# float32 copies of the query, the nearest reference row (stored and float32), the artifact and its
# float16 copy on the way to disk.
STEP_BYTES_PER_VALUE = 40
CHUNK_SHARE = 0.5  # of the working set, for one chunk of projected rows (the search has its own)
EMBED_SHARE = 0.25  # of the working set, for one embedding batch inside a chunk


def _values_per_row(space: Space, image_shape: tuple[int, ...]) -> int:
    shape = tuple(int(v) for v in image_shape)
    return max(int(space.dim(shape)), int(np.prod(shape)))


def chunk_rows(space: Space, image_shape: tuple[int, ...]) -> int:
    """Images per chunk when embedding, searching and writing artifacts (at least 1)."""
    rows = memory.rows_per_chunk(STEP_BYTES_PER_VALUE * _values_per_row(space, image_shape), CHUNK_SHARE)
    return max(1, min(int(space.batch_size), rows))


def embed_rows(space: Space, image_shape: tuple[int, ...]) -> int:
    """The largest embedding batch that fits its share of the working set (at least 1)."""
    return memory.rows_per_chunk(EMBED_BYTES_PER_VALUE * _values_per_row(space, image_shape), EMBED_SHARE)


@dataclass
class Projection:
    """Each sample's nearest real image on the manifold, and its artifact, in one space."""

    nearest: torch.Tensor  # LongTensor N: index into the reference set
    distance: torch.Tensor  # float32 N: squared L2 distance to it
    artifacts: torch.Tensor  # float32 N x D: phi(x) - phi(x*)


@torch.no_grad()
def project(space: Space, images: torch.Tensor | np.ndarray, manifold: Manifold, *,
            batch_size: int | None = None) -> Projection:
    """Nearest real image and artifact of every image, in batches (default: chunk_rows) so the
    working memory stays bounded; the result itself is all of it (chunk the input to bound that)."""
    if batch_size is None:
        batch_size = chunk_rows(space, tuple(images.shape[1:])) if len(images) else 1
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
    if len(parts) == 1:
        return Projection(*parts[0])
    idx, dist, art = (torch.cat(t) for t in zip(*parts, strict=True))
    return Projection(idx, dist, art)


def compute(space: Space, images: torch.Tensor | np.ndarray, manifold: Manifold) -> torch.Tensor:
    """float32 N x D artifacts: space.embed(images) - reference[nearest]."""
    return project(space, images, manifold).artifacts
