"""The manifold estimate: a reference set of real embeddings and its exact nearest-neighbour search.

Exact means the answer of float64 brute force (squared L2; ties go to the lowest reference index).
A search is a sequence of pure functions over a batch of queries:

1. (optional) lower-bound pruning: references and queries are projected on d <= 256 principal
   directions of the centred reference set. For a matrix P with spectral norm s,
   ||P(q - r)|| <= s ||q - r||, so the projected distance (less its own rounding margin) over s is
   a lower bound of the full one. Each query is seeded with the exact distance of its best two
   references by the projection; only references whose bound does not exceed it are verified.
2. candidate pass over the (surviving) references: exact integer scores |r'|^2 - 2 q'.r' for
   pixel codes (int8 x int8 -> int32; on CPUs without VNNI / AMX the same integers from float32
   matmuls over blocks of 1,024 terms, exact by construction), or approximate scores |y|^2 - 2 x.y of centred values
   x = q - c, y = r - c (bf16 or float32 matmul; float64 as the last resort) with a rigorous
   bound E on |approx - exact|. Centring on the reference mean c leaves distances unchanged and
   shrinks |x| and |y|, hence E. A reference can be nearest only if approx - E <= min(approx + E).
3. re-rank: those candidates' float64 distances (direct sums of squared differences) decide.

Memory is bounded by the working set (`memory.working_set_bytes()`, or `working_bytes=`):
reference chunks, query tiles, candidate lists and re-rank blocks are all sized from it, the
reference store stays memory-mapped if given so, and prepared chunks are cached only when they
fit in a share of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fingerprint_core import devices, memory

PIXEL_LEVELS = 255  # uint8 pixel code k stands for the value k / 255 (the RGB space)
_U32 = 2.0**-24  # float32 unit roundoff
_U16 = 2.0**-8  # bfloat16 unit roundoff (8-bit significand)
_U64 = 2.0**-53  # float64 unit roundoff
_TINY = 2.0**-120  # covers subnormal flushing / absolute rounding of tiny values
_INT32_SAFE_DIM = 40_000  # 3 * D * 128^2 < 2^31: larger D accumulates slabs in int64
_KBLOCK = 2048  # float matmuls over more than 2 * _KBLOCK columns accumulate blocks of it
_MAX_DIMS = 256
_VERIFY_GROUP = 64  # queries verified together (their survivors united): fewer, larger calls
_RERANK_BYTES = 4 * 2**20  # float64 differences per re-rank block
# score tiles of references x queries: on CPUs about 1,024 x 1,024 stays in cache (AMD EPYC Zen 4,
# 2 threads, nothing else running, Fashion-MNIST 60,000 x 10,000 at D = 1,024: pixels 3.1 -> 2.0 s,
# FREQ 2.9 -> 2.4 s against 4,096 x 2,048);
# GPUs want larger tiles
_TILE = {"cpu": (1024, 1024), "cuda": (4096, 2048)}


def _gamma(k: int, u: float = _U32) -> float:
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of any k-term summation order."""
    return k * u / (1 - k * u)


@dataclass(frozen=True)
class SearchStats:
    """What the last search did: how many queries each step had to settle."""

    queries: int
    path: str  # "int8" | "bf16" | "float32" | "float64" | "faiss"
    certified: int  # settled by the candidate pass and the float64 re-rank
    candidates: int  # (query, reference) pairs re-ranked in float64
    brute_force: int  # settled by float64 exhaustive search
    pruned: bool = False  # whether the lower-bound pass ran
    verified_share: float = 1.0  # share of (query, reference) pairs the lower bound could not rule out
    evaluated_share: float = 1.0  # share of pairs the full-dimensional pass evaluated
    prune_dims: int = 0
    chunk_rows: int = 0  # reference rows per chunk the search chose
    query_rows: int = 0  # queries per batch the search chose
    columns: int = 0  # columns of the candidate pass (float paths: D less the columns folded)


class _TooMany(Exception):
    """A candidate band that holds too many pairs: redo the tile at a higher precision."""


def as_rows(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A 2-D numpy view (N x D) of a tensor, array or memmap, without copying when possible."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x) if not isinstance(x, np.memmap) else x
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))


def _pixel_codes(x: np.ndarray) -> np.ndarray | None:
    """uint8 codes k when every float32 value is exactly k/255 (how RGB embeds pixels), else None."""
    if x.dtype != np.float32:
        return None

    def codes_of(block: np.ndarray) -> np.ndarray | None:
        k = np.rint(block * np.float32(PIXEL_LEVELS))
        if k.min(initial=0) < 0 or k.max(initial=0) > PIXEL_LEVELS:
            return None
        if not np.array_equal(k.astype(np.float32) / np.float32(PIXEL_LEVELS), block):
            return None
        return k.astype(np.uint8)

    if codes_of(np.asarray(x[:8])) is None:  # float embeddings off the lattice fail at once
        return None
    codes = np.empty(x.shape, dtype=np.uint8)
    step = max(1, (1 << 24) // max(1, x.shape[1]))
    for a in range(0, x.shape[0], step):
        block = codes_of(np.asarray(x[a : a + step]))
        if block is None:
            return None
        codes[a : a + step] = block
    return codes


class Manifold:
    """Reference embeddings of real images and exact nearest-neighbour search among them.

    ``reference``: N x D float embeddings (tensor, array or memmap), or uint8 pixel codes of any
    shape N x ... (the RGB space's exact, 4x smaller form; value = code / 255).

    ``working_bytes``: memory one step of the search may hold (None: the working-set setting).
    ``chunk_rows`` / ``query_tile``: the score tile, references x queries (None: by device, _TILE).
    ``prune``: the lower-bound pass: None chooses by cost, True / False force it.
    ``prune_dims``: its number of directions (None: by D and N). ``precision``: "auto" (bf16
    candidate pass where the hardware has it, float32 when its band holds too many), "bf16",
    "float32" or "float64" for float embeddings.
    """

    def __init__(
        self,
        reference: torch.Tensor | np.ndarray,
        *,
        device: str | torch.device = "auto",
        backend: str = "torch",
        chunk_rows: int | None = None,
        query_tile: int | None = None,
        cache_bytes: int = 2 * 2**30,
        working_bytes: int | None = None,
        prune: bool | None = None,
        prune_dims: int | None = None,
        precision: str = "auto",
    ) -> None:
        if backend not in ("torch", "faiss"):
            raise ValueError(f"backend={backend!r}: expected 'torch' or 'faiss'")
        if precision not in ("auto", "bf16", "float32", "float64"):
            raise ValueError(f"precision={precision!r}: expected 'auto', 'bf16', 'float32' or 'float64'")
        self.device = devices.resolve(device)
        self.backend = backend
        tile_rows, tile_queries = _TILE["cuda" if self.device.type == "cuda" else "cpu"]
        self.query_tile = max(1, int(query_tile or tile_queries))
        self.working_bytes = int(working_bytes) if working_bytes is not None else memory.working_set_bytes()
        self.cache_bytes = min(int(cache_bytes), self.working_bytes // 2)
        self.prune = prune
        self.prune_dims = prune_dims
        self.precision = precision
        rows = as_rows(reference)
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise ValueError(f"reference must hold at least one row; got shape {tuple(rows.shape)}")
        # Pixel codes: uint8 given as such (values code/255 exactly), or float32 that sits on
        # the code lattice (values are the float32 code/255, kept bit for bit in the re-rank).
        self._float32_values = rows.dtype != np.uint8
        codes = rows if rows.dtype == np.uint8 else _pixel_codes(rows)
        if codes is not None:
            self._store = codes
        else:
            self._store = rows if rows.dtype == np.float32 else rows.astype(np.float32)
        self.pixels = self._store.dtype == np.uint8
        self.size, self.dim = self._store.shape
        # a chunk holds about 28 bytes per element (copy, float64 values, prepared form) in half
        # of the working set
        self.chunk_rows = max(1, min(int(chunk_rows or tile_rows), self.working_bytes // (2 * 28 * self.dim)))
        self._centre: np.ndarray | None = None  # float64 reference mean (float paths)
        self._centre_t: torch.Tensor | None = None  # the same, as a tensor
        self._fold: _Fold | None = None  # equal reference columns merged in the float passes
        self._prepared: tuple[str, list] | None = None
        self._spilled: tuple[str, np.memmap, list] | None = None  # see _spill_file
        self._int8_norms: dict[int, torch.Tensor] = {}  # exact |r'|^2 per store chunk, by its start
        self._proj: dict | None = None
        self._faiss_index = None
        self._raw_max_norm: float | None = None
        self.last_stats: SearchStats | None = None

    # ---- the store -------------------------------------------------------------------------
    def _chunks(self, rows: int | None = None):
        step = rows or self.chunk_rows
        for a in range(0, self.size, step):
            yield a, np.array(self._store[a : a + step])  # a copy: memmaps are read-only

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        """Rows idx (ascending) of the store; sorted reads are kind to a memmap."""
        return np.asarray(self._store[idx])

    def _values64(self, rows: np.ndarray) -> np.ndarray:
        """The float64 embedding values of stored rows (codes -> code/255 as the input had them)."""
        return self._values64_t(torch.from_numpy(np.ascontiguousarray(rows))).numpy()

    def _values64_t(self, rows: torch.Tensor) -> torch.Tensor:
        """The same on a tensor of stored rows: float32 codes are divided in float32, then widened."""
        if not self.pixels:
            return rows.to(torch.float64)
        if self._float32_values:
            return rows.to(torch.float32).div_(PIXEL_LEVELS).to(torch.float64)
        return rows.to(torch.float64).div_(PIXEL_LEVELS)

    def _mean(self) -> np.ndarray:
        """The float64 mean of the reference values (the centre of every float pass). The same
        pass over the store confirms the columns the fold may merge (see _Fold)."""
        if self._centre is None:
            # the sample's copies (about six of S x D float32) stay within a share of the working set
            sample = _sample_rows(self.size, max(2, min(64, self.working_bytes // (48 * self.dim))))
            groups = None if self.pixels else _Columns.of_sample(np.asarray(self._store[sample]))
            total = np.zeros(self.dim)
            for _, rows in self._chunks():
                # float32 values widen exactly: numpy's float64 sum of them is quicker than _values64's
                total += self._values64(rows).sum(0) if self.pixels else rows.sum(0, dtype=np.float64)
                if groups is not None:
                    groups = groups.confirmed(rows)
            self._centre = total / self.size
            if groups is not None:
                groups = groups.confirmed(self._centre[None, :])  # equal columns have equal means
            self._fold = _Fold.of(groups, self.dim)
        return self._centre

    def _folded(self) -> _Fold | None:
        """The fold of equal reference columns for the float passes (None: nothing to merge)."""
        self._mean()
        return self._fold

    def reference(self, idx: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The float32 embeddings of the given reference rows, on the manifold's device."""
        return store_rows(self._store, idx, self.device)

    # ---- public search ---------------------------------------------------------------------
    @torch.no_grad()
    def nearest(self, queries: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Index (LongTensor N) and squared L2 distance (float32 N) of each query's nearest reference."""
        q = as_rows(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the manifold has {self.dim}")
        n = q.shape[0]
        if n == 0:
            empty = torch.empty(0, device=self.device)
            return empty.long(), empty.float()
        q_codes = None
        if self.pixels and self.backend == "torch" and devices.exact_int8(self.device):
            q_codes = q if q.dtype == np.uint8 else _pixel_codes(q)
        run = _Run(self, q, q_codes)
        idx, dist = run.search()
        self.last_stats = run.stats()
        return (
            torch.from_numpy(idx).to(self.device),
            torch.from_numpy(dist.astype(np.float32)).to(self.device),
        )

    # ---- prepared reference chunks ---------------------------------------------------------
    def _prepare(self, rows: np.ndarray, kind: str, start: int | None = None):
        """A chunk in the compute form: (rows on device, norms, max centred norm). The exact norms
        of a store chunk (given its start) are kept: a few bytes per row, costly to recompute."""
        t = torch.from_numpy(rows)
        if kind == "int8":
            t = _shift_int8(t)
            wide = self.dim > _INT32_SAFE_DIM
            norms = self._int8_norms.get(start) if start is not None else None
            if norms is None:
                norms = _int_norms(t)
                norms = norms if wide else norms.to(torch.int32)
                if start is not None:
                    self._int8_norms[start] = norms
            return t.to(self.device), norms.to(self.device), 0.0
        y = self._centred64(rows)  # float64, one rounding of the centred value
        n2 = torch.einsum("ij,ij->i", y, y)  # the full norm: the bound and the score use it
        fold = self._folded()
        if fold is not None:
            y = y[:, fold.rep_t]  # one column per group of equal columns
        dtype = {"bf16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}[kind]
        ndt = torch.float64 if kind == "float64" else torch.float32
        yt = _pad_blocks(y.to(dtype))  # rows (n x D'), zero columns add nothing
        ymax = float(n2.max().sqrt()) * (1 + 1e-12)
        return yt.to(self.device), n2.to(ndt).to(self.device), ymax

    def width(self) -> int:
        """Columns of the float passes' prepared form: D, less the columns the fold merges."""
        fold = self._folded() if not self.pixels else None
        return fold.width if fold is not None else self.dim

    def _centred64(self, rows: np.ndarray) -> torch.Tensor:
        """float64 values of stored rows less the reference mean, as torch (CPU): _values64, then
        one subtraction."""
        return self._values64_t(torch.from_numpy(np.ascontiguousarray(rows))).sub_(self._mean_t())

    def _mean_t(self) -> torch.Tensor:
        """The reference mean as a (CPU) tensor, for _centred64."""
        if self._centre_t is None:
            self._centre_t = torch.from_numpy(self._mean())
        return self._centre_t

    def _prepared_chunks(self, kind: str):
        """(ids, rt, rn, ymax) over the whole store, cached when they fit in the cache budget."""
        if self._prepared is not None and self._prepared[0] == kind:
            yield from self._prepared[1]
            return
        if self._spilled is not None and self._spilled[0] == kind:
            _, rt_file, chunks = self._spilled
            # read back in spans of several chunks (no float64 temporaries now): larger matmuls
            span = max(1, (self.working_bytes // 4) // (rt_file.itemsize * _padded(self.width()) * self.chunk_rows))
            for c in range(0, len(chunks), span):
                part = chunks[c : c + span]
                a, b = part[0][0], part[-1][1]
                rn = torch.cat([p[2] for p in part])
                rt = torch.from_numpy(rt_file[a:b])
                yield torch.arange(a, b), rt.view(torch.bfloat16) if kind == "bf16" else rt, rn, max(p[3] for p in part)
            return
        item = {"int8": 1, "bf16": 2, "float32": 4, "float64": 8}[kind]
        keep = self.size * (self.dim if kind == "int8" else self.width()) * item <= self.cache_bytes
        spill = None if keep else self._spill_file(kind)
        cache, spilled = [], []
        for a, rows in self._chunks():
            rt, rn, ymax = self._prepare(rows, kind, start=a)
            ids = torch.arange(a, a + len(rows), device=self.device)
            if keep:
                cache.append((ids, rt, rn, ymax))
            if spill is not None:
                spill[a : a + len(rows)] = (rt.view(torch.int16) if kind == "bf16" else rt).numpy()
                spilled.append((a, a + len(rows), rn, ymax))
            yield ids, rt, rn, ymax
        if spill is not None:  # complete (a consumer that stopped early leaves no half-written spill)
            self._spilled = (kind, spill, spilled)
        if keep and cache:
            # one tensor for the whole store (gathers of survivors index it once); chunks are views
            whole = (torch.cat([c[0] for c in cache]), torch.cat([c[1] for c in cache]), torch.cat([c[2] for c in cache]))
            del cache
            views = []
            for b in range(0, self.size, self.chunk_rows):
                e = min(self.size, b + self.chunk_rows)
                rn = whole[2][b:e]
                ymax = 0.0 if kind == "int8" else math.sqrt(float(rn.max()) * (1 + 4 * _U32)) * (1 + 1e-12)
                views.append((whole[0][b:e], whole[1][b:e], rn, ymax))
            self._prepared = (kind, views, whole)

    def _spill_file(self, kind: str) -> np.memmap | None:
        """Where a float32 or bf16 store too large for the cache keeps its prepared (centred) form: an
        unlinked temporary file, memory-mapped, so later passes read it instead of centring every
        row again in float64 (the cost of each search call at large D). Its pages are the
        kernel's file cache, not the process's memory; None on GPUs, for other kinds, or when
        the temporary directory lacks the room. bf16 rows are kept as their 16-bit patterns (int16)."""
        import shutil
        import tempfile

        if kind not in ("float32", "bf16") or self.device.type != "cpu":
            return None
        dtype = np.float32 if kind == "float32" else np.int16
        need = self.size * _padded(self.width()) * np.dtype(dtype).itemsize
        try:
            if shutil.disk_usage(tempfile.gettempdir()).free < need + 2 * 2**30:
                return None
            handle = tempfile.TemporaryFile(prefix="manifpt-prepared-")
            return np.memmap(handle, dtype=dtype, mode="w+", shape=(self.size, _padded(self.width())))
        except OSError:
            return None

    def _gathered_chunks(self, ids: np.ndarray, kind: str):
        """The same over a subset of references (ascending ids): from the cache of prepared
        chunks when it holds this kind, else read from the store."""
        if self._prepared is not None and self._prepared[0] == kind:
            all_ids, all_rt, all_rn = self._prepared[2]
            step = max(self.chunk_rows, (self.working_bytes // 8) // (4 * self.dim))
            for a in range(0, len(ids), step):
                cols = torch.from_numpy(ids[a : a + step]).to(self.device)
                sub_rn = all_rn[cols]
                if kind == "int8":
                    yield all_ids[cols], all_rt[cols], sub_rn, 0.0
                else:  # rn = fl(|y|^2): |y|^2 <= rn (1 + 2u)
                    ymax = math.sqrt(float(sub_rn.max()) * (1 + 4 * _U32)) * (1 + 1e-12)
                    yield all_ids[cols], all_rt[cols], sub_rn, ymax
            return
        for a in range(0, len(ids), self.chunk_rows):
            part = ids[a : a + self.chunk_rows]
            rt, rn, ymax = self._prepare(self._gather(part), kind)
            yield torch.from_numpy(part).to(self.device), rt, rn, ymax

    def _float_bound(self, kind: str) -> tuple[float, float, float]:
        """(a, b, t): |approx - exact| of a centred score <= a X Y + b Y^2 + t (X + Y).

        x = q - c, y = r - c exactly; the search rounds them to x~, y~ (relative ui each);
        |x.y - x~.y~| <= (2 ui + ui^2) X Y. The matmul accumulates with gamma_k (k = D, or the
        block length, plus gamma over the blocks' sum); bf16 outputs round each block's
        partial sum to nearest (u16 of its absolute sum; oneDNN and cuBLAS convert float32 to
        bf16 round-to-nearest-even; CUDA only without reduced-precision reductions). |y|^2 is
        rounded once and the epilogue rounds once (u |score| <= u (Y^2 + 2 X Y)). Factor 1.05
        covers the second-order terms.
        """
        d = self.width()  # the terms each matmul sums
        kb, nb = (d, 1) if d <= 2 * _KBLOCK else (_KBLOCK, _padded(d) // _KBLOCK)
        # a folded query column is the float64 sum of its group's columns: gamma_(g-1) more
        merge = self._fold.merge_error if self._fold is not None else 0.0
        if kind == "float64":
            g = _gamma(d + 2, _U64)
            return 1.1 * (8 * _U64 + 4 * g + 4 * merge), 1.1 * (2 * g + 3 * _U64), 0.0
        highest = self.device.type == "cpu" or torch.get_float32_matmul_precision() == "highest"
        if kind == "float32":
            ui = _U32 + 2 * _U64 + merge + (0.0 if highest else 2.0**-11)  # TF32 rounds inputs again
            g = _gamma(kb + 1) + _gamma(nb + 1)
            a = 4 * ui + 2 * ui**2 + 2 * (g + _U32) * (1 + ui) ** 2 + 2 * _U32
            b = g + 3 * _U32 + 1e-10
        else:  # bf16 inputs, float32 accumulation, bf16 block outputs summed in float32
            ui = _U16 + _U32 + 2 * _U64 + merge  # float64 -> bf16 may round twice
            g = (_gamma(kb) + _U16) * (1 + _gamma(nb + 1)) + _gamma(nb + 1)
            a = 4 * ui + 2 * ui**2 + 2 * g * (1 + ui) ** 2 + 4 * _U32 * (1 + g)
            b = 3 * _U32 + 1e-10
        return 1.05 * a, 1.05 * b, 4 * _TINY * math.sqrt(d)

    # ---- faiss -------------------------------------------------------------------------------
    def _raw_norm_max(self) -> float:
        if self._raw_max_norm is None:
            m = 0.0
            for _, rows in self._chunks():
                v = self._values64(rows)
                m = max(m, float(np.einsum("ij,ij->i", v, v).max()))
            self._raw_max_norm = math.sqrt(m)
        return self._raw_max_norm

    def _faiss_bound(self, qn: np.ndarray, qn2: np.ndarray) -> np.ndarray:
        """Worst-case |approx - exact| of faiss's float32 (uncentred) distances, per query."""
        u = _U32
        d = self.dim + 4
        gamma = d * u / (1 - d * u)
        big_r = self._raw_norm_max()
        bound = 2 * gamma * qn * big_r + 4 * u * (big_r**2 + 2 * qn * big_r) + u * qn2 + u * (qn + big_r) ** 2
        return 1.05 * bound + 1e-300

    def _faiss_pass(self, q: np.ndarray, k: int = 8):
        """Top-k from faiss IndexFlatL2 (float32); a query whose k-th is inside the band is redone."""
        import faiss  # optional dependency

        if self._faiss_index is None:
            index = faiss.IndexFlatL2(self.dim)
            for _, rows in self._chunks():
                vals = rows.astype(np.float32) / np.float32(PIXEL_LEVELS) if self.pixels else rows
                index.add(np.ascontiguousarray(vals, dtype=np.float32))
            self._faiss_index = index
        qf = q.astype(np.float32) / np.float32(PIXEL_LEVELS) if q.dtype == np.uint8 else q
        qf = np.ascontiguousarray(qf, dtype=np.float32)
        k = min(k, self.size)
        d, i = self._faiss_index.search(qf, k)
        qn2 = np.einsum("ij,ij->i", qf.astype(np.float64), qf.astype(np.float64))
        twice = 2 * self._faiss_bound(np.sqrt(qn2), qn2)
        within = d <= d[:, :1] + twice[:, None]
        undecided = within[:, -1] & (k < self.size)
        within[undecided] = False
        qi, col = np.nonzero(within)
        return qi, i[qi, col].astype(np.int64), undecided

    # ---- projection for the lower bound ------------------------------------------------------
    def _dims(self) -> int:
        if self.prune_dims is not None:
            d = int(self.prune_dims)
        else:
            d = 128 if self.dim <= 4096 else 64
        return max(0, min(d, _MAX_DIMS, self.dim))

    def _projection(self) -> dict | None:
        """Principal directions of a sample of the centred references, and every reference's
        projection (centred, float32) with its rounding margin. None when it cannot help."""
        if self._proj is not None:
            return self._proj or None
        wb, dim, n = self.working_bytes, self.dim, self.size
        # the sample: a float32 S x D block; its Gram (S x S) or covariance (D x D) sets the cost
        s_cap = 4096 if dim <= 2048 else max(64, int(math.sqrt(4e10 / dim)))
        s = min(n, s_cap, wb // (8 * 4 * dim))
        d = min(self._dims(), s - 1, (wb // 2) // (dim * 8 * 3)) // 8 * 8
        if d < 8 or n * d * 16 > wb // 4:
            self._proj = {}
            return None
        pick = np.unique(np.linspace(0, n - 1, s).round().astype(np.int64))
        x = self._values64(self._gather(pick))
        x -= x.mean(0)
        xt = torch.from_numpy(x.astype(np.float32)).to(self.device)
        del x
        # top directions by subspace iteration on the sample (S x D work only: no D x D or
        # S x S eigenproblem), then Rayleigh-Ritz on the k-dimensional subspace
        k = min(len(pick), dim, d + 8)
        g = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn((dim, k), generator=g).to(self.device)
        for _ in range(3):
            v = xt.T @ (xt @ v)
            gram = torch.nan_to_num((v.T @ v).double())  # orthonormalise through the k x k Gram
            gram += torch.eye(k, dtype=torch.float64, device=gram.device) * (1e-12 * float(gram.diagonal().sum()) + 1e-300)
            w, e = torch.linalg.eigh(gram)
            v = v @ (e / w.clamp_min(float(w.max()) * 1e-12).sqrt()).float()
        b = (xt @ v).double()
        w, rot = torch.linalg.eigh(b.T @ b)
        captured = float(w.flip(0)[:d].sum() / (xt.double() ** 2).sum().clamp_min(1e-300))
        basis = (v.double() @ rot.flip(1)[:, :d]).cpu().numpy()
        del xt
        if self.prune is None and captured < 0.9:
            # the directions hold too little of the spread: the bound would rule out little
            self._proj = {}
            return None
        basis = _orthonormal(basis)  # the bound does not rely on it: it uses P's own norms
        if self.pixels and devices.exact_int8(self.device):
            proj = self._int_projection(basis)
        else:
            proj = self._float_projection(basis)
        self._proj = proj
        return proj

    def _int_projection(self, basis: np.ndarray) -> dict:
        """Integer directions C (int8) with P = scale C: exact projections of shifted codes."""
        peak = np.abs(basis).max()
        cmat = np.rint(basis * (127 / peak)).astype(np.int8)
        scale = float(peak / 127)
        # spectral norm of P = scale C from the exact integer Gram C^T C
        sigma = scale * math.sqrt(np.linalg.eigvalsh(cmat.T.astype(np.float64) @ cmat.astype(np.float64)).max())
        pad = (-self.dim) % 8
        ct = torch.from_numpy(np.pad(cmat, ((0, pad), (0, 0)))).to(self.device)
        ctt = ct.T.contiguous()
        wide = self.dim > _INT32_SAFE_DIM
        out = np.empty((self.size, cmat.shape[1]))
        for ids, rt, _, _ in self._prepared_chunks("int8"):  # cached for the verification
            a = int(ids[0])
            out[a : a + len(rt)] = _int_dots(ctt, rt.T, wide).T.cpu().numpy().astype(np.float64) * scale
        proj = {"kind": "int8", "ct": ct, "scale": scale, "sigma": sigma * (1 + 1e-9), "unit": PIXEL_LEVELS,
                "eps": 0.0, "x": None}
        return self._finish_projection(proj, out)

    def _float_projection(self, basis: np.ndarray) -> dict:
        """float32 directions P; projections of fl32(values - c), with their error bound."""
        p32 = basis.astype(np.float32)
        p64 = p32.astype(np.float64)
        sigma = math.sqrt(np.linalg.eigvalsh(p64.T @ p64).max())
        fro = math.sqrt(float((p64**2).sum()))
        kb, nb = (self.dim, 1) if self.dim <= 2 * _KBLOCK else (_KBLOCK, _padded(self.dim) // _KBLOCK)
        highest = self.device.type == "cpu" or torch.get_float32_matmul_precision() == "highest"
        ui = _U32 + 2 * _U64
        # ||fl(x~ P) - P^T x|| <= ||P||_F (2 u_tf32 + gamma_kb + gamma_nb)(1 + ui) X + sigma ui X
        eps = 1.05 * (fro * ((0.0 if highest else 2 * 2.0**-11) + _gamma(kb) + _gamma(nb + 1)) * (1 + ui) + sigma * ui)
        pt = _pad_blocks(torch.from_numpy(p32).T).T.contiguous().to(self.device)  # (D' x d)
        out = np.empty((self.size, p32.shape[1]))
        xn = np.empty(self.size)
        for a, rows in self._chunks():
            y = self._centred64(rows)
            xn[a : a + len(rows)] = torch.einsum("ij,ij->i", y, y).sqrt().numpy()
            yt = _pad_blocks(y.to(torch.float32)).to(self.device)
            out[a : a + len(rows)] = _blocked_mm(yt, pt).double().cpu().numpy()
        proj = {"kind": "float32", "pt": pt, "sigma": sigma * (1 + 1e-9), "unit": 1.0, "eps": eps, "x": xn}
        return self._finish_projection(proj, out)

    def _finish_projection(self, proj: dict, out: np.ndarray) -> dict:
        centre = out.mean(0)
        out -= centre
        pn = np.sqrt(np.einsum("ij,ij->i", out, out))
        margin = 1.01 * _U32 * pn + _TINY  # fl32 of the centred projection
        if proj["x"] is not None:
            margin += proj["eps"] * proj["x"]
        pr = torch.from_numpy(out.astype(np.float32))
        nr = (pr.double() ** 2).sum(1)
        # one d x N matrix for one matmul per query tile; per block of references, its largest
        # margin and norm (tighter thresholds than one maximum over the whole set)
        prt, nr32 = pr.T.contiguous().to(self.device), nr.float().to(self.device)
        chunks = []
        for a in range(0, self.size, 8192):
            b = min(self.size, a + 8192)
            chunks.append((a, b, float(margin[a:b].max()), float(np.sqrt(nr[a:b].max().item()))))
        proj.update(prt=prt, nr=nr32)
        proj.update(centre=centre, chunks=chunks, dims=out.shape[1])
        return proj


class _Run:
    """One call of nearest(): the chosen path, its tiles and its statistics."""

    def __init__(self, m: Manifold, q: np.ndarray, q_codes: np.ndarray | None) -> None:
        self.m, self.q, self.q_codes = m, q, q_codes
        self.n = len(q)
        self.exact_codes = q_codes is not None and not m._float32_values and q.dtype == np.uint8
        # uint8 codes on both sides, whatever pass runs: the re-rank sums squared code differences exactly
        self.code_pairs = m.pixels and not m._float32_values and q.dtype == np.uint8
        # float32 inputs on the code lattice differ from code/255 by one rounding per element
        self.eta = 0.0 if self.exact_codes or q_codes is None else 2 * _U32 * math.sqrt(m.dim) * 1.01
        if q_codes is not None:
            self.kind = "int8"
        elif m.precision != "auto":
            self.kind = m.precision
        else:
            self.kind = "bf16" if devices.fast_bf16(m.device) else "float32"
        self.bufs = _Buffers()  # score tiles, reused
        self.reranked = 0
        self.brute = 0
        self.survivors = 0
        self.evaluated = 0
        self.pruned_queries = 0
        self.pruning = False
        wb = m.working_bytes
        item = {"int8": 3, "bf16": 10, "float32": 12, "float64": 16}[self.kind]
        # the query tile holds its prepared form (about `item` bytes per element) and score tiles
        self.tile = max(1, min(m.query_tile, (wb // 4) // (item * m.dim + 16 * m.chunk_rows)))
        # a batch keeps its prepared form (the stored bytes only; temporaries are per tile) while
        # every reference chunk is prepared once for it: larger batches prepare the store less often
        stored = {"int8": 1, "bf16": 2, "float32": 4, "float64": 8}[self.kind]
        self.batch = max(self.tile, min(self.n, (wb // 4) // (stored * m.dim)))

    # ---- values --------------------------------------------------------------------------
    def prepare_queries(self, idx: np.ndarray, kind: str, fold: bool = True):
        """Prepared queries (device) and per query: |x| (float kinds) or |q'|^2 (int8). Float
        kinds sum each group of equal reference columns into one (fold=False: every column)."""
        if kind == "int8":
            t = _shift_int8(torch.from_numpy(np.array(self.q_codes[idx]))).to(self.m.device)
            return t, _int_norms(t).to(torch.float64)
        dtype = {"bf16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}[kind]
        c = self.m._mean_t()
        folded = self.m._folded() if fold else None
        width = folded.width if folded is not None else self.m.dim
        out = torch.zeros((len(idx), _padded(width)), dtype=dtype, device=self.m.device)
        norms = np.empty(len(idx))
        for a in range(0, len(idx), self.tile):
            x = _query_values64(torch.from_numpy(np.ascontiguousarray(self.q[idx[a : a + self.tile]]))).sub_(c)
            norms[a : a + len(x)] = torch.einsum("ij,ij->i", x, x).sqrt().numpy()
            if folded is not None:
                x = folded.sum_columns(x)
            out[a : a + len(x), :width] = x.to(dtype).to(self.m.device)
        return out, torch.from_numpy(norms).to(self.m.device)

    # ---- driver --------------------------------------------------------------------------
    def search(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.m
        idx = np.full(self.n, -1, dtype=np.int64)
        dist = np.full(self.n, np.nan)
        if m.backend == "faiss" and self.q_codes is None:
            return self.faiss(idx, dist)
        want = m.prune
        if want is None:
            # with fast int8/bf16 (VNNI, AMX, tensor cores) the full pass is cheap next to the
            # bound's own pass (its epilogue over every pair) until D is large; with float32 only
            # (AVX2 CPUs) the bound pays from D ~ 1,000 on large sets. Where the directions hold
            # too little of the spread, _projection declines, and the trial below switches the
            # bound off again where it rules out too little
            fast = devices.fast_int8(m.device) if m.pixels else devices.fast_bf16(m.device)
            want = (m.dim >= 32_768 and m.size >= 1024) or (not fast and m.dim >= 768 and m.size >= 16_384)
        proj = m._projection() if want else None
        if proj is not None and proj["kind"] == "int8" and self.q_codes is None:
            proj = None  # integer directions need queries on the code lattice
        self.pruning = proj is not None
        if self.pruning:
            # the verification reads survivors from the prepared store: prepare it once, when it fits
            for _ in m._prepared_chunks(self.kind):
                pass
        for b0 in range(0, self.n, self.batch):
            sel = np.arange(b0, min(self.n, b0 + self.batch))
            if self.pruning:
                self.pruned_search(sel, proj, idx, dist)
            else:
                self.full_search(sel, idx, dist)
        return idx, dist

    def stats(self) -> SearchStats:
        total = max(1, self.pruned_queries * self.m.size)
        return SearchStats(
            self.n, "faiss" if self.m.backend == "faiss" else self.kind, self.n - self.brute, self.reranked, self.brute,
            pruned=self.pruned_queries > 0,
            verified_share=self.survivors / total if self.pruned_queries else 1.0,
            evaluated_share=self.evaluated / total if self.pruned_queries else 1.0,
            prune_dims=self.m._proj.get("dims", 0) if self.m._proj else 0,
            chunk_rows=self.m.chunk_rows, query_rows=self.tile,
            columns=self.m._fold.width if self.kind != "int8" and self.m._fold is not None else self.m.dim,
        )

    def faiss(self, idx, dist):
        qi, ri, undecided = self.m._faiss_pass(self.q)
        i, d = self.rerank(qi, ri, np.arange(self.n))
        idx[:], dist[:] = i, d
        todo = np.flatnonzero(undecided)
        self.brute = len(todo)
        if len(todo):
            self.kind = "float64"
            for a in range(0, len(todo), self.batch):
                self.full_search(todo[a : a + self.batch], idx, dist)
            self.kind = "float32"
        return idx, dist

    # ---- full-dimensional passes -----------------------------------------------------------
    def full_search(self, sel: np.ndarray, idx, dist, ids: np.ndarray | None = None, prepared=None) -> None:
        """Exact answers for queries sel over every reference, or over the subset ids
        (prepared: the queries' prepared form for self.kind, when the caller has it)."""
        m = self.m
        kind = self.kind
        while True:
            source = m._prepared_chunks(kind) if ids is None else m._gathered_chunks(ids, kind)
            if prepared is not None and prepared[0] == kind:
                qt, qinfo = prepared[1], prepared[2]
            else:
                qt, qinfo = self.prepare_queries(sel, kind)
            try:
                if kind == "int8" and self.exact_codes:
                    best_s, best_i = self.min_pass(qt, source)
                    idx[sel] = best_i
                    dist[sel] = (best_s + qinfo.cpu().numpy()) / PIXEL_LEVELS**2
                    return
                qi, ri = self.band_pass(qt, qinfo, source, kind, limit=kind not in ("float64", "int8"))
            except _TooMany:  # the band holds too many pairs: one step up in precision
                kind = {"bf16": "float32", "float32": "float64"}[kind]
                if m.precision == "auto":
                    self.kind = kind  # later tiles start there
                continue
            i, d = self.rerank(qi, ri, sel)
            idx[sel], dist[sel] = i, d
            return

    def min_pass(self, qt: torch.Tensor, source):
        """Exact integer scores: per query the minimum and its first (lowest) reference index."""
        n = qt.shape[0]
        wide = self.m.dim > _INT32_SAFE_DIM
        dev = self.m.device
        best = torch.full((n,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
        best_i = torch.full((n,), -1, dtype=torch.int64, device=dev)
        for ids, rt, rn, _ in source:
            for q0 in range(0, n, self.tile):
                s = torch.sub(rn, _int_dots(qt[q0 : q0 + self.tile], rt.T, wide), alpha=2)
                v, j = torch.min(s, dim=1)  # the first minimum of the row
                v = v.to(torch.int64)
                b, bi = best[q0 : q0 + len(v)], best_i[q0 : q0 + len(v)]
                better = v < b  # a tie with an earlier chunk keeps the earlier, lower index
                b.copy_(torch.where(better, v, b))
                bi.copy_(torch.where(better, ids[j], bi))
        return best.cpu().numpy().astype(np.float64), best_i.cpu().numpy()

    def band_pass(self, qt: torch.Tensor, qinfo: torch.Tensor, source, kind: str, limit: bool):
        """Pairs (query, reference) whose score can still be the minimum.

        ub = min over seen references of (approx + E) bounds the exact minimum from above; a
        reference is kept when approx - E <= ub. Row minima keep the epilogue cheap: indices
        are extracted only from the rows whose tile minimum can still matter.
        """
        m, n, dev = self.m, qt.shape[0], self.m.device
        wide = m.dim > _INT32_SAFE_DIM
        ub = torch.full((n,), math.inf, dtype=torch.float64, device=dev)
        found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        count = 0
        # more candidates than this: the next precision is cheaper than their float64 re-rank
        cap = n * max(16, m.size // 500) + 1024 if limit else None
        if kind == "int8":
            reach = PIXEL_LEVELS * 2 * self.eta
            qn = qinfo

            def slack(rows_x, ymax):
                return torch.zeros_like(rows_x)
        else:
            ca, cb, ct = m._float_bound(kind)

            def slack(rows_x, ymax):
                return ca * rows_x * ymax + cb * ymax * ymax + ct * (rows_x + ymax)

        def width(ub_rows, q0, e):
            if kind != "int8":
                return e
            d = (ub_rows + qn[q0 : q0 + len(ub_rows)]).clamp_min(0)
            return (2 * reach * d.sqrt() + reach**2) * (1 + 1e-9) + 1e-9

        def settled(parts):
            """The pairs found so far that the current bounds ub still admit."""
            qi, ri, sv, ev = (torch.cat(f) for f in zip(*parts, strict=True))
            keep = sv - ev <= ub[qi] + (width(ub, 0, ub)[qi] if kind == "int8" else 0)
            return qi[keep], ri[keep], sv[keep], ev[keep]

        for ids, rt, rn, ymax in source:
            for q0 in range(0, n, self.tile):
                qs = qt[q0 : q0 + self.tile]
                s = _score(kind, qs, rt, rn, wide, self.bufs)
                e = slack(qinfo[q0 : q0 + len(s)], ymax) if kind != "int8" else torch.zeros(len(s), dtype=torch.float64, device=dev)
                u = ub[q0 : q0 + len(s)]
                tile_min = s.amin(dim=1).to(torch.float64)
                u.copy_(torch.minimum(u, tile_min + e))
                thr = u + width(u, q0, e)
                live = torch.nonzero(tile_min <= thr).squeeze(1)
                if len(live):
                    # rows whose minimum is above their threshold add nothing (or a pair the exact
                    # filter below drops): once the running bounds settle, few rows are live and
                    # only they are scanned; many live rows are scanned in place, without a copy
                    if 4 * len(live) < len(s):
                        sub = s.index_select(0, live)
                        r_i, c_i = torch.nonzero(sub <= _threshold_like(thr[live], s.dtype)[:, None], as_tuple=True)
                        q_i, sv = live[r_i], sub[r_i, c_i]
                    else:
                        q_i, c_i = torch.nonzero(s <= _threshold_like(thr, s.dtype)[:, None], as_tuple=True)
                        sv = s[q_i, c_i]
                    found.append((q_i + q0, ids[c_i], sv.to(torch.float64), e[q_i]))
                    count += len(q_i)
                    if cap is not None and count > cap:
                        # pairs admitted while the bounds were loose: drop those the bounds now rule out
                        found = [settled(found)]
                        count = len(found[0][0])
                        if count > cap:
                            raise _TooMany
        qi, ri, _, _ = settled(found)
        return qi.cpu().numpy(), ri.cpu().numpy()

    # ---- float64 re-rank ---------------------------------------------------------------------
    def rerank(self, qi: np.ndarray, ri: np.ndarray, sel: np.ndarray):
        """Per local query, the candidate with the lowest float64 distance, ties to the lowest
        index; pairs are evaluated in blocks that fit the working set."""
        n = len(sel)
        idx = np.full(n, -1, dtype=np.int64)
        dist = np.full(n, np.inf)
        self.reranked += len(qi)
        if len(qi) == 0:
            return idx, dist
        order = np.lexsort((ri, qi))
        qi, ri = qi[order], ri[order]
        # blocks of pairs small enough to stay in cache (a few MB of float64 differences): far
        # faster than one large block, whose arrays are written to memory and read back
        step = max(64, min(self.m.working_bytes // (4 * 8 * 3 * self.m.dim), _RERANK_BYTES // (8 * self.m.dim)))
        store = self.m._store
        # rows straight from an in-memory store; a memory-mapped (or read-only) one is read in sorted order
        direct = not isinstance(store, np.memmap) and store.flags.c_contiguous and store.flags.writeable
        st = torch.from_numpy(store) if direct else None
        qt = torch.from_numpy(np.ascontiguousarray(self.q[sel]))
        d64 = np.empty(len(qi))
        for a in range(0, len(qi), step):
            q_t = torch.from_numpy(qi[a : a + step])
            if direct:
                refs = st.index_select(0, torch.from_numpy(ri[a : a + step]))
            else:
                uniq_r, inv_r = np.unique(ri[a : a + step], return_inverse=True)
                refs = torch.from_numpy(np.ascontiguousarray(self.m._gather(uniq_r))).index_select(0, torch.from_numpy(inv_r))
            qs = qt.index_select(0, q_t)
            if self.code_pairs:  # codes on both sides: exact integer sums, / 255^2 once
                diff = refs.to(torch.int32).sub_(qs.to(torch.int32))
                d64[a : a + step] = (diff * diff).sum(1, dtype=torch.int64).numpy() / PIXEL_LEVELS**2
                continue
            diff = self.m._values64_t(refs).sub_(_query_values64(qs))  # float64 differences, as brute force has them
            d64[a : a + step] = torch.einsum("nd,nd->n", diff, diff).numpy()
        order = np.lexsort((ri, d64, qi))  # by query, then distance, then index
        first = order[np.r_[True, qi[order][1:] != qi[order][:-1]]]
        idx[qi[first]] = ri[first]
        dist[qi[first]] = d64[first]
        return idx, dist

    # ---- lower-bound pruning ---------------------------------------------------------------
    def project_queries(self, sel: np.ndarray, proj: dict, prepared):
        """Centred float32 projections of queries (device) and their margins (float64, device)."""
        m = self.m
        if proj["kind"] == "int8":
            t = prepared[1]
            p = _int_dots(t, proj["ct"], m.dim > _INT32_SAFE_DIM).cpu().numpy().astype(np.float64) * proj["scale"]
            p -= proj["centre"]
            xm = np.zeros(len(sel))
        else:
            xt, xn = self.prepare_queries(sel, "float32", fold=False)  # the directions span every column
            p = _blocked_mm(xt, proj["pt"]).double().cpu().numpy() - proj["centre"]
            xm = proj["eps"] * xn.cpu().numpy()
        pn = np.sqrt(np.einsum("ij,ij->i", p, p))
        p32 = torch.from_numpy(p.astype(np.float32))
        margin = xm + 1.01 * _U32 * pn + _TINY
        pn32 = (p32.double() ** 2).sum(1)
        return p32.to(m.device), torch.from_numpy(margin).to(m.device), pn32.to(m.device)

    def pruned_search(self, sel: np.ndarray, proj: dict, idx, dist) -> None:
        m = self.m
        dev = m.device
        nproj = proj["dims"]
        # a tile holds its projected scores against every reference
        tile = max(1, min(1024, (m.working_bytes // 4) // (8 * m.size)))
        g = _gamma(nproj + 1)
        for t0 in range(0, len(sel), tile):
            part = sel[t0 : t0 + tile]
            prepared = (self.kind, *self.prepare_queries(part, self.kind)) if proj["kind"] == "int8" else None
            pq, aq, pq2 = self.project_queries(part, proj, prepared)
            buf = self.bufs.get("projected", (len(part), m.size), torch.float32, dev)
            scores = torch.addmm(proj["nr"].unsqueeze(0), pq, proj["prt"], beta=1.0, alpha=-2.0, out=buf)
            # seeds: the best two by the bound, their exact distances bound each query's answer
            k = min(2, m.size)
            seed = torch.topk(scores, k, dim=1, largest=False).indices.cpu().numpy()
            qi = np.repeat(np.arange(len(part)), k)
            _, tq = self.rerank(qi, seed.reshape(-1), part)
            # keep r when the lower bound (||p~q - p~r|| - a_q - a_r) / sigma <= sqrt(T): in
            # projected squared-norm terms, approx <= (sigma R + a_q + a_r)^2 + E - |p~q|^2
            radius = proj["unit"] * (np.sqrt(tq * (1 + 1e-9)) + self.eta) * (1 + 1e-9)
            r_t = torch.from_numpy(radius).to(dev)
            pqn = pq2.sqrt()
            keep = self.bufs.get("keep", (len(part), m.size), torch.bool, dev)
            for a, b, ar, pmax in proj["chunks"]:
                e = 1.05 * ((2 * g + 2 * _U32) * pqn * pmax + (g + 3 * _U32) * pmax * pmax) + _TINY
                thr = (proj["sigma"] * r_t + aq + ar) ** 2 * (1 + 1e-9) + e - pq2
                keep[:, a:b] = scores[:, a:b] <= _threshold_like(thr, torch.float32)[:, None]
            del scores
            self.survivors += int(torch.count_nonzero(keep))
            self.pruned_queries += len(part)
            # verify in sub-tiles of similar queries, so their survivors overlap
            groups = []
            for rows in _compact_groups(pq[:, :16].cpu().numpy(), _VERIFY_GROUP):
                ids = torch.nonzero(keep[torch.from_numpy(rows).to(dev)].any(0)).squeeze(1).cpu().numpy()
                groups.append((rows, ids))
            evaluated = sum(len(r) * len(i) for r, i in groups)
            self.evaluated += evaluated
            if evaluated > 0.3 * len(part) * m.size:  # the bound rules out too little here
                self.full_search(part, idx, dist)
            else:
                for rows, ids in groups:
                    pre = None
                    if prepared is not None:
                        rt = torch.from_numpy(rows).to(dev)
                        pre = (prepared[0], prepared[1][rt], prepared[2][rt])
                    self.full_search(part[rows], idx, dist, ids=ids if len(ids) else None, prepared=pre)
            if m.prune is None and self.evaluated > 0.3 * self.pruned_queries * m.size:
                # the bound rules out too little to pay for itself: plain passes for the rest
                self.pruning = False
                rest = sel[t0 + len(part) :]
                for a in range(0, len(rest), self.batch):
                    self.full_search(rest[a : a + self.batch], idx, dist)
                return


def _sample_rows(n: int, k: int) -> np.ndarray:
    """Up to k row indices spread evenly over n rows."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


class _Fold:
    """Columns equal in every reference row (FREQ: the spectrum of a real image is symmetric, so
    about half its coordinates repeat) merged into one: with y_k = y_j, x.y = (x_k + x_j) y_k, so
    the candidate pass sums the query's group and keeps one reference column, with half the work.
    The full norms stay in the score and the bound; the float64 re-rank sees every column."""

    def __init__(self, groups: _Columns) -> None:
        self.width = len(groups.first)
        self.rep_t = torch.from_numpy(groups.first)  # the column kept for each group
        self.slot_t = torch.from_numpy(groups.slot)  # per column, its group
        biggest = int(np.bincount(groups.slot).max())
        self.merge_error = _gamma(biggest - 1, _U64) if biggest > 1 else 0.0

    @classmethod
    def of(cls, groups: _Columns | None, dim: int) -> _Fold | None:
        """The fold, when it removes at least a tenth of the columns (else not worth a gather)."""
        if groups is None or groups.merged() < dim // 10:
            return None
        return cls(groups.compact())

    def sum_columns(self, x: torch.Tensor) -> torch.Tensor:
        """float64 query values (n x D) -> n x width: each group's columns summed."""
        out = torch.zeros((x.shape[0], self.width), dtype=x.dtype, device=x.device)
        return out.index_add_(1, self.slot_t.to(x.device), x)


class _Columns:
    """A grouping of columns (slot per column) narrowed as rows are checked."""

    def __init__(self, slot: np.ndarray) -> None:
        self.slot = slot
        self.first = np.full(int(slot.max()) + 1, len(slot), dtype=np.int64)
        np.minimum.at(self.first, slot, np.arange(len(slot)))

    @staticmethod
    def of_sample(sample: np.ndarray) -> _Columns | None:
        """Groups of columns equal (bit for bit) in a sample of rows, to confirm on every row."""
        cols = np.ascontiguousarray(sample.T)
        keys = cols.view(np.dtype((np.void, cols.dtype.itemsize * cols.shape[1]))).ravel()
        _, slot = np.unique(keys, return_inverse=True)
        groups = _Columns(slot.ravel().astype(np.int64))
        return groups if groups.merged() else None

    def merged(self) -> int:
        return len(self.slot) - len(self.first)

    def confirmed(self, rows: np.ndarray) -> _Columns | None:
        """The grouping with every column that differs in value from its group's first column in
        some row (NaN never matches) made a group of its own."""
        lead = self.first[self.slot]
        member = np.flatnonzero(lead != np.arange(len(self.slot)))
        t = torch.from_numpy(np.ascontiguousarray(rows))
        a, b = t.index_select(1, torch.from_numpy(member)), t.index_select(1, torch.from_numpy(lead[member]))
        same = (a == b).all(0).numpy()  # equal values (0.0 == -0.0) suffice for x.y
        if same.all():
            return self
        slot = self.slot.copy()
        slot[member[~same]] = len(self.first) + np.arange(int((~same).sum()))
        out = _Columns(slot)
        return out if out.merged() else None

    def compact(self) -> _Columns:
        """The same grouping with its groups numbered 0 .. G-1."""
        _, slot = np.unique(self.slot, return_inverse=True)
        return _Columns(slot.ravel().astype(np.int64))


def _query_values64(rows: torch.Tensor) -> torch.Tensor:
    """float64 values of query rows (uint8 codes -> code / 255), as brute force has them."""
    return rows.to(torch.float64).div_(PIXEL_LEVELS) if rows.dtype == torch.uint8 else rows.to(torch.float64)


def _compact_groups(points: np.ndarray, size: int) -> list[np.ndarray]:
    """Indices of points cut into groups of at most `size` that lie close together: a k-d split
    at the median of the widest coordinate, recursively (queries close together share the
    references that survive their bounds, so a group's union stays small)."""
    out, todo = [], [np.arange(len(points))]
    while todo:
        rows = todo.pop()
        if len(rows) <= size:
            out.append(rows)
            continue
        x = points[rows]
        col = int(np.argmax(x.max(0) - x.min(0)))
        order = rows[np.argsort(x[:, col], kind="stable")]
        half = len(order) // 2
        todo += [order[half:], order[:half]]
    return out


def _orthonormal(b: np.ndarray) -> np.ndarray:
    """Columns of b orthonormalised in float64 through their Gram matrix (twice, for accuracy)."""
    t = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))
    for _ in range(2):
        w, v = torch.linalg.eigh(t.T @ t)
        t = torch.nan_to_num(t @ (v / w.clamp_min(1e-300).sqrt()) @ v.T)
    return t.numpy()


def _score(kind: str, q: torch.Tensor, rt: torch.Tensor, rn: torch.Tensor, wide: bool,
           bufs: _Buffers | None = None) -> torch.Tensor:
    """Scores |r|^2 - 2 q.r of a query tile against a prepared chunk (m x n), written into a
    reused buffer when bufs is given (a fresh multi-MB output per tile costs its page faults)."""
    if kind == "int8":
        return torch.sub(rn.to(torch.int64) if wide else rn, _int_dots(q, rt.T, wide), alpha=2)
    bufs = bufs or _Buffers()
    m, n = q.shape[0], rt.shape[0]
    acc = torch.float64 if kind == "float64" else torch.float32
    out = bufs.get("score", (m, n), acc, q.device)
    if kind in ("float32", "float64") and q.shape[1] <= 2 * _KBLOCK:
        return torch.addmm(rn.unsqueeze(0), q, rt.T, beta=1.0, alpha=-2.0, out=out)
    if q.shape[1] <= 2 * _KBLOCK:  # bf16, one block: widen, scale and add in one pass
        part = torch.mm(q, rt.T, out=bufs.get("block", (m, n), q.dtype, q.device))
        return torch.add(rn.unsqueeze(0), part, alpha=-2, out=out)
    _blocked_mm(q, rt, rows=True, out=out, bufs=bufs)
    return out.mul_(-2).add_(rn.unsqueeze(0))  # -2 x is exact: one rounding, as addmm's epilogue


class _Buffers:
    """Output buffers reused across the tiles of a search, by name, shape, dtype and device."""

    def __init__(self) -> None:
        self._held: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = self._held.get(name)
        size = shape[0] * shape[1]
        if t is None or t.dtype != dtype or t.device != device or t.numel() < size:
            t = self._held[name] = torch.empty(size, dtype=dtype, device=device)
        return t[:size].view(shape)


def _padded(d: int) -> int:
    """Columns of the blocked float form: D, or D rounded up to whole blocks when long."""
    return d if d <= 2 * _KBLOCK else -(-d // _KBLOCK) * _KBLOCK


def _pad_blocks(t: torch.Tensor) -> torch.Tensor:
    extra = _padded(t.shape[1]) - t.shape[1]
    return torch.nn.functional.pad(t, (0, extra)) if extra else t.contiguous()


def _blocked_mm(q: torch.Tensor, r: torch.Tensor, rows: bool = False, out: torch.Tensor | None = None,
                bufs: _Buffers | None = None) -> torch.Tensor:
    """q @ r (r given as rows when rows=True: q @ r.T), accumulated in float32 (float64 for
    float64) over column blocks of _KBLOCK when D > 2 _KBLOCK: each block's product goes to a
    fresh output (so no library folds one block's sum into the next), then the blocks' partial
    sums are added in turn (what _float_bound assumes)."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    d = q.shape[1]
    m, n = q.shape[0], (r.shape[0] if rows else r.shape[1])
    if out is None:
        out = torch.empty((m, n), dtype=acc, device=q.device)
    bufs = bufs or _Buffers()
    if d <= 2 * _KBLOCK:
        if q.dtype == acc:
            return torch.mm(q, r.T if rows else r, out=out)
        part = bufs.get("block", (m, n), q.dtype, q.device)  # a bf16 product, then widened
        return out.copy_(torch.mm(q, r.T if rows else r, out=part))
    part = bufs.get("block", (m, n), q.dtype, q.device)
    for i, a in enumerate(range(0, d, _KBLOCK)):
        torch.mm(q[:, a : a + _KBLOCK], r[:, a : a + _KBLOCK].T if rows else r[a : a + _KBLOCK], out=part)
        if i == 0:
            out.copy_(part)
        else:
            out.add_(part)
    return out


def store_rows(store: np.ndarray, idx, device) -> torch.Tensor:
    """float32 values of rows of a reference store (uint8 codes -> code / 255), read in sorted order
    (kind to a memmap) and returned in the order asked, on device. Every search engine's reference()."""
    idx = np.asarray(torch.as_tensor(idx).cpu())
    order = np.argsort(idx, kind="stable")
    rows = np.empty((len(idx), int(np.prod(store.shape[1:]))), dtype=store.dtype)
    rows[order] = np.asarray(store[idx[order]]).reshape(len(idx), -1)
    if rows.dtype == np.uint8:
        vals = torch.from_numpy(rows).to(torch.float32) / PIXEL_LEVELS
    else:
        vals = torch.from_numpy(rows.astype(np.float32, copy=False))
    return vals.to(device)


def _threshold_like(thr: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float64 threshold in a tile's dtype, never below it (so no candidate is lost)."""
    if dtype.is_floating_point:
        t = thr.to(dtype)
        return torch.where(t.to(torch.float64) < thr, torch.nextafter(t, torch.full_like(t, math.inf)), t)
    info = torch.iinfo(dtype)
    return thr.floor().clamp(info.min, info.max).to(dtype)


def _shift_int8(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes -> int8 (code - 128, the code with its top bit flipped), padded to a multiple
    of 8 columns (zeros change nothing)."""
    t = torch.bitwise_xor(codes, 128).view(torch.int8)
    if t.shape[1] % 8:  # CUDA's int8 matmul wants multiples of 8
        t = torch.nn.functional.pad(t, (0, 8 - t.shape[1] % 8))
    return t


def _int_norms(t: torch.Tensor) -> torch.Tensor:
    """Exact |t|^2 of int8 rows as int64: squares <= 2^14 summed in float32 over 1,024 columns
    at a time (every partial sum an integer <= 2^24, so exact), the blocks in float64."""
    n, d = t.shape
    out = torch.zeros(n, dtype=torch.float64, device=t.device)
    for a in range(0, d, 1024):
        f = t[:, a : a + 1024].to(torch.float32)
        out += (f * f).sum(1).to(torch.float64)
    return out.to(torch.int64)


def _int_dots(q: torch.Tensor, rt: torch.Tensor, wide: bool) -> torch.Tensor:
    """q (m x D int8) @ rt (D x n int8), exact: int32, or int64 over slabs when D is large."""
    if not wide:
        return _int_mm(q, rt)
    out = None
    cpu = q.device.type == "cpu"
    for a in range(0, q.shape[1], 32_768):
        qa, ra = q[:, a : a + 32_768], rt[a : a + 32_768]
        part = _int_mm(qa if cpu else qa.contiguous(), ra).to(torch.int64)  # CPU takes strided views
        out = part if out is None else out.add_(part)
    return out


def _int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch._int_mm, padded where CUDA's kernel needs it (m > 16, n a multiple of 8); zeros add
    nothing. On CPUs without fast int8 matmul (no VNNI / AMX), the same exact product in float32."""
    if a.device.type != "cuda":
        if not devices.fast_int8(a.device):
            return _int_mm_float(a, b)
        return torch._int_mm(a, b)  # the CPU kernel takes b transposed as a view
    b = b.contiguous()
    m, n = a.shape[0], b.shape[1]
    pm, pn = max(0, 32 - m), (-n) % 8
    if pm or pn:
        a = torch.nn.functional.pad(a, (0, 0, 0, pm))
        b = torch.nn.functional.pad(b, (0, pn))
    return torch._int_mm(a, b)[:m, :n]


_EXACT_FLOAT_TERMS = 1024  # int8 products are at most 2^14 in size: 1,024 of them sum to at most 2^24


def _int_mm_float(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (m x K int8) @ b (K x n int8) -> int32, exactly, through float32 matmuls: in a block of
    1,024 terms every partial sum, in any order the library takes, is an integer of magnitude at
    most 2^24, so float32 holds it exactly; blocks are added in float64 (exact below 2^53)."""
    k = a.shape[1]
    if k <= _EXACT_FLOAT_TERMS:
        return (a.to(torch.float32) @ b.to(torch.float32)).to(torch.int32)
    out = None
    for s in range(0, k, _EXACT_FLOAT_TERMS):
        part = (a[:, s : s + _EXACT_FLOAT_TERMS].to(torch.float32) @ b[s : s + _EXACT_FLOAT_TERMS].to(torch.float32))
        out = part.double() if out is None else out.add_(part)
    return out.to(torch.int32)
