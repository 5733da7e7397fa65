"""The Ray engine: the same fingerprints as the local engine, computed on a Ray cluster.

Two pieces, each a drop-in for what the local engine uses, so the pipeline runs the same code:

- ``ShardedManifold``: the reference set split into contiguous shards, each held by a Ray actor
  (``Shard``) that answers the exact nearest neighbour within its rows with the certified
  ``Manifold`` search. The driver merges the per-query minima; ties go to the lowest GLOBAL
  index, so the answer is the local ``Manifold``'s, bit for bit (see ``_merge``). It has the
  interface of ``Manifold`` (``nearest``, ``reference``, ``size``, ``dim``, ``pixels``,
  ``last_stats``), so ``artifacts.project`` takes it as it is.
- ``ray_embed`` / ``RaySpace``: embedding through Ray Data ``map_batches`` with a callable class
  that builds the space once per actor (``num_gpus`` actors when the cluster has GPUs).

Workers never touch a workspace: they receive rows and queries and return numbers; the driver
alone writes. Ray is optional and imported lazily: ``require_ray()`` names the install command.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

import numpy as np
import torch

from fingerprint_core import devices, memory
from fingerprint_core.manifold import Manifold, as_rows, store_rows

RAY_VERSION = "2.60.0"
INSTALL_HINT = (f"the Ray engine needs Ray: run `MANIFPT_EXTRAS=ray bash scripts/setup.sh`, "
                f"or `pip install 'ray[data]=={RAY_VERSION}'` in the project's environment")
DEFAULT_QUERY_BATCH = 2048  # queries sent to every shard at once (bounded by the working set too)


class RayUnavailable(ImportError, ValueError):
    """Ray is not installed: the message says how to install it (a ValueError too, so the CLI's
    error handler prints it as one line)."""


class ShardError(RuntimeError):
    """A shard actor failed (died, or its search raised); the message names the shard."""

    def __init__(self, message: str, shard: int) -> None:
        super().__init__(message)
        self.shard = shard


def available() -> bool:
    """Whether Ray can be imported here (cheap: does not import it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        return False


def require_ray():
    """The ray module, or RayUnavailable with the install command."""
    try:
        import ray
    except ImportError as err:
        raise RayUnavailable(INSTALL_HINT + f" ({err})") from err
    return ray


# ---- the cluster ------------------------------------------------------------------------------
_STARTED_HERE = False
_LOCK = threading.Lock()


def default_object_store_bytes() -> int:
    """A local instance's object store: 30% of the machine's memory, at most 4 GiB, at least 128 MiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * 2**30
    return int(max(128 * 2**20, min(4 * 2**30, 0.3 * total)))


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            object_store_memory: int | None = None, runtime_env: dict | None = None) -> dict:
    """Join the Ray cluster at ``address`` ("auto", "ray://host:10001", "host:6379"), or start a
    local instance when None (``include_dashboard=False``, ``num_cpus`` default: every core).
    Already connected: returns at once. Returns the cluster's resources."""
    global _STARTED_HERE
    ray = require_ray()
    with _LOCK:
        if not ray.is_initialized():
            env = dict(runtime_env or {})
            # as the CLI does: spinning OpenMP waits make threads much slower on a shared machine
            env["env_vars"] = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
                               **env.get("env_vars", {})}
            kw: dict[str, Any] = {"log_to_driver": False, "runtime_env": env}
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, include_dashboard=False,
                         object_store_memory=object_store_memory or default_object_store_bytes(), **kw)
                _STARTED_HERE = True
    return dict(ray.cluster_resources())


def shutdown() -> None:
    """Stop the local instance this module started (a joined cluster is only left)."""
    global _STARTED_HERE
    ray = require_ray()
    if ray.is_initialized():
        ray.shutdown()
    _STARTED_HERE = False


def _resources() -> tuple[float, float]:
    ray = require_ray()
    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


# ---- shards -----------------------------------------------------------------------------------
class Shard:
    """A shard of the reference set in an actor: its rows (global offset ``offset``) and their
    exact search. Made remote by ``_shard_actor_class`` so that importing this module needs no Ray."""

    def __init__(self, number: int, offset: int, rows, device: str, working_bytes: int | None, threads: int | None,
                 options: dict) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        if isinstance(rows, dict):  # a slice of a .npy file this node can read: memory-mapped, no copy
            rows = np.memmap(rows["file"], dtype=np.dtype(rows["dtype"]), mode="r", offset=rows["offset"],
                             shape=tuple(rows["shape"]))
        self.number, self.offset = int(number), int(offset)
        self.manifold = Manifold(rows, device=device, working_bytes=working_bytes, **options)
        self.answered = 0

    def info(self) -> dict:
        import ray

        m = self.manifold
        return {"shard": self.number, "offset": self.offset, "rows": int(m.size), "dim": int(m.dim),
                "pixels": bool(m.pixels), "device": str(m.device), "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id(), "threads": torch.get_num_threads(),
                "answered": self.answered}

    def nearest(self, queries: np.ndarray):
        """(global index int64, distance float32, SearchStats) of each query's nearest row in the shard."""
        idx, dist = self.manifold.nearest(queries)
        self.answered += 1
        return idx.cpu().numpy() + self.offset, dist.cpu().numpy(), self.manifold.last_stats


_ACTOR_CLASSES: dict[str, Any] = {}


def _shard_actor_class():
    if "shard" not in _ACTOR_CLASSES:
        _ACTOR_CLASSES["shard"] = require_ray().remote(Shard)
    return _ACTOR_CLASSES["shard"]


def _merge(idx: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query (columns), the shard answer with the lowest distance; ties broken by global index.

    idx, dist: S x B (shard s's answer to query b). Returns (index, distance, ambiguous), where
    ambiguous marks queries whose minimum float32 distance several shards share: float32 rounding
    is monotone, so a strictly smaller float32 distance means a strictly smaller exact one, but
    equal float32 values may hide different exact ones; those queries are settled by the caller.
    """
    best = dist.min(axis=0)
    at_min = dist == best[None, :]
    ambiguous = at_min.sum(axis=0) > 1
    cand = np.where(at_min, idx, np.iinfo(np.int64).max)
    pick = cand.argmin(axis=0)  # unambiguous: the one shard at the minimum
    cols = np.arange(idx.shape[1])
    return idx[pick, cols], dist[pick, cols], ambiguous


class ShardedManifold:
    """The reference set split into ``shards`` Ray actors; the exact answer of ``Manifold``.

    ``reference``: as for ``Manifold`` (array, memmap or tensor; uint8 codes or float rows).
    ``by_path``: actors memory-map their slice of the reference's .npy file (read-only) instead of
    receiving the rows through the object store: no copy of a large memory-mapped store (every
    node needs the file at the same path). Off by default, so workers never open a workspace file.
    ``retries``: how many times a shard actor that died is started again (from its rows) and asked
    again; past that, ``nearest`` raises ``ShardError`` naming the shard, never a partial answer.
    ``shard_cpus`` / ``shard_gpus``: resources each actor reserves (default: no CPU reservation,
    so Ray Data's embedding actors can run beside the shards; one GPU share each where the cluster
    has GPUs). ``threads``: torch threads per actor (default: the cluster's CPUs over the shards).
    Other keywords (``prune``, ``precision``, ...) go to each shard's ``Manifold``.
    """

    def __init__(self, reference, *, shards: int = 2, device: str | torch.device = "auto",
                 working_bytes: int | None = None, query_batch: int | None = None, inflight: int = 2,
                 retries: int = 0, by_path: bool = False, shard_cpus: float = 0.0,
                 shard_gpus: float | None = None, threads: int | None = None, address: str | None = None,
                 **manifold_options) -> None:
        ray = require_ray()
        connect(address)
        self._ray = ray
        self._source = reference
        self._store = as_rows(reference)
        if self._store.ndim != 2 or self._store.shape[0] == 0:
            raise ValueError(f"reference must hold at least one row; got shape {tuple(self._store.shape)}")
        self.size, self.dim = (int(v) for v in self._store.shape)
        self.working_bytes = int(working_bytes) if working_bytes is not None else memory.working_set_bytes()
        self.retries = max(0, int(retries))
        self.inflight = max(1, int(inflight))
        self._options = dict(manifold_options)
        n_shards = max(1, min(int(shards), self.size))
        cpus, gpus = _resources()
        want = str(device)
        if shard_gpus is None:
            shard_gpus = min(1.0, gpus / n_shards) if (gpus and want != "cpu") else 0.0
        if want.startswith("cuda") and not shard_gpus:
            raise ValueError(f"device={want!r} was asked for, but the Ray cluster has no GPU")
        self._shard_device = "cuda" if shard_gpus else "cpu"
        # where the answers come back: the driver's device (a driver without CUDA gets them on the CPU)
        self.device = devices.resolve(device) if (want == "cpu" or torch.cuda.is_available()) else torch.device("cpu")
        self._threads = threads or max(1, int(cpus // n_shards) if cpus else 1)
        self._actor_opts: dict[str, Any] = {"num_cpus": float(shard_cpus), "max_restarts": 0}
        if shard_gpus:
            self._actor_opts["num_gpus"] = float(shard_gpus)
        if len(ray.nodes()) > 1:
            self._actor_opts["scheduling_strategy"] = "SPREAD"
        bounds = np.linspace(0, self.size, n_shards + 1).round().astype(np.int64)
        self.bounds = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self._rows: list[Any] = [self._shard_rows(a, b, by_path) for a, b in self.bounds]
        self.by_path = bool(by_path and isinstance(self._rows[0], dict))
        self.actors = [self._start(s) for s in range(n_shards)]
        self.restarts = [0] * n_shards
        infos = self.shard_info()
        self.pixels = all(i["pixels"] for i in infos)
        self.query_batch = max(1, int(query_batch or min(DEFAULT_QUERY_BATCH,
                                                         self.working_bytes // (4 * 16 * max(1, self.dim)))))
        self.last_stats = None
        self.shard_stats: list = []
        self.ambiguous = 0  # queries of the last search whose tie the driver settled

    # ---- set-up ---------------------------------------------------------------------------
    def _shard_rows(self, a: int, b: int, by_path: bool):
        src = self._source
        if by_path and isinstance(src, np.memmap) and src.filename and src.flags.c_contiguous:
            row_bytes = self.dim * src.dtype.itemsize
            return {"file": str(src.filename), "dtype": src.dtype.str, "offset": int(src.offset) + a * row_bytes,
                    "shape": (b - a, self.dim)}
        return self._ray.put(np.ascontiguousarray(self._store[a:b]))

    def _start(self, s: int):
        a, _ = self.bounds[s]
        return _shard_actor_class().options(**self._actor_opts).remote(
            s, a, self._rows[s], self._shard_device, self.working_bytes, self._threads, self._options)

    def _describe(self, s: int) -> str:
        a, b = self.bounds[s]
        return f"shard {s} of {len(self.actors)} (reference rows {a}..{b - 1})"

    def _get(self, s: int, ref, *, what: str):
        """ray.get of one shard's reply; an actor failure becomes ShardError naming the shard."""
        ray = self._ray
        try:
            return ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as err:
            raise _Died(s, err) from err
        except ray.exceptions.RayError as err:
            raise ShardError(f"{self._describe(s)} failed while {what}: {err}", s) from err

    def shard_info(self) -> list[dict]:
        """Each actor's description: rows held, offset, device, node, pid, batches answered."""
        out = []
        for s, ref in enumerate([actor.info.remote() for actor in self.actors]):
            try:
                out.append(self._get(s, ref, what="starting or describing itself"))
            except _Died as died:
                raise ShardError(f"{self._describe(s)} died while starting or describing itself: {died.cause}",
                                 s) from died.cause
        return out

    # ---- Manifold's interface -------------------------------------------------------------
    def reference(self, idx) -> torch.Tensor:
        """The float32 embeddings of the given reference rows (as ``Manifold.reference``)."""
        return store_rows(self._store, idx, self.device)

    @torch.no_grad()
    def nearest(self, queries) -> tuple[torch.Tensor, torch.Tensor]:
        """Index (LongTensor N) and squared L2 distance (float32 N) of each query's nearest reference."""
        q = as_rows(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the manifold has {self.dim}")
        n = q.shape[0]
        idx = np.empty(n, dtype=np.int64)
        dist = np.empty(n, dtype=np.float32)
        stats: list = [None] * len(self.actors)
        self.ambiguous = 0
        starts = list(range(0, n, self.query_batch))
        pending: dict[int, tuple] = {}
        for k, a in enumerate(starts):
            pending[k] = self._submit(q[a : a + self.query_batch])
            if len(pending) >= self.inflight or k == len(starts) - 1:
                for j in sorted(pending):
                    b0 = starts[j]
                    self._collect(j, b0, q[b0 : b0 + self.query_batch], pending.pop(j), idx, dist, stats)
        self.shard_stats = stats
        self.last_stats = _combined(stats, n)
        return torch.from_numpy(idx).to(self.device), torch.from_numpy(dist).to(self.device)

    # ---- the search -----------------------------------------------------------------------
    def _submit(self, batch: np.ndarray):
        ref = self._ray.put(np.ascontiguousarray(batch))
        return ref, [(self.restarts[s], actor.nearest.remote(ref)) for s, actor in enumerate(self.actors)]

    def _collect(self, j, b0, batch, submitted, idx, dist, stats) -> None:
        ref, futures = submitted
        n_shards = len(self.actors)
        s_idx = np.empty((n_shards, len(batch)), dtype=np.int64)
        s_dist = np.empty((n_shards, len(batch)), dtype=np.float32)
        for s, (generation, fut) in enumerate(futures):
            what = f"answering queries {b0}..{b0 + len(batch) - 1}"
            while True:
                try:
                    i, d, st = self._get(s, fut, what=what)
                    break
                except _Died as died:
                    if self.restarts[s] == generation:  # this death was not handled yet
                        if self.restarts[s] >= self.retries:
                            raise ShardError(
                                f"{self._describe(s)} died while {what}"
                                + (f" (after {self.restarts[s]} restart(s))" if self.restarts[s] else "")
                                + f"; no partial answer is returned: {died.cause}", s) from died.cause
                        self.restarts[s] += 1
                        self.actors[s] = self._start(s)
                    generation = self.restarts[s]
                    fut = self.actors[s].nearest.remote(ref)
            s_idx[s], s_dist[s] = i, d
            stats[s] = _accumulate(stats[s], st)
        out_i, out_d, ambiguous = _merge(s_idx, s_dist)
        if ambiguous.any():
            out_i[ambiguous], out_d[ambiguous] = self._settle(batch[ambiguous], s_idx[:, ambiguous],
                                                              s_dist[:, ambiguous])
            self.ambiguous += int(ambiguous.sum())
        idx[b0 : b0 + len(batch)] = out_i
        dist[b0 : b0 + len(batch)] = out_d

    def _settle(self, queries: np.ndarray, s_idx: np.ndarray, s_dist: np.ndarray):
        """Queries whose best float32 distance several shards share: the same certified search over
        the union of their tied candidates (sorted by global index, so its ties go to the lowest
        global index). Every candidate is a reference row, and each query's true nearest is among
        its own candidates, so the union's nearest is the global one."""
        out_i = np.empty(len(queries), dtype=np.int64)
        out_d = np.empty(len(queries), dtype=np.float32)
        tied = s_dist == s_dist.min(axis=0)[None, :]
        step = 256
        for a in range(0, len(queries), step):
            cols = slice(a, a + step)
            union = np.unique(s_idx[:, cols][tied[:, cols]])
            local = Manifold(self._store[union], device="cpu", working_bytes=self.working_bytes, **self._options)
            li, ld = local.nearest(queries[cols])
            out_i[cols] = union[li.cpu().numpy()]
            out_d[cols] = ld.cpu().numpy()
        return out_i, out_d

    # ---- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the shard actors (the manifold can no longer search)."""
        for actor in getattr(self, "actors", []):
            try:
                self._ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []

    def __enter__(self) -> ShardedManifold:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedManifold(size={self.size}, dim={self.dim}, shards={len(self.actors)}, device={self._shard_device})"


class _Died(Exception):
    def __init__(self, shard: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.shard, self.cause = shard, cause


_SUMMED = ("certified", "candidates", "brute_force")


def _accumulate(total, st):
    """A shard's SearchStats summed over the query batches it answered."""
    if st is None or total is None or not dataclasses.is_dataclass(st):
        return st if total is None else total
    names = {f.name for f in dataclasses.fields(st)}
    change = {k: getattr(total, k) + getattr(st, k) for k in (*_SUMMED, "queries") if k in names}
    return dataclasses.replace(total, **change)


def _combined(stats: list, n: int):
    """One SearchStats for the whole search: counts summed over the shards (each answered every query)."""
    present = [s for s in stats if s is not None and dataclasses.is_dataclass(s)]
    if not present:
        return None
    names = {f.name for f in dataclasses.fields(present[0])}
    change = {k: sum(getattr(s, k) for s in present) for k in _SUMMED if k in names}
    if "queries" in names:
        change["queries"] = n
    if "path" in names:
        change["path"] = "+".join(sorted({s.path for s in present}))
    return dataclasses.replace(present[0], **change)


# ---- embedding through Ray Data ----------------------------------------------------------------
class Embedder:
    """Ray Data's callable class: builds the space once per actor, embeds each batch."""

    def __init__(self, space_name: str, space_options: dict, device: str, batch_size: int, threads: int | None) -> None:
        from fingerprint_core import spaces

        if threads:
            torch.set_num_threads(int(threads))
        self.space = spaces.get(space_name, device=device, batch_size=batch_size, **space_options)

    def __call__(self, batch: dict) -> dict:
        images = np.ascontiguousarray(batch["data"])
        return {"emb": self.space.embed(images).cpu().numpy().astype(np.float32, copy=False)}


def ray_embed(space_name: str, space_options: dict | None, images, batch_size: int, *,
              concurrency: int | None = None, num_gpus: float | None = None, threads: int | None = None) -> torch.Tensor:
    """float32 N x D embeddings (CPU tensor, input order) of uint8 N x C x H x W images, computed by
    Ray Data ``map_batches`` over actors that each build the space once. Batches are the local
    engine's (rows a..a+batch_size from 0), so batch-dependent spaces give the same numbers.
    GPUs in the cluster: one actor per GPU (``num_gpus=1``); else CPU actors (``concurrency``
    default: one per two CPUs, at most the number of batches)."""
    require_ray()
    connect()
    import ray.data

    from fingerprint_core import spaces

    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"images must be uint8 N x C x H x W, got {x.dtype} {tuple(x.shape)}")
    batch_size = max(1, int(batch_size))
    n = len(x)
    if n == 0:
        space = spaces.get(space_name, device="cpu", **(space_options or {}))
        return torch.empty((0, space.dim(tuple(x.shape[1:]))), dtype=torch.float32)
    cpus, gpus = _resources()
    if num_gpus is None:
        num_gpus = 1.0 if gpus else 0.0
    n_batches = -(-n // batch_size)
    if concurrency is None:
        pool = int(gpus) if num_gpus else max(1, int(cpus // 2))
        concurrency = max(1, min(n_batches, pool))
    device = "cuda" if num_gpus else "cpu"
    threads = threads or (None if num_gpus else max(1, int(cpus // concurrency)))
    ctx = ray.data.DataContext.get_current()
    keep = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order = True  # output rows in input order
    ctx.enable_progress_bars = False
    try:
        ds = ray.data.from_numpy([np.ascontiguousarray(x[a : a + batch_size]) for a in range(0, n, batch_size)])
        ds = ds.map_batches(Embedder, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=int(concurrency)),
                            fn_constructor_kwargs={"space_name": space_name, "space_options": dict(space_options or {}),
                                                   "device": device, "batch_size": batch_size, "threads": threads},
                            num_cpus=0 if num_gpus else 1, num_gpus=num_gpus or None)
        parts = [b["emb"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = keep
    out = np.concatenate(parts) if parts else np.empty((0, 0), np.float32)
    if len(out) != n:
        raise RuntimeError(f"Ray Data returned {len(out)} embeddings for {n} images")
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


class RaySpace:
    """A space whose ``embed`` runs through ``ray_embed``; every other attribute is the local
    space's (name, info, dim, identity, preprocessing, batch_size), so workspace keys and entries
    do not change with the engine."""

    def __init__(self, space, space_options: dict | None = None, *, concurrency: int | None = None,
                 num_gpus: float | None = None) -> None:
        object.__setattr__(self, "_space", space)
        object.__setattr__(self, "_options", dict(space_options or {}))
        object.__setattr__(self, "_ray_kw", {"concurrency": concurrency, "num_gpus": num_gpus})

    def embed(self, images) -> torch.Tensor:
        emb = ray_embed(self._space.name, self._options, images, self._space.batch_size, **self._ray_kw)
        return emb.to(self._space.device)

    def __getattr__(self, name):
        return getattr(self._space, name)

    def __setattr__(self, name, value):  # e.g. the pipeline's batch_size cap
        setattr(self._space, name, value)

    def __repr__(self) -> str:
        return f"RaySpace({self._space!r})"


def ray_space(space, space_options: dict | None = None, *, pixel_exact_local: bool = True, **kw):
    """The space to hand the pipeline under the Ray engine: a RaySpace, or the space itself for a
    pixel-exact one when ``pixel_exact_local`` (its embedding is code / 255, cheaper than shipping)."""
    if pixel_exact_local and space.info.pixel_exact:
        return space
    return RaySpace(space, space_options, **kw)
