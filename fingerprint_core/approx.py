"""Approximate nearest neighbour for very large reference sets: a faiss index, re-ranked exactly.

NOT the exact search of ``manifold.Manifold``: a faiss IVF (``IndexIVFFlat``: k-means cells,
``nprobe`` of ``nlist`` cells scanned) or HNSW (``IndexHNSWFlat``) index proposes each query's top
``k`` candidates in float32; those are re-ranked in float64 exactly as the Manifold re-ranks (the
same values and formula; integer distances for uint8 codes where the Manifold uses them), ties to
the lowest index. Where the index proposed the true nearest neighbour the answer and its distance
are therefore the exact ones, bit for bit; where it did not, the answer is a farther reference.
``recall_at_1`` measures how often that happens against the exact Manifold, and ``config()`` is
the record a workspace stores so approximate results are never mistaken for exact ones.

The index holds a float32 copy of the references (N x D x 4 bytes, plus IVF ids: 8 bytes a row);
training uses a sample, and rows are added in chunks read from the (memory-mapped) store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fingerprint_core import devices
from fingerprint_core.manifold import Manifold, as_rows, store_rows

PIXEL_LEVELS = 255
INDEXES = ("ivf", "hnsw")


@dataclass(frozen=True)
class ApproxStats:
    """What the last approximate search did."""

    queries: int
    path: str  # "ivf" | "hnsw"
    nprobe: int
    k: int
    candidates: int  # (query, reference) pairs re-ranked in float64
    fallback: int  # queries the index gave no candidate for, answered by the exact search


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("the approximate index needs faiss: pip install faiss-cpu "
                          "(or the project's `faiss` extra)") from err
    return faiss


def recall_at_1(approx_idx, exact_idx) -> float:
    """Share of queries whose approximate nearest index is the exact one (ties: the exact search's
    lowest index, so an equally near but higher index counts as a miss)."""
    a = np.asarray(torch.as_tensor(approx_idx).cpu())
    e = np.asarray(torch.as_tensor(exact_idx).cpu())
    if a.shape != e.shape:
        raise ValueError(f"approximate {a.shape} and exact {e.shape} answers differ in shape")
    return float((a == e).mean()) if len(a) else 1.0


class ApproxManifold:
    """A faiss index over the reference store with an exact float64 re-rank of its top k.

    ``index``: "ivf" (IndexIVFFlat; ``nlist`` cells, default about sqrt(N); ``nprobe`` scanned)
    or "hnsw" (IndexHNSWFlat; ``hnsw_m`` links, ``ef_search``). ``train_rows``: k-means sample
    (default 64 per cell, at most 262,144). Same interface as ``Manifold``: ``nearest``,
    ``reference``, ``size``, ``dim``, ``pixels``, ``last_stats``.
    """

    def __init__(self, reference, *, index: str = "ivf", nlist: int | None = None, nprobe: int = 16, k: int = 16,
                 train_rows: int | None = None, hnsw_m: int = 32, ef_search: int = 128, ef_construction: int = 80,
                 add_rows: int = 65_536, seed: int = 0, device: str | torch.device = "cpu",
                 threads: int | None = None) -> None:
        if index not in INDEXES:
            raise ValueError(f"index={index!r}: expected one of {', '.join(INDEXES)}")
        faiss = _faiss()
        if threads:
            faiss.omp_set_num_threads(int(threads))
        self._store = as_rows(reference)
        if self._store.ndim != 2 or self._store.shape[0] == 0:
            raise ValueError(f"reference must hold at least one row; got shape {tuple(self._store.shape)}")
        self.size, self.dim = (int(v) for v in self._store.shape)
        self.pixels = self._store.dtype == np.uint8
        self.device = devices.resolve(device)
        self.kind, self.k, self.nprobe = index, max(1, int(k)), max(1, int(nprobe))
        self.ef_search = int(ef_search)
        self.recall: float | None = None
        self.recall_queries = 0
        self.last_stats: ApproxStats | None = None
        self._exact = None  # the exact Manifold, built only if a query gets no candidate
        if index == "ivf":
            self.nlist = int(nlist or max(1, min(round(math.sqrt(self.size)), self.size // 39 or 1)))
            self.nlist = max(1, min(self.nlist, self.size))
            self.train_rows = int(min(self.size, train_rows or min(262_144, 64 * self.nlist)))
            quantizer = faiss.IndexFlatL2(self.dim)
            self.index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_L2)
            pick = np.sort(np.random.default_rng(seed).choice(self.size, self.train_rows, replace=False))
            self.index.cp.seed = int(seed)
            self.index.train(self._float32(self._store[pick]))
            self._quantizer = quantizer  # faiss does not own it from Python
        else:
            self.nlist, self.train_rows = 0, 0
            self.index = faiss.IndexHNSWFlat(self.dim, int(hnsw_m))
            self.index.hnsw.efConstruction = int(ef_construction)
        for a in range(0, self.size, int(add_rows)):
            self.index.add(self._float32(self._store[a : a + int(add_rows)]))

    # ---- values ---------------------------------------------------------------------------
    def _float32(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        vals = rows.astype(np.float32) / np.float32(PIXEL_LEVELS) if rows.dtype == np.uint8 else rows
        return np.ascontiguousarray(vals, dtype=np.float32)

    def _integer_path(self, q: np.ndarray) -> bool:
        """Where the Manifold compares exact integer distances (uint8 codes on both sides)."""
        return self.pixels and q.dtype == np.uint8 and devices.exact_int8(torch.device("cpu"))

    def _distances(self, q: np.ndarray, qi: np.ndarray, ri: np.ndarray) -> np.ndarray:
        """Float64 squared distances of pairs (query qi, reference ri), as the Manifold's re-rank."""
        out = np.empty(len(qi))
        step = max(1, (64 << 20) // (8 * 3 * self.dim))
        integer = self._integer_path(q)
        for a in range(0, len(qi), step):
            qp, rp = qi[a : a + step], ri[a : a + step]
            uniq, inv = np.unique(rp, return_inverse=True)
            rows = np.asarray(self._store[uniq])
            if integer:
                diff = rows.astype(np.int64)[inv] - q[qp].astype(np.int64)
                out[a : a + step] = np.einsum("nd,nd->n", diff, diff).astype(np.float64) / PIXEL_LEVELS**2
                continue
            ref64 = rows.astype(np.float64) / PIXEL_LEVELS if rows.dtype == np.uint8 else rows.astype(np.float64)
            diff = ref64[inv]
            qr = q[qp]
            diff -= qr.astype(np.float64) / PIXEL_LEVELS if qr.dtype == np.uint8 else qr.astype(np.float64)
            out[a : a + step] = np.einsum("nd,nd->n", diff, diff)
        return out

    # ---- Manifold's interface -------------------------------------------------------------
    def reference(self, idx) -> torch.Tensor:
        return store_rows(self._store, idx, self.device)

    @torch.no_grad()
    def nearest(self, queries) -> tuple[torch.Tensor, torch.Tensor]:
        """Index (LongTensor N) and squared L2 distance (float32 N): the exact nearest among the
        index's top k of each query (approximate overall)."""
        q = as_rows(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index has {self.dim}")
        n = len(q)
        k = min(self.k, self.size)
        if self.kind == "ivf":
            self.index.nprobe = min(self.nprobe, self.nlist)
        else:
            self.index.hnsw.efSearch = max(self.ef_search, k)
        _, cand = self.index.search(self._float32(q), k) if n else (None, np.empty((0, k), np.int64))
        qi, col = np.nonzero(cand >= 0)
        ri = cand[qi, col].astype(np.int64)
        d64 = self._distances(q, qi, ri)
        idx = np.full(n, -1, dtype=np.int64)
        dist = np.full(n, np.inf)
        if len(qi):
            order = np.lexsort((ri, d64, qi))  # by query, then distance, then index
            first = order[np.r_[True, qi[order][1:] != qi[order][:-1]]]
            idx[qi[first]], dist[qi[first]] = ri[first], d64[first]
        empty = np.flatnonzero(idx < 0)
        if len(empty):  # no candidate at all (empty cells): the exact answer
            if self._exact is None:
                self._exact = Manifold(self._store, device="cpu")
            ei, ed = self._exact.nearest(q[empty])
            idx[empty], dist[empty] = ei.numpy(), ed.numpy()
        self.last_stats = ApproxStats(n, self.kind, self.nprobe if self.kind == "ivf" else self.ef_search, k,
                                      len(qi), len(empty))
        return torch.from_numpy(idx).to(self.device), torch.from_numpy(dist.astype(np.float32)).to(self.device)

    # ---- measured quality and the workspace record ------------------------------------------
    def measure_recall(self, queries, exact) -> float:
        """recall@1 of this index on ``queries`` against ``exact`` (a Manifold); kept for config()."""
        a, _ = self.nearest(queries)
        e, _ = exact.nearest(queries)
        self.recall = recall_at_1(a, e)
        self.recall_queries = len(a)
        return self.recall

    def config(self) -> dict:
        """The record a workspace stores beside approximate results (its config's ``search``)."""
        rec = {"search": "approximate", "index": self.kind, "library": "faiss", "metric": "l2",
               "k": self.k, "rerank": "float64 (exact among the k candidates)", "reference_rows": self.size}
        if self.kind == "ivf":
            rec.update(nlist=self.nlist, nprobe=self.nprobe, train_rows=self.train_rows)
        else:
            rec.update(hnsw_m=int(self.index.hnsw.nb_neighbors(1)), ef_search=self.ef_search)
        rec.update(recall_at_1=self.recall, recall_queries=self.recall_queries)
        return rec

    def __repr__(self) -> str:
        return f"ApproxManifold({self.kind}, size={self.size}, dim={self.dim}, k={self.k})"


def exact_config() -> dict:
    """The record of an exact search (what a workspace without approximate results may store)."""
    return {"search": "exact", "metric": "l2", "rerank": "float64"}
