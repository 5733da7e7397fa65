"""The on-disk store of everything computed: a folder the core writes and the app reads.

Layout (schema 1; docs/workspace.md explains every key and choice)::

    WS/workspace.json                 manifest: config, versions, content hashes, entries (the commit point)
    WS/design.parquet                 design table: models.csv rows plus the "real" (held-out) row
    WS/real-<key>/reference.npy       uint8 N x C x H x W, the manifold estimate (opened with mmap)
    WS/real-<key>/heldout.npy         uint8, held-out real images (the "real" class, the real control)
    WS/real-<key>/sources.parquet     source file of every real image and its split
    WS/spaces/<space>-<key>/reference.npy    float32 N x D reference embeddings (not for rgb: pixels are exact)
    WS/models/<name>/images-<key>/images.npy  uint8 samples, converted to the real set's shape
    WS/models/<name>/images-<key>/sources.parquet
    WS/models/<name>/<space>-<key>/nearest.npy    int64 index into the reference set
    WS/models/<name>/<space>-<key>/distance.npy   float32 squared L2 distance
    WS/models/<name>/<space>-<key>/artifacts.npy  float16 N x D (for rgb, code differences / 255:
                                                  float16 keeps round(a * 255) exact)

Every entry is a directory named by the hash of everything that made it, written under a
temporary name and renamed into place; workspace.json is replaced atomically afterwards and is
the only thing readers trust. A crash at any point leaves the previous manifest, and every file it
names, intact. Directories no manifest names are removed on the next commit.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
MANIFEST = "workspace.json"
REAL = "real"  # the held-out real images, treated as one more "model" everywhere downstream


class WorkspaceError(ValueError):
    """A workspace that is missing, unreadable or from an incompatible schema."""


def key_of(*parts: object) -> str:
    """A short, stable hash of JSON-able parts (names an entry by what made it)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of what produced the numbers."""
    import torch

    from fingerprint_core import __version__

    return {
        "fingerprint_core": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file under a temporary name, flush it to disk, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Workspace:
    """A workspace folder: read what the manifest names; write entries atomically."""

    def __init__(self, path: str | os.PathLike, manifest: dict | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else {}

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> "Workspace":
        """Open an existing workspace (WorkspaceError if there is none or it is unreadable)."""
        p = Path(path)
        f = p / MANIFEST
        if not f.is_file():
            raise WorkspaceError(f"{p} is not a workspace (no {MANIFEST}); create one with `manifpt fingerprint`")
        try:
            manifest = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WorkspaceError(f"{f} cannot be read: {e}") from e
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise WorkspaceError(
                f"{f} has schema version {manifest.get('schema_version')!r}; this version reads {SCHEMA_VERSION}"
            )
        return cls(p, manifest)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike) -> "Workspace":
        """Open the workspace at path, or start an empty one there (written on first commit)."""
        p = Path(path)
        if (p / MANIFEST).is_file():
            return cls.open(p)
        if p.exists() and not p.is_dir():
            raise WorkspaceError(f"{p} exists and is not a folder")
        if p.is_dir() and any(p.iterdir()):
            raise WorkspaceError(f"{p} is a non-empty folder without {MANIFEST}; choose an empty or new folder")
        p.mkdir(parents=True, exist_ok=True)
        return cls(p, {"schema_version": SCHEMA_VERSION, "created": _now(), "models": {}, "spaces": {}})

    # ---- reading ---------------------------------------------------------------------------
    def _npy(self, rel: str, name: str) -> np.ndarray:
        return np.load(self.path / rel / name, mmap_mode="r", allow_pickle=False)

    @property
    def config(self) -> dict:
        return self.manifest.get("config", {})

    def space_names(self) -> list[str]:
        return list(self.config.get("spaces", []))

    def model_names(self, *, include_real: bool = False) -> list[str]:
        """Models with images in the workspace, in design-table order ("real" last if asked)."""
        names = [m for m in self.manifest.get("models", {}) if m != REAL]
        return names + ([REAL] if include_real and REAL in self.manifest.get("models", {}) else [])

    def design(self) -> pd.DataFrame:
        f = self.manifest.get("design")
        return pd.read_parquet(self.path / f) if f else pd.DataFrame(columns=["model"])

    def reference_images(self) -> np.ndarray:
        return self._npy(self.manifest["real"]["dir"], "reference.npy")

    def images(self, model: str) -> np.ndarray:
        """uint8 N x C x H x W samples of a model (the held-out real images for "real")."""
        return self._npy(self._model(model)["images"]["dir"], "images.npy")

    def sources(self, model: str) -> pd.DataFrame:
        return pd.read_parquet(self.path / self._model(model)["images"]["dir"] / "sources.parquet")

    def has(self, model: str, space: str) -> bool:
        return space in self.manifest.get("models", {}).get(model, {}).get("spaces", {})

    def nearest(self, model: str, space: str) -> np.ndarray:
        return self._npy(self._entry(model, space), "nearest.npy")

    def distance(self, model: str, space: str) -> np.ndarray:
        return self._npy(self._entry(model, space), "distance.npy")

    def artifacts(self, model: str, space: str) -> np.ndarray:
        """float16 N x D artifacts of a model in a space (memory-mapped)."""
        return self._npy(self._entry(model, space), "artifacts.npy")

    def space_reference(self, space: str) -> np.ndarray:
        """Reference embeddings of a learned or FREQ space (rgb: the uint8 reference images)."""
        if space == "rgb":
            return self.reference_images()
        return self._npy(self.manifest["spaces"][space]["dir"], "reference.npy")

    def quality(self) -> pd.DataFrame:
        """Per-model quality figures shipped with the dataset (e.g. the zoo's FID, precision, recall)."""
        f = self.manifest.get("quality")
        return pd.read_parquet(self.path / f) if f else pd.DataFrame(columns=["model"])

    def n_images(self, model: str) -> int:
        return int(self._model(model)["images"]["n"])

    def summary(self) -> pd.DataFrame:
        """The design table plus, per model, samples, skipped files and mean d^2 to the nearest real image per space."""
        table = self.design().astype(str)
        models = self.manifest.get("models", {})
        table["samples"] = [models.get(m, {}).get("images", {}).get("n", 0) for m in table["model"]]
        table["skipped files"] = [len(models.get(m, {}).get("bad_files", [])) for m in table["model"]]
        quality = self.quality()
        shown = [c for c in ("fid", "precision", "recall") if c in quality.columns]
        if shown:
            table = table.merge(quality[["model", *shown]], on="model", how="left")
        for space in self.space_names():
            table[f"mean d² {space}"] = [
                float(np.mean(self.distance(m, space), dtype=np.float64)) if self.has(m, space) and models[m]["images"]["n"] else np.nan
                for m in table["model"]
            ]
        return table

    def bad_files(self) -> pd.DataFrame:
        """Every input file that was skipped, with the model and the reason."""
        rows = [
            {"model": m, "file": b["file"], "reason": b["reason"]}
            for m, e in self.manifest.get("models", {}).items()
            for b in e.get("bad_files", [])
        ]
        return pd.DataFrame(rows, columns=["model", "file", "reason"])

    def _model(self, model: str) -> dict:
        try:
            return self.manifest["models"][model]
        except KeyError:
            raise KeyError(f"model {model!r} is not in workspace {self.path}") from None

    def _entry(self, model: str, space: str) -> str:
        try:
            return self._model(model)["spaces"][space]["dir"]
        except KeyError:
            raise KeyError(f"no {space} fingerprint for {model!r} in workspace {self.path}") from None

    # ---- writing ---------------------------------------------------------------------------
    def write_entry(
        self,
        rel: str,
        arrays: dict[str, np.ndarray],
        tables: dict[str, pd.DataFrame] | None = None,
        files: dict[str, bytes] | None = None,
    ) -> str:
        """Write arrays (.npy), tables (.parquet) and files as the directory rel, atomically; returns rel."""
        final = self.path / rel
        if final.is_dir():  # same key: the same content is already complete
            return rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            for name, arr in arrays.items():
                with open(tmp / name, "wb") as f:
                    np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
            for name, df in (tables or {}).items():
                df.to_parquet(tmp / name, index=False)
            for name, data in (files or {}).items():
                (tmp / name).write_bytes(data)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return rel

    def write_table(self, name: str, df: pd.DataFrame) -> str:
        """Write a parquet table under a content-named file, atomically; returns its name."""
        import io

        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        data = buf.getvalue()
        rel = f"{Path(name).stem}-{hashlib.sha256(data).hexdigest()[:12]}.parquet"
        if not (self.path / rel).exists():
            atomic_write_bytes(self.path / rel, data)
        return rel

    @contextlib.contextmanager
    def writing(self, *, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the workspace's writer lock (one writer at a time; readers never wait), waiting up to
        wait_s seconds for another writer to finish."""
        self.path.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        with open(self.path / ".lock", "w") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise WorkspaceError(f"workspace {self.path} is being written by another run "
                                             "(fingerprint, train or analyze); try again when it has finished") from None
                    time.sleep(0.5)
            yield

    def busy(self) -> bool:
        """Whether another run holds the writer lock right now."""
        try:
            with self.writing():
                return False
        except WorkspaceError:
            return True

    def commit(self) -> None:
        """Make the manifest the workspace's state (atomic), then drop what it no longer names."""
        self.manifest["updated"] = _now()
        self.manifest["versions"] = versions()
        self.manifest["schema_version"] = SCHEMA_VERSION
        atomic_write_bytes(self.path / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=False).encode())
        self._collect_garbage()

    def _named(self) -> set[str]:
        m = self.manifest
        named = {MANIFEST, ".lock"}
        for table in ("design", "quality"):
            if m.get(table):
                named.add(m[table])
        if m.get("real"):
            named.add(m["real"]["dir"])
        if m.get("analysis"):
            named.add(m["analysis"]["dir"])
        if m.get("attribution"):  # written by fingerprint_core.attribution.train
            if m["attribution"].get("split"):
                named.add(m["attribution"]["split"])
            named |= {a["dir"] for a in m["attribution"].get("attributors", {}).values()}
        named |= {s["dir"] for s in m.get("spaces", {}).values()}
        for e in m.get("models", {}).values():
            named.add(e["images"]["dir"])
            named |= {s["dir"] for s in e.get("spaces", {}).values()}
        return named

    def _collect_garbage(self) -> None:
        named = self._named()
        ancestors = {str(q) for n in named for q in Path(n).parents if str(q) != "."}

        def sweep(folder: Path) -> None:
            for p in folder.iterdir():
                rel = p.relative_to(self.path).as_posix()
                if rel in named:
                    continue
                if rel in ancestors and p.is_dir():
                    sweep(p)
                elif p.is_dir():  # an old entry or an interrupted write: nothing names it
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

        sweep(self.path)


def default_root() -> Path:
    """Where workspaces live unless told otherwise: $MANIFPT_WORKSPACE, else the user cache."""
    env = os.environ.get("MANIFPT_WORKSPACE")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "manifpt" / "workspaces"


def discover(root: str | os.PathLike) -> list[Path]:
    """Workspaces directly under root (folders with a workspace.json), sorted by name."""
    r = Path(root)
    if not r.is_dir():
        return []
    found = [p for p in r.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
    if (r / MANIFEST).is_file():
        found.append(r)
    return sorted(found, key=lambda p: p.name)
