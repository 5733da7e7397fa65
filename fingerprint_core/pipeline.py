"""From a GM dataset to a workspace: split the real set, embed, search, store artifacts.

Incremental by construction: every entry is named by the hash of what made it (input content,
split, space identity, algorithm version), so a re-run finds it and computes nothing, and a new
model folder computes only that model. An entry counts as reused only when its files verify; an
intact entry on disk that the manifest does not name (a run interrupted before its commit) is
adopted by its name. The manifest is committed after each model; the run's last commit removes
the entries it no longer names.

Memory follows the working-set setting (fingerprint_core.memory), not the number or the size of
the images: the reference set is embedded, searched and every entry written in chunks of rows,
straight into the entry's files, and reference stores are read back memory-mapped. What is held
whole is the uint8 images of the set being read (the real set once, then one model at a time).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fingerprint_core import artifacts, datasets, memory, spaces
from fingerprint_core.manifold import Manifold
from fingerprint_core.workspace import REAL, Workspace, key_of

ALGORITHM = "exact-l2-v1"  # bump when the numbers an entry holds would change
DEFAULT_SPACES = ("rgb", "freq")
COLLECTS = ("real-", "spaces", "models", "design-", "quality-")  # what a finished run's last commit may clean up


class Progress:
    """A progress sink: the CLI plugs tqdm in, the app st.progress; the default says nothing."""

    def task(self, desc: str, total: int) -> Progress:
        return self

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def log(self, message: str) -> None:
        pass


@dataclass
class RealSet:
    """The real images, split into the manifold estimate (reference) and the held-out real class."""

    reference: np.ndarray  # uint8 N x C x H x W
    heldout: np.ndarray
    sources: pd.DataFrame  # file, split
    key: str  # hash of the content and the split
    origin: str
    bad_files: list[dict] = field(default_factory=list)  # skipped real files, kept with the stored set
    warnings: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What a run did: entries computed and reused, skipped files, warnings."""

    workspace: Path
    computed: list[str] = field(default_factory=list)  # "model/space"
    reused: list[str] = field(default_factory=list)
    bad_files: list[datasets.BadFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _split_indices(n: int, sources: list[str], *, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(reference rows, held-out rows, sources table) of the seeded split of n real images."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout} must be between 0 and 1")
    n_hold = max(1, int(round(n * holdout))) if n > 1 else 0
    perm = np.random.default_rng(seed).permutation(n)
    held, ref = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    if len(ref) == 0:
        raise datasets.DatasetError("the real set needs at least two images (one reference, one held out)")
    table = pd.DataFrame({"file": sources, "split": "reference"})
    table.loc[held, "split"] = "heldout"
    return ref, held, table


def split_real(images: np.ndarray, sources: list[str], *, holdout: float, seed: int, content_key: str) -> RealSet:
    """Seeded split of the real images into reference and held-out (DESIGN.md section 4)."""
    ref, held, table = _split_indices(len(images), sources, holdout=holdout, seed=seed)
    return RealSet(images[ref], images[held], table, key_of(content_key, holdout, seed), "folder")


def fixed_real(reference: np.ndarray, heldout: np.ndarray, *, key: str, origin: str) -> RealSet:
    """A real set that comes already split (the demo: Fashion-MNIST train and test)."""
    sources = [f"{origin}:reference[{i}]" for i in range(len(reference))] + [f"{origin}:heldout[{i}]" for i in range(len(heldout))]
    table = pd.DataFrame({"file": sources, "split": ["reference"] * len(reference) + ["heldout"] * len(heldout)})
    return RealSet(reference, heldout, table, key, origin)


def fingerprint(
    data_root: str | os.PathLike,
    workspace: str | os.PathLike,
    *,
    space_names: tuple[str, ...] | list[str] = DEFAULT_SPACES,
    device: str = "auto",
    batch_size: int = 4096,
    holdout: float = 0.1,
    seed: int = 0,
    real: RealSet | None = None,
    progress: Progress | None = None,
    space_options: dict[str, dict] | None = None,
    engine: Engine | None = None,
) -> Report:
    """Compute every model's fingerprints in the given spaces into a workspace (incremental).

    engine: where the embedding and the nearest-neighbour search run (local by default; Ray across
    reference shards; or an approximate index). The numbers of the exact engines are identical.
    """
    progress = progress or Progress()
    engine = engine or Engine()
    ds = datasets.open_dataset(data_root, require_real=real is None)
    if REAL in ds.model_names():
        raise datasets.DatasetError(f"models/{REAL}: the name {REAL!r} is reserved for the held-out real images; "
                                    "rename the folder and its row")
    ws = Workspace.open_or_create(workspace)
    report = Report(ws.path, warnings=list(ds.warnings))
    options = space_options or {}  # per space, e.g. {"sl": {"weights": path}}
    space_objs = [spaces.get(s, device=device, batch_size=batch_size, **options.get(s, {})) for s in space_names]
    space_objs = [engine.space(s, options.get(s.name, {})) for s in space_objs]
    with ws.writing():  # reloads the manifest under the lock: nothing another writer committed is lost
        if real is None:
            real = _read_real(ws, ds, holdout=holdout, seed=seed, progress=progress, report=report)
        shape = tuple(int(v) for v in real.reference.shape[1:])
        real = _store_real(ws, real, report)  # from here on read back memory-mapped
        for s in space_objs:  # an embedding batch never exceeds its share of the working set
            s.batch_size = max(1, min(s.batch_size, artifacts.embed_rows(s, shape)))
        ws.manifest["config"] = {
            "data_root": str(Path(data_root).resolve()),
            "spaces": [s.name for s in space_objs],
            "preprocessing": {s.name: s.preprocessing() for s in space_objs},
            "holdout_fraction": holdout,
            "split_seed": seed,
            "image_shape": list(shape),
            "algorithm": ALGORITHM,
            "real_origin": real.origin,
            "engine": engine.name,
        }
        _store_design(ws, ds.design)
        _store_quality(ws, ds.root / "quality.csv")
        manifolds: dict = {}
        try:
            for s in space_objs:
                manifolds[s.name] = _manifold(ws, s, real, device, progress, engine)
            search = {n: m.config() for n, m in manifolds.items() if hasattr(m, "config")}
            if search:  # approximate results are marked, per space, so no number is mistaken for exact
                ws.manifest["config"]["search"] = search
            ws.commit()

            models = ds.model_names()
            wanted = set(models) | {REAL}
            for gone in [m for m in ws.manifest["models"] if m not in wanted]:
                del ws.manifest["models"][gone]  # a folder removed from the dataset
            for name in [REAL, *models]:
                _fingerprint_model(ws, ds, name, real, shape, space_objs, manifolds, progress, report, engine)
                ws.commit()
            ws.commit(collect=COLLECTS)
        finally:
            for m in manifolds.values():
                getattr(m, "close", lambda: None)()
            engine.close()
    return report


@dataclass(frozen=True)
class Engine:
    """Where a fingerprint run embeds and searches.

    name: "local" (this process), "ray" (reference shards in Ray actors, embedding by Ray Data;
    `address` joins a cluster, else a local instance starts), or "approximate" (a faiss index
    re-ranked exactly; its recall@1 against the exact search is measured and recorded).
    """

    name: str = "local"
    address: str | None = None
    shards: int | None = None
    index: str = "ivf"

    def __post_init__(self) -> None:
        if self.name not in ("local", "ray", "approximate"):
            raise ValueError(f"engine={self.name!r}: expected 'local', 'ray' or 'approximate'")
        if self.shards is not None and self.shards < 1:
            raise ValueError(f"shards={self.shards} must be at least 1")
        if self.name == "ray":  # fail before any work when Ray is not installed
            from fingerprint_core import ray_engine

            ray_engine.require_ray()

    def _connect(self) -> None:
        """Join (or start) Ray for this run; remember whether this engine started the instance."""
        from fingerprint_core import ray_engine

        fresh = not ray_engine.require_ray().is_initialized()
        ray_engine.connect(self.address)
        if fresh and self.address is None:
            object.__setattr__(self, "_started", True)  # ours to stop at the end of the run

    def space(self, space: spaces.Space, options: dict) -> spaces.Space:
        if self.name != "ray":
            return space
        from fingerprint_core import ray_engine

        self._connect()
        return ray_engine.ray_space(space, options)

    def search(self, reference, device: str, queries_for_recall=None):
        """The nearest-neighbour search over a reference store."""
        if self.name == "ray":
            from fingerprint_core.ray_engine import ShardedManifold

            self._connect()
            return ShardedManifold(reference, shards=self.shards or 2, device=device)
        exact = Manifold(reference, device=device)
        if self.name == "local":
            return exact
        from fingerprint_core.approx import ApproxManifold

        approx = ApproxManifold(reference, index=self.index)
        if queries_for_recall is not None and len(queries_for_recall):
            approx.measure_recall(queries_for_recall, exact)
        return approx

    def key(self) -> tuple:
        """What of the engine goes into entry keys: only an approximate search changes the numbers."""
        return ("approximate", self.index) if self.name == "approximate" else ()

    def close(self) -> None:
        """Stop the local Ray instance this engine started (a cluster it joined, or one already up, stays)."""
        if getattr(self, "_started", False):
            from fingerprint_core import ray_engine

            ray_engine.shutdown()
            object.__setattr__(self, "_started", False)  # the same engine may run again (it reconnects)


def _read_real(ws: Workspace, ds: datasets.GMDataset, *, holdout: float, seed: int, progress: Progress,
               report: Report) -> RealSet:
    real_dir = ds.real_dir()
    content = datasets.content_hash(real_dir)
    key = key_of(content, holdout, seed)
    rel = f"real-{key}"
    meta = ws.verified(rel)
    if meta is not None:  # the same real set and split, stored before: no need to decode it again
        report.bad_files += [datasets.BadFile(b["file"], b["reason"]) for b in meta.get("bad_files", [])]
        report.warnings += meta.get("warnings", [])
        return RealSet(ws._npy(rel, "reference.npy"), ws._npy(rel, "heldout.npy"),
                       ws._parquet(f"{rel}/sources.parquet"), key, "folder")
    progress.log(f"reading real images from {real_dir}")
    imgs = datasets.read_images(real_dir, root=ds.root)
    report.bad_files += imgs.bad_files
    report.warnings += imgs.warnings
    if len(imgs.images) < 2:
        raise datasets.DatasetError(f"{real_dir} holds {len(imgs.images)} usable images; at least 2 are needed")
    ref, held, table = _split_indices(len(imgs.images), imgs.sources, holdout=holdout, seed=seed)
    bad = [{"file": b.file, "reason": b.reason} for b in imgs.bad_files]
    # the split goes straight to disk, a chunk of rows at a time: no second copy of the images
    rows = memory.rows_per_chunk(int(np.prod(imgs.images.shape[1:])), 0.25)
    with ws.entry(rel, meta={"bad_files": bad, "warnings": list(imgs.warnings)}) as e:
        for name, idx in (("reference.npy", ref), ("heldout.npy", held)):
            out = e.array(name, (len(idx), *imgs.images.shape[1:]), np.uint8)
            for a in range(0, len(idx), rows):
                out.write(imgs.images[idx[a : a + rows]])
            e.close(name)
        e.table("sources.parquet", table)
    return RealSet(ws._npy(rel, "reference.npy"), ws._npy(rel, "heldout.npy"), table, key, "folder", bad,
                   list(imgs.warnings))


def _store_real(ws: Workspace, real: RealSet, report: Report) -> RealSet:
    """Record the real set in the manifest (writing it unless stored); returns it read back memory-mapped."""
    current = ws.manifest.get("real") or {}
    if current.get("key") != real.key or not ws.intact(current.get("dir")):
        rel = ws.write_entry(  # kept as it is when _read_real just wrote it
            f"real-{real.key}",
            {"reference.npy": real.reference, "heldout.npy": real.heldout},
            {"sources.parquet": real.sources},
            meta={"bad_files": real.bad_files, "warnings": real.warnings},
        )
        ws.manifest["real"] = {"key": real.key, "dir": rel, "n_reference": len(real.reference),
                               "n_heldout": len(real.heldout)}
        if current.get("key") != real.key:  # a new real set changes every nearest neighbour: drop the old ones
            ws.manifest["spaces"] = {}
            for e in ws.manifest.get("models", {}).values():
                e["spaces"] = {}
    rel = ws.manifest["real"]["dir"]
    return dataclasses.replace(real, reference=ws._npy(rel, "reference.npy"), heldout=ws._npy(rel, "heldout.npy"))


def _store_design(ws: Workspace, design: pd.DataFrame) -> None:
    real_row = {c: "" for c in design.columns}
    real_row.update({"model": REAL, "family": "real", "upsampling": "none", "loss": "none", "normalization": "none"})
    table = pd.concat([design, pd.DataFrame([real_row])], ignore_index=True)
    ws.manifest["design"] = ws.write_table("design", table.astype(str))


def _store_quality(ws: Workspace, path: Path) -> None:
    """An optional quality.csv beside models.csv (model, fid, precision, recall, ...): shown, never a factor."""
    if not path.is_file():
        ws.manifest.pop("quality", None)
        return
    table = pd.read_csv(path)
    if "model" not in table.columns:
        raise datasets.DatasetError(f"{path} has no column 'model'")
    ws.manifest["quality"] = ws.write_table("quality", table)


def _manifold(ws: Workspace, space: spaces.Space, real: RealSet, device: str, progress: Progress,
              engine: Engine) -> Manifold:
    """The manifold estimate in one space; non-pixel reference embeddings are cached on disk."""
    if space.info.pixel_exact:  # the stored reference images are the embedding, exactly
        progress.log(f"preparing the {space.name} search ({len(real.reference)} references)")
        return engine.search(ws.reference_images(), device, _recall_queries(real, space))
    key = key_of(real.key, space.identity())
    rel = f"spaces/{space.name}-{key}"
    if not ws.intact(rel):  # else named by the manifest, or finished by a run that stopped before its commit
        n, shape = len(real.reference), tuple(int(v) for v in real.reference.shape[1:])
        rows = artifacts.chunk_rows(space, shape)
        bar = progress.task(f"embedding the reference set ({space.name})", n)
        with ws.entry(rel) as e:  # embedded a chunk at a time, straight into the store
            out = e.array("reference.npy", (n, space.dim(shape)), np.float32)
            for a in range(0, n, rows):
                emb = space.embed(real.reference[a : a + rows]).cpu().numpy()
                out.write(emb.astype(np.float32, copy=False))
                bar.update(len(emb))
        bar.close()
    ws.manifest["spaces"][space.name] = {"key": key, "dir": rel, "identity": space.identity(),
                                         **({"weights": space.source()} if space.source() else {})}
    progress.log(f"preparing the {space.name} search ({len(real.reference)} references)")
    return engine.search(ws.space_reference(space.name), device, _recall_queries(real, space))


def _recall_queries(real: RealSet, space: spaces.Space, n: int = 200):
    """Queries an approximate index's recall@1 is measured on: the first held-out real images."""
    held = np.asarray(real.heldout[:n])
    return held if space.info.pixel_exact else space.embed(held).cpu().numpy()


def _fingerprint_model(ws, ds, name, real, shape, space_objs, manifolds, progress, report, engine=None) -> None:
    entry = ws.manifest["models"].get(name)
    if name == REAL:
        content = key_of("heldout", real.key)
    else:
        content = datasets.content_hash(ds.model_dir(name))
    images_key = key_of(content, shape)
    images_rel = f"models/{name}/images-{images_key}"
    meta = ws.verified(images_rel)  # None: not there or damaged, so the images are read anew
    if meta is not None and (not entry or entry["images"].get("key") != images_key):  # left by a run stopped before its commit
        entry = {"images": {"key": images_key, "dir": images_rel, "n": int(ws._npy(images_rel, "images.npy").shape[0])},
                 "bad_files": meta.get("bad_files", []), "warnings": meta.get("warnings", []), "spaces": {}}
        ws.manifest["models"][name] = entry
    if meta is None:
        if name == REAL:
            imgs = datasets.ImageSet(real.heldout, list(real.sources.loc[real.sources["split"] == "heldout", "file"]), [], [])
        else:
            progress.log(f"reading {name}")
            imgs = datasets.read_images(ds.model_dir(name), shape=shape, root=ds.root)
        bad = [{"file": b.file, "reason": b.reason} for b in imgs.bad_files]
        rel = ws.write_entry(
            images_rel,
            {"images.npy": imgs.images},
            {"sources.parquet": pd.DataFrame({"file": imgs.sources})},
            meta={"bad_files": bad, "warnings": list(imgs.warnings)},
        )
        entry = {
            "images": {"key": images_key, "dir": rel, "n": len(imgs.images)},
            "bad_files": bad,
            "warnings": list(imgs.warnings),
            "spaces": {},
        }
        ws.manifest["models"][name] = entry
    report.bad_files += [datasets.BadFile(b["file"], b["reason"]) for b in entry["bad_files"]]
    report.warnings += entry["warnings"]
    images = ws.images(name)
    for space in space_objs:
        key = key_of(images_key, real.key, space.identity(), ALGORITHM, *(engine.key() if engine else ()))
        rel = f"models/{name}/{space.name}-{key}"
        if ws.intact(rel):  # verified; named by the manifest or left by an interrupted run
            entry["spaces"][space.name] = {"key": key, "dir": rel}
            report.reused.append(f"{name}/{space.name}")
            continue
        bar = progress.task(f"{name} · {space.name}", len(images))
        _write_artifacts(ws, rel, space, images, shape, manifolds[space.name], bar)
        entry["spaces"][space.name] = {"key": key, "dir": rel}
        report.computed.append(f"{name}/{space.name}")


def _write_artifacts(ws: Workspace, rel: str, space: spaces.Space, images: np.ndarray, shape: tuple[int, ...],
                     manifold: Manifold, bar: Progress) -> None:
    """Search and artifacts of a model's images, a chunk at a time, each chunk written to the entry's
    files before the next one is computed (float16 artifacts; never the whole float32 array)."""
    n, rows = len(images), artifacts.chunk_rows(space, shape)
    with ws.entry(rel) as e:
        nearest = e.array("nearest.npy", (n,), np.int64)
        distance = e.array("distance.npy", (n,), np.float32)
        arts = e.array("artifacts.npy", (n, space.dim(shape)), np.float16)
        for a in range(0, n, rows):
            batch = np.asarray(images[a : a + rows])
            p = artifacts.project(space, batch, manifold, batch_size=rows)
            nearest.write(p.nearest.cpu().numpy().astype(np.int64, copy=False))
            distance.write(p.distance.cpu().numpy().astype(np.float32, copy=False))
            arts.write(p.artifacts.cpu().numpy().astype(np.float16))
            del p
            bar.update(len(batch))
    bar.close()
