"""From a GM dataset to a workspace: split the real set, embed, search, store artifacts.

Incremental by construction: every entry is named by the hash of what made it (input content,
split, space identity, algorithm version), so a re-run finds it and computes nothing, and a new
model folder computes only that model. An entry counts as reused only when its files verify; an
intact entry on disk that the manifest does not name (a run interrupted before its commit) is
adopted by its name. The manifest is committed after each model; the run's last commit removes
the entries it no longer names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fingerprint_core import artifacts, datasets, spaces
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


def split_real(images: np.ndarray, sources: list[str], *, holdout: float, seed: int, content_key: str) -> RealSet:
    """Seeded split of the real images into reference and held-out (DESIGN.md section 4)."""
    n = len(images)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout} must be between 0 and 1")
    n_hold = max(1, int(round(n * holdout))) if n > 1 else 0
    perm = np.random.default_rng(seed).permutation(n)
    held, ref = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    if len(ref) == 0:
        raise datasets.DatasetError("the real set needs at least two images (one reference, one held out)")
    table = pd.DataFrame({"file": sources, "split": "reference"})
    table.loc[held, "split"] = "heldout"
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
) -> Report:
    """Compute every model's fingerprints in the given spaces into a workspace (incremental)."""
    progress = progress or Progress()
    ds = datasets.open_dataset(data_root, require_real=real is None)
    if REAL in ds.model_names():
        raise datasets.DatasetError(f"models/{REAL}: the name {REAL!r} is reserved for the held-out real images; "
                                    "rename the folder and its row")
    ws = Workspace.open_or_create(workspace)
    report = Report(ws.path, warnings=list(ds.warnings))
    space_objs = [spaces.get(s, device=device, batch_size=batch_size) for s in space_names]
    with ws.writing():  # reloads the manifest under the lock: nothing another writer committed is lost
        if real is None:
            real = _read_real(ws, ds, holdout=holdout, seed=seed, progress=progress, report=report)
        shape = tuple(int(v) for v in real.reference.shape[1:])
        _store_real(ws, real, report)
        ws.manifest["config"] = {
            "data_root": str(Path(data_root).resolve()),
            "spaces": [s.name for s in space_objs],
            "preprocessing": {s.name: s.preprocessing() for s in space_objs},
            "holdout_fraction": holdout,
            "split_seed": seed,
            "image_shape": list(shape),
            "algorithm": ALGORITHM,
            "real_origin": real.origin,
        }
        _store_design(ws, ds.design)
        _store_quality(ws, ds.root / "quality.csv")
        manifolds = {s.name: _manifold(ws, s, real, device, progress) for s in space_objs}
        ws.commit()

        models = ds.model_names()
        wanted = set(models) | {REAL}
        for gone in [m for m in ws.manifest["models"] if m not in wanted]:
            del ws.manifest["models"][gone]  # a folder removed from the dataset
        for name in [REAL, *models]:
            _fingerprint_model(ws, ds, name, real, shape, space_objs, manifolds, progress, report)
            ws.commit()
        ws.commit(collect=COLLECTS)
    return report


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
    real = split_real(imgs.images, imgs.sources, holdout=holdout, seed=seed, content_key=content)
    real.bad_files = [{"file": b.file, "reason": b.reason} for b in imgs.bad_files]
    real.warnings = list(imgs.warnings)
    return real


def _store_real(ws: Workspace, real: RealSet, report: Report) -> None:
    current = ws.manifest.get("real") or {}
    if current.get("key") == real.key and ws.intact(current.get("dir")):
        return
    rel = ws.write_entry(
        f"real-{real.key}",
        {"reference.npy": real.reference, "heldout.npy": real.heldout},
        {"sources.parquet": real.sources},
        meta={"bad_files": real.bad_files, "warnings": real.warnings},
    )
    ws.manifest["real"] = {"key": real.key, "dir": rel, "n_reference": len(real.reference), "n_heldout": len(real.heldout)}
    if current.get("key") != real.key:  # a new real set changes every nearest neighbour: drop the old ones
        ws.manifest["spaces"] = {}
        for e in ws.manifest.get("models", {}).values():
            e["spaces"] = {}


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


def _manifold(ws: Workspace, space: spaces.Space, real: RealSet, device: str, progress: Progress) -> Manifold:
    """The manifold estimate in one space; non-pixel reference embeddings are cached on disk."""
    if space.info.pixel_exact:  # the stored reference images are the embedding, exactly
        return Manifold(ws.reference_images(), device=device)
    key = key_of(real.key, space.identity())
    rel = f"spaces/{space.name}-{key}"
    if not ws.intact(rel):  # else named by the manifest, or finished by a run that stopped before its commit
        bar = progress.task(f"embedding the reference set ({space.name})", len(real.reference))
        parts = []
        for a in range(0, len(real.reference), space.batch_size):
            parts.append(space.embed(real.reference[a : a + space.batch_size]).cpu().numpy())
            bar.update(len(parts[-1]))
        bar.close()
        emb = np.concatenate(parts) if parts else np.zeros((0, space.dim(real.reference.shape[1:])), np.float32)
        ws.write_entry(rel, {"reference.npy": emb})
    ws.manifest["spaces"][space.name] = {"key": key, "dir": rel, "identity": space.identity(),
                                         **({"weights": space.source()} if space.source() else {})}
    return Manifold(ws.space_reference(space.name), device=device)


def _fingerprint_model(ws, ds, name, real, shape, space_objs, manifolds, progress, report) -> None:
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
        key = key_of(images_key, real.key, space.identity(), ALGORITHM)
        rel = f"models/{name}/{space.name}-{key}"
        if ws.intact(rel):  # verified; named by the manifest or left by an interrupted run
            entry["spaces"][space.name] = {"key": key, "dir": rel}
            report.reused.append(f"{name}/{space.name}")
            continue
        bar = progress.task(f"{name} · {space.name}", len(images))
        parts = []
        for a in range(0, len(images), space.batch_size):
            batch = np.asarray(images[a : a + space.batch_size])
            parts.append(artifacts.project(space, batch, manifolds[space.name]))
            bar.update(len(batch))
        bar.close()
        if parts:
            nearest = torch.cat([p.nearest for p in parts]).cpu().numpy()
            distance = torch.cat([p.distance for p in parts]).cpu().numpy()
            arts = torch.cat([p.artifacts for p in parts]).cpu().numpy().astype(np.float16)
        else:
            nearest, distance = np.zeros(0, np.int64), np.zeros(0, np.float32)
            arts = np.zeros((0, space.dim(shape)), np.float16)
        rel = ws.write_entry(
            rel,
            {"nearest.npy": nearest, "distance.npy": distance, "artifacts.npy": arts},
        )
        entry["spaces"][space.name] = {"key": key, "dir": rel}
        report.computed.append(f"{name}/{space.name}")
