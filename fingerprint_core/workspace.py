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
temporary name, holding an inventory of its files (.manifpt-entry: sizes and SHA-256) written last,
and renamed into place; workspace.json is replaced atomically afterwards and is the only thing
readers trust. A crash at any point leaves the previous manifest, and every file it names, intact;
an entry finished before the crash is found by its name and reused by the rerun. A finished run's
last commit removes the entry folders it wrote that the manifest no longer names, and nothing else:
never a file or folder without its inventory, never through a symbolic link.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import filelock
import numpy as np
import pandas as pd
import platformdirs

from fingerprint_core.fsio import (
    TMP_PATTERN,
    DurableFile,
    atomic_write,
    fsync_dir,
    is_inside,
    npy_header,
    sha256_file,
    tmp_name,
    write_durable,
)

SCHEMA_VERSION = 1
MANIFEST = "workspace.json"
REAL = "real"  # the held-out real images, treated as one more "model" everywhere downstream
INVENTORY = ".manifpt-entry"  # inside every entry folder: its files, sizes and hashes (written last)
MARK = ".manifpt-workspace"  # written first when a workspace is created: an unfinished first run is ours
LOCK = ".lock"
HASH_ON_REUSE = 1 << 20  # files up to this size are hashed before an entry counts as reused (cheap)
TABLE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*-[0-9a-f]{12}\.parquet$")  # what write_table names


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


STREAM_CHUNK_BYTES = 16 * 2**20  # rows of an in-memory array copied per write (np.save's buffer size)


class NpyStream:
    """One .npy file of an entry being written, filled in order by chunks of rows: the bytes np.save
    would write for the whole array (its header, then the rows in C order), hashed as they pass."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype) -> None:
        self.shape = tuple(int(v) for v in shape)
        self.dtype = np.dtype(dtype)
        if not self.shape:
            raise ValueError(f"{path.name}: a streamed array needs at least one dimension")
        if self.dtype.hasobject:
            raise ValueError(f"{path.name}: object arrays cannot be saved (nothing is pickled)")
        self.name = path.name
        self.rows = 0
        self._file = DurableFile(path)
        self._file.write(npy_header(self.shape, self.dtype))

    def write(self, chunk) -> None:
        """Append rows: an array of this stream's dtype shaped (k, *shape[1:])."""
        a = np.asarray(chunk)
        if a.dtype != self.dtype:
            raise TypeError(f"{self.name}: rows of dtype {a.dtype}, the array is {self.dtype}")
        if a.ndim != len(self.shape) or a.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.name}: rows of shape {a.shape}, the array is {self.shape}")
        if self.rows + len(a) > self.shape[0]:
            raise ValueError(f"{self.name}: {self.rows + len(a)} rows written, the array has {self.shape[0]}")
        self._file.write(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
        self.rows += len(a)

    def close(self) -> tuple[int, str]:
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.name}: {self.rows} of {self.shape[0]} rows were written")
        return self._file.close()

    def abort(self) -> None:
        self._file.abort()


class EntryWriter:
    """The files of one entry folder being written (see Workspace.entry); records their inventory."""

    def __init__(self, folder: Path, meta: dict | None = None) -> None:
        self.folder = folder
        self.meta = dict(meta or {})
        self.inventory: dict[str, dict | None] = {}  # in the order the files were begun
        self._streams: dict[str, NpyStream] = {}

    def _claim(self, name: str) -> Path:
        if name in self.inventory or name == INVENTORY or not name or "/" in name or name.startswith("."):
            raise ValueError(f"{self.folder.name}: cannot write a file named {name!r} in an entry")
        self.inventory[name] = None
        return self.folder / name

    def array(self, name: str, shape: tuple[int, ...], dtype) -> NpyStream:
        """Begin a .npy file of the given shape and dtype; write its rows in order, then (optionally) close it."""
        stream = NpyStream(self._claim(name), shape, dtype)
        self._streams[name] = stream
        return stream

    def close(self, name: str) -> None:
        size, digest = self._streams.pop(name).close()
        self.inventory[name] = {"size": size, "sha256": digest}

    def put_array(self, name: str, arr) -> None:
        """A whole array as a .npy file (C order, like np.save of np.ascontiguousarray(arr)), in chunks."""
        a = np.asarray(arr)
        if a.ndim == 0:
            a = a.reshape(1)
        stream = self.array(name, a.shape, a.dtype)
        step = max(1, STREAM_CHUNK_BYTES // max(1, a[:1].nbytes))
        for i in range(0, len(a), step):
            stream.write(a[i : i + step])
        self.close(name)

    def table(self, name: str, df: pd.DataFrame) -> None:
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        self.file(name, buf.getvalue())

    def file(self, name: str, data) -> None:
        """A file from bytes, or from a function that writes into it (see fsio.write_durable)."""
        size, digest = write_durable(self._claim(name), data)
        self.inventory[name] = {"size": size, "sha256": digest}

    def finish(self) -> None:
        """Close every stream still open (each must have all its rows)."""
        for name in list(self._streams):
            self.close(name)

    def abort(self) -> None:
        for stream in self._streams.values():
            stream.abort()
        self._streams.clear()


class Workspace:
    """A workspace folder: read what the manifest names; write entries atomically."""

    def __init__(self, path: str | os.PathLike, manifest: dict | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else {}

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike) -> Workspace:
        """Open an existing workspace (WorkspaceError naming the file and the reason if it is unusable)."""
        p = Path(path)
        if not (p / MANIFEST).is_file():
            if (p / MARK).is_file():
                raise WorkspaceError(f"{p} holds a first run that stopped before its first save (no {MANIFEST} yet); "
                                     "run the same `manifpt fingerprint` (or `manifpt demo`) again to resume it")
            raise WorkspaceError(f"{p} is not a workspace (no {MANIFEST}); create one with `manifpt fingerprint`")
        return cls(p, read_manifest(p))

    @classmethod
    def open_or_create(cls, path: str | os.PathLike) -> Workspace:
        """Open the workspace at path, resume one whose first run was interrupted, or start an empty one there."""
        p = Path(path)
        if (p / MANIFEST).is_file():
            return cls.open(p)
        if p.exists() and not p.is_dir():
            raise WorkspaceError(f"{p} exists and is not a folder")
        if p.is_dir() and any(p.iterdir()) and not (p / MARK).is_file():
            raise WorkspaceError(f"{p} is a non-empty folder without {MANIFEST}; choose an empty or new folder")
        p.mkdir(parents=True, exist_ok=True)
        if not (p / MARK).is_file():
            atomic_write(p / MARK, json.dumps({"created": _now(), "schema_version": SCHEMA_VERSION}).encode())
        return cls(p, _empty_manifest())

    # ---- reading ---------------------------------------------------------------------------
    def file(self, rel: str, name: str = "") -> Path:
        """The path of a file the manifest names (WorkspaceError if the name would leave the workspace)."""
        if not _is_rel(rel):
            raise WorkspaceError(f"{self.path / MANIFEST} names {rel!r}, which is outside the workspace; "
                                 f"run `manifpt check {self.path} --repair`")
        return self.path / rel / name if name else self.path / rel

    def _npy(self, rel: str, name: str) -> np.ndarray:
        return load_npy(self.file(rel, name), self.path)

    def _parquet(self, rel: str) -> pd.DataFrame:
        return load_parquet(self.file(rel), self.path)

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
        return self._parquet(f) if f else pd.DataFrame(columns=["model"])

    def reference_images(self) -> np.ndarray:
        return self._npy(self.manifest["real"]["dir"], "reference.npy")

    def images(self, model: str) -> np.ndarray:
        """uint8 N x C x H x W samples of a model (the held-out real images for "real")."""
        return self._npy(self._model(model)["images"]["dir"], "images.npy")

    def sources(self, model: str) -> pd.DataFrame:
        return self._parquet(self._model(model)["images"]["dir"] + "/sources.parquet")

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
        """Reference embeddings of a space (a pixel-exact one, RGB: the uint8 reference images)."""
        entry = self.manifest.get("spaces", {}).get(space)
        if entry is None:  # pixel-exact spaces store no embeddings of their own
            from fingerprint_core import spaces

            try:
                exact = spaces.info(space).pixel_exact
            except ValueError as err:
                raise WorkspaceError(f"{self.path}: the space {space!r} this workspace lists is not available here ({err})") from None
            if not exact:
                raise WorkspaceError(f"{self.path / MANIFEST}: no reference embeddings recorded for the space {space!r}; "
                                     "run `manifpt check` on the workspace")
            return self.reference_images()
        return self._npy(entry["dir"], "reference.npy")

    def quality(self) -> pd.DataFrame:
        """Per-model quality figures shipped with the dataset (e.g. the zoo's FID, precision, recall)."""
        f = self.manifest.get("quality")
        return self._parquet(f) if f else pd.DataFrame(columns=["model"])

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

    # ---- verifying -------------------------------------------------------------------------
    def damage(self, rel: str, *, full: bool = False) -> str | None:
        """Why the entry folder rel cannot be trusted (None when intact): files present, sizes, and the
        SHA-256 of small files (of every file when full)."""
        return self._verify(rel, full=full)[0]

    def verified(self, rel: str | None) -> dict | None:
        """The metadata an intact entry was written with (write_entry's meta, {} for none), or None when rel
        names no entry folder that is there and verifies (see damage): one read of its inventory for both."""
        if not rel:
            return None
        reason, inventory = self._verify(rel)
        return None if reason else inventory.get("meta", {})

    def intact(self, rel: str | None) -> bool:
        """Whether rel names an entry folder that is there and verifies (see damage)."""
        return self.verified(rel) is not None

    def _verify(self, rel: str, *, full: bool = False) -> tuple[str | None, dict]:
        """(why the entry cannot be trusted or None, its inventory)."""
        try:
            folder = self.file(rel)
        except WorkspaceError as e:
            return str(e), {}
        if not folder.is_dir():
            return f"{folder} is missing", {}
        inv = folder / INVENTORY
        try:
            inventory = json.loads(inv.read_text())
            files = inventory["files"]
        except FileNotFoundError:  # an entry of an older version: unverifiable
            return (None if any(folder.iterdir()) else f"{folder} is empty"), {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{inv} cannot be read ({e})", {}
        for name, want in files.items():
            f = folder / name
            if not f.is_file():
                return f"{f} is missing", inventory
            size = f.stat().st_size
            if size != want["size"]:
                return f"{f} has {size} bytes, {want['size']} were written", inventory
            if (full or size <= HASH_ON_REUSE) and sha256_file(f) != want["sha256"]:
                return f"{f} has changed since it was written (SHA-256 differs)", inventory
        return None, inventory

    # ---- writing ---------------------------------------------------------------------------
    def write_entry(
        self,
        rel: str,
        arrays: dict[str, np.ndarray],
        tables: dict[str, pd.DataFrame] | None = None,
        files: dict[str, bytes] | None = None,
        meta: dict | None = None,
    ) -> str:
        """Write arrays (.npy), tables (.parquet) and files as the entry folder rel, atomically, with its
        inventory; returns rel. An intact entry of the same name (the same key) is kept as it is.
        Arrays (memory-mapped ones too) are copied to disk in chunks of rows; entries too large to
        hold are written with entry() instead."""
        final = self.file(rel)
        if final.is_dir():
            if self.damage(rel) is None:
                return rel
            self._discard(final)  # a damaged entry of ours: written anew below
        with self.entry(rel, meta=meta) as e:
            for name, arr in arrays.items():
                e.put_array(name, arr)
            for name, df in (tables or {}).items():
                e.table(name, df)
            for name, data in (files or {}).items():
                e.file(name, data)
        return rel

    @contextlib.contextmanager
    def entry(self, rel: str, *, meta: dict | None = None) -> Iterator[EntryWriter]:
        """Write the entry folder rel piece by piece: .npy arrays streamed in chunks of rows
        (EntryWriter.array), tables and files. The folder is written under a temporary name, every file
        fsynced, its inventory (sizes, SHA-256, meta) written last, then renamed into place; an
        exception (or a kill) leaves only the temporary folder, which the clean-up removes. The caller
        checks intact(rel) first; an intact entry of that name found at the end is kept as it is."""
        final = self.file(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_name(final)
        tmp.mkdir()
        writer = EntryWriter(tmp, meta)
        try:
            yield writer
            writer.finish()
            write_durable(tmp / INVENTORY, json.dumps({"files": writer.inventory, "written": _now(),
                                                       "meta": writer.meta}).encode())
            fsync_dir(tmp)
            keep = final.is_dir() and self.damage(rel) is None
            if keep:
                shutil.rmtree(tmp)
            else:
                if final.is_dir():
                    self._discard(final)  # a damaged entry of ours: replaced
                os.rename(tmp, final)
        except BaseException:
            writer.abort()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(final.parent)

    def write_table(self, name: str, df: pd.DataFrame) -> str:
        """Write a parquet table under a content-named file, atomically; returns its name."""
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        data = buf.getvalue()
        rel = f"{Path(name).stem}-{hashlib.sha256(data).hexdigest()[:12]}.parquet"
        target = self.file(rel)
        if not target.is_file() or target.read_bytes() != data:
            atomic_write(target, data)
        written = self.manifest.setdefault("tables_written", [])
        if rel not in written:
            written.append(rel)
        return rel

    @contextlib.contextmanager
    def writing(self, *, wait_s: float = 0.0, reload: bool = True) -> Iterator[None]:
        """Hold the workspace's writer lock (one writer at a time; readers never wait), waiting up to
        wait_s seconds for another writer to finish, and reload the manifest under it, so a writer
        always commits on top of what the previous one committed."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self.path / LOCK, timeout=wait_s)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise WorkspaceError(f"workspace {self.path} is being written by another run "
                                 "(fingerprint, train or analyze); try again when it has finished") from None
        try:
            if reload and (self.path / MANIFEST).is_file():
                self.manifest = read_manifest(self.path)
            yield
        finally:
            lock.release()

    def busy(self) -> bool:
        """Whether another run holds the writer lock right now."""
        lock = filelock.FileLock(self.path / LOCK, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            return True
        lock.release()
        return False

    def commit(self, *, collect: tuple[str, ...] = ()) -> None:
        """Make the manifest the workspace's state (atomic and durable). A finished run's last commit
        names in collect the top-level names it manages (e.g. "models", "analysis-"): the entry folders
        and tables there that this workspace wrote and the manifest no longer names are removed. Each
        writer collects only its own kind, so one never removes what another made."""
        self.manifest["updated"] = _now()
        self.manifest["versions"] = versions()
        self.manifest["schema_version"] = SCHEMA_VERSION
        dropped: set[str] = set()
        if collect:
            named = self._named()
            written = self.manifest.get("tables_written", [])
            dropped = {t for t in written if t not in named and t.startswith(collect)}
            self.manifest["tables_written"] = [t for t in written if t not in dropped]
        atomic_write(self.path / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=False).encode())
        if collect:
            self._collect_garbage(collect, dropped)

    def _named(self) -> set[str]:
        return set(named_paths(self.manifest)) | {MANIFEST, LOCK, MARK}

    def _discard(self, folder: Path) -> None:
        """Remove one of our own entry folders (it has an inventory or is our temporary), never through a link."""
        if not folder.is_dir() or not is_inside(folder, self.path):
            return
        if (folder / INVENTORY).is_file() or TMP_PATTERN.match(folder.name):
            shutil.rmtree(folder)
        else:  # not demonstrably ours: set it aside, never delete it
            os.rename(folder, folder.with_name(f"{folder.name}.damaged-{uuid.uuid4().hex[:6]}"))

    def _collect_garbage(self, areas: tuple[str, ...], dropped_tables: set[str]) -> None:
        named = self._named()
        ancestors = {q.as_posix() for n in named for q in Path(n).parents if q.as_posix() != "."}

        def sweep(folder: Path) -> bool:
            """Remove what is ours and unnamed in folder; returns whether anything was removed."""
            removed = False
            for p in folder.iterdir():
                rel = p.relative_to(self.path).as_posix()
                if rel in named or p.is_symlink():  # never follow a link, never remove one
                    continue
                if folder == self.path and not rel.startswith(areas) and not TMP_PATTERN.match(p.name):
                    continue  # another writer's kind of entry
                if p.is_dir():
                    if (p / INVENTORY).is_file() or TMP_PATTERN.match(p.name):
                        shutil.rmtree(p)  # an entry we wrote that nothing names, or an interrupted write
                        removed = True
                    elif sweep(p) and rel not in ancestors and not any(p.iterdir()):
                        p.rmdir()  # a folder that held only our entries (a removed model's)
                        removed = True
                elif TMP_PATTERN.match(p.name) or (rel in dropped_tables and TABLE_PATTERN.match(p.name)):
                    p.unlink(missing_ok=True)  # an interrupted atomic write, or a table nothing names any more
                    removed = True
            return removed

        sweep(self.path)


def _empty_manifest() -> dict:
    return {"schema_version": SCHEMA_VERSION, "created": _now(), "models": {}, "spaces": {}}


def named_paths(manifest: dict) -> dict[str, str]:
    """Every file and entry folder a (validated) manifest names, each with what it is ("models/x: rgb artifacts")."""
    m = manifest
    named: dict[str, str] = {}
    for table in ("design", "quality"):
        if m.get(table):
            named[m[table]] = f"the {table} table"
    if m.get("real"):
        named[m["real"]["dir"]] = "the real set"
    if m.get("analysis"):
        named[m["analysis"]["dir"]] = "the analysis"
    att = m.get("attribution") or {}
    if att.get("split"):
        named[att["split"]] = "the attribution split"
    for kind, a in att.get("attributors", {}).items():
        named[a["dir"]] = f"the {kind} attributor"
    for space, s in m.get("spaces", {}).items():
        named[s["dir"]] = f"the {space} reference embeddings"
    for space, s in (m.get("learned") or {}).items():
        named[s["dir"]] = f"the learned {space} fingerprints"
    for space, s in (m.get("lodo_learned") or {}).items():
        for design, d in s.get("folds", {}).items():
            named[d] = f"the learned leave-one-design-out fold {design} ({space})"
    for model, e in m.get("models", {}).items():
        named[e["images"]["dir"]] = f"the images of {model}"
        for space, s in e.get("spaces", {}).items():
            named[s["dir"]] = f"the {space} fingerprint of {model}"
    return named


def read_manifest(path: str | os.PathLike) -> dict:
    """The validated manifest of the workspace at path (WorkspaceError naming the file and the reason)."""
    f = Path(path) / MANIFEST
    try:
        manifest = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkspaceError(f"{f} cannot be read ({e}); run `manifpt check {Path(path)} --repair`") from e
    problem = manifest_problem(manifest)
    if problem:
        raise WorkspaceError(f"{f} is damaged: {problem}; run `manifpt check {Path(path)} --repair`")
    return manifest


def _is_rel(v) -> bool:
    """A relative path that stays inside the workspace (what every manifest name must be)."""
    return isinstance(v, str) and v != "" and not Path(v).is_absolute() and ".." not in Path(v).parts


def _dir_entry(v, what: str) -> str | None:
    if not isinstance(v, dict):
        return f"{what} is {type(v).__name__}, not an object"
    if not _is_rel(v.get("dir")):
        return f"{what} has no valid 'dir' (a relative path inside the workspace)"
    return None


def manifest_problem(m) -> str | None:
    """What is wrong with a manifest's structure, or None (only what readers rely on is checked)."""
    if not isinstance(m, dict):
        return f"it holds {type(m).__name__ if m is not None else 'null'}, not a JSON object"
    if m.get("schema_version") != SCHEMA_VERSION:
        return f"schema version {m.get('schema_version')!r}; this version reads {SCHEMA_VERSION}"
    config = m.get("config")
    if not isinstance(config, dict):
        return "no 'config' object (data root, spaces, image shape)"
    if not isinstance(config.get("spaces"), list) or not all(isinstance(s, str) for s in config["spaces"]):
        return "config.spaces is not a list of space names"
    shape = config.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        return "config.image_shape is not [channels, height, width]"
    for key in ("models", "spaces"):
        if not isinstance(m.get(key), dict):
            return f"'{key}' is {type(m.get(key)).__name__}, not an object"
    if m.get("real") is not None:
        if problem := _dir_entry(m["real"], "'real'"):
            return problem
    elif m["models"] or m["spaces"]:
        return "no 'real' entry, yet it names fingerprints"
    for table in ("design", "quality"):
        if m.get(table) is not None and not _is_rel(m[table]):
            return f"'{table}' is not a file name inside the workspace"
    for space, s in m["spaces"].items():
        if problem := _dir_entry(s, f"spaces.{space}"):
            return problem
    for model, e in m["models"].items():
        if not isinstance(e, dict):
            return f"models.{model} is {type(e).__name__}, not an object"
        if problem := _dir_entry(e.get("images"), f"models.{model}.images"):
            return problem
        if not isinstance(e["images"].get("n"), int):
            return f"models.{model}.images.n is not a count"
        if not isinstance(e.get("spaces", {}), dict):
            return f"models.{model}.spaces is not an object"
        for space, s in e.get("spaces", {}).items():
            if problem := _dir_entry(s, f"models.{model}.spaces.{space}"):
                return problem
        if not isinstance(e.get("bad_files", []), list) or not isinstance(e.get("warnings", []), list):
            return f"models.{model}: bad_files and warnings must be lists"
    if m.get("analysis") is not None and (problem := _dir_entry(m["analysis"], "'analysis'")):
        return problem
    learned = m.get("learned")
    if learned is not None:
        if not isinstance(learned, dict):
            return "'learned' is not an object"
        for space, e in learned.items():
            if problem := _dir_entry(e, f"learned.{space}"):
                return problem
    lodo = m.get("lodo_learned")
    if lodo is not None:
        if not isinstance(lodo, dict) or not all(isinstance(v, dict) and isinstance(v.get("folds", {}), dict) for v in lodo.values()):
            return "'lodo_learned' is not an object of spaces with 'folds'"
        for space, v in lodo.items():
            if not all(_is_rel(d) for d in v.get("folds", {}).values()):
                return f"lodo_learned.{space}.folds names a path outside the workspace"
    att = m.get("attribution")
    if att is not None:
        if not isinstance(att, dict) or not isinstance(att.get("attributors", {}), dict):
            return "'attribution' is not an object with 'attributors'"
        if att.get("split") is not None and not _is_rel(att["split"]):
            return "attribution.split is not a file name inside the workspace"
        for kind, a in att.get("attributors", {}).items():
            if problem := _dir_entry(a, f"attribution.attributors.{kind}"):
                return problem
    return None


def _repair_hint(root: Path | None) -> str:
    return f"; run `manifpt check {root} --repair`" if root is not None else ""


def load_npy(f: Path, root: Path | None = None) -> np.ndarray:
    """A plain .npy array, memory-mapped (WorkspaceError naming the file and the reason)."""
    try:
        return np.load(f, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise WorkspaceError(f"{f} is missing{_repair_hint(root)}") from None
    except ValueError as e:
        why = "it holds Python objects, not a plain array (refused: nothing is unpickled)" if "allow_pickle" in str(e) \
            else f"it is truncated or not a .npy array ({e})"
        raise WorkspaceError(f"{f} cannot be read: {why}{_repair_hint(root)}") from None
    except (OSError, EOFError) as e:
        raise WorkspaceError(f"{f} cannot be read ({e}){_repair_hint(root)}") from None


def load_parquet(f: Path, root: Path | None = None) -> pd.DataFrame:
    """A parquet table (WorkspaceError naming the file and the reason)."""
    if not f.is_file():
        raise WorkspaceError(f"{f} is missing{_repair_hint(root)}")
    try:
        return pd.read_parquet(f)
    except Exception as e:  # pyarrow raises its own types for damaged files
        raise WorkspaceError(f"{f} is not a readable parquet table ({type(e).__name__}: {e}){_repair_hint(root)}") from None


def default_root() -> Path:
    """Where workspaces live unless told otherwise: $MANIFPT_WORKSPACE, else the user cache."""
    env = os.environ.get("MANIFPT_WORKSPACE")
    if env:
        return Path(env).expanduser()
    return platformdirs.user_cache_path("manifpt", appauthor=False) / "workspaces"


def discover(root: str | os.PathLike) -> list[Path]:
    """Workspaces directly under root (folders with a workspace.json), sorted by name."""
    r = Path(root)
    if not r.is_dir():
        return []
    found = [p for p in r.iterdir() if p.is_dir() and (p / MANIFEST).is_file()]
    if (r / MANIFEST).is_file():
        found.append(r)
    return sorted(found, key=lambda p: p.name)
