"""Ship trained attributors with a dataset (the demo's live in assets/demo/attribution) and install
them into a workspace built from the same data, so attribution works without training.

A shipped folder holds record.json (the split name, seed, classes and per kind its manifest entry)
and one folder per kind with the weights and config (the verdicts' thresholds are fitted from the
workspace: decision.py). Installing checks that the workspace's artifacts, split and classes are the
very ones the attributors were trained on; otherwise it installs nothing and says why (then
`manifpt train WS`).
"""

from __future__ import annotations

import json
from pathlib import Path

from fingerprint_core.attribution import split as split_mod
from fingerprint_core.attribution.train import KEY, artifacts_key
from fingerprint_core.fsio import atomic_write
from fingerprint_core.workspace import Workspace

RECORD = "record.json"
EXPORT_FORMAT = "manifpt-attributors-1"
SHIPPED_FILES = ("weights.safetensors", "config.json")
LEGACY_FILES = ("openset.safetensors", "openset.json")  # earlier exports' open-set rule (now fitted from the workspace)


def export(ws: Workspace, folder: str | Path) -> list[str]:
    """Write the workspace's trained attributors into folder, which must be new, empty, or a previous
    export (then only what that export wrote is replaced); returns the kinds."""
    record = ws.manifest.get(KEY) or {}
    kinds = list(record.get("attributors", {}))
    if not kinds:
        raise ValueError(f"workspace {ws.path} has no trained attributor; run `manifpt train {ws.path}` first")
    folder = Path(folder)
    previous = _previous_export(folder, ws.path)
    folder.mkdir(parents=True, exist_ok=True)
    for kind in previous:  # the kind folders the previous export wrote: only our own files in them
        for name in (*SHIPPED_FILES, *LEGACY_FILES):
            (folder / kind / name).unlink(missing_ok=True)
        if (folder / kind).is_dir() and not any((folder / kind).iterdir()):
            (folder / kind).rmdir()
    entries = {}
    for kind in kinds:
        entry = dict(record["attributors"][kind])
        (folder / kind).mkdir(exist_ok=True)
        for name in SHIPPED_FILES:
            atomic_write(folder / kind / name, (ws.path / entry["dir"] / name).read_bytes())
        entry.pop("dir")
        entries[kind] = entry
    meta = {"format": EXPORT_FORMAT, "split": record["split"], "split_seed": record["split_seed"],
            "classes": record["classes"], "attributors": entries}
    atomic_write(folder / RECORD, json.dumps(meta, indent=1).encode())
    return kinds


def check_export_folder(folder: str | Path, workspace: str | Path) -> None:
    """ValueError naming the reason when folder cannot take an export (see _previous_export)."""
    _previous_export(Path(folder), Path(workspace))


def _previous_export(folder: Path, workspace: Path) -> list[str]:
    """The kinds a previous export in folder wrote ([] for a new or empty folder); ValueError for any
    other folder, one inside the workspace, or one that holds it: an export never deletes what it did not write."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"--export {folder}: not a folder")
    target, ws = folder.resolve(), workspace.resolve()
    if target == ws or ws in target.parents or target in ws.parents:
        raise ValueError(f"--export {folder}: the export folder must be outside the workspace {workspace} and not contain it")
    if not folder.exists() or not any(folder.iterdir()):
        return []
    try:
        meta = json.loads((folder / RECORD).read_text())
        kinds = list(meta["attributors"])
        meta["split"]
        if not all(isinstance(k, str) and k and k == Path(k).name and k not in (".", "..") for k in kinds):
            raise ValueError("a kind that is not a folder name")  # never a path that leads out of the folder
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"--export {folder}: the folder is not empty and holds no previous export ({RECORD}); "
                         "choose an empty or new folder") from None
    allowed = {RECORD, *kinds}
    stray = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
    stray += sorted(f"{k}/{p.name}" for k in kinds if (folder / k).is_dir() for p in (folder / k).iterdir()
                    if p.name not in (*SHIPPED_FILES, *LEGACY_FILES))
    if stray or any((folder / k).is_symlink() for k in kinds):
        raise ValueError(f"--export {folder}: it holds files a previous export did not write "
                         f"({', '.join(stray[:5]) or 'a link'}); choose an empty or new folder")
    return kinds


def install(ws: Workspace, folder: str | Path) -> tuple[list[str], list[str]]:
    """Install the shipped attributors that match the workspace; returns (installed kinds, reasons for the rest)."""
    folder = Path(folder)
    meta = json.loads((folder / RECORD).read_text())
    table = split_mod.workspace_split(ws, seed=int(meta["split_seed"]))
    classes = split_mod.classes(ws)
    installed: list[str] = []
    with ws.writing():  # reloads the manifest under the lock
        split_name = ws.write_table("attribution-split", table)
        if split_name != meta["split"] or classes != meta["classes"]:
            return [], [f"the shipped attributors in {folder} were trained on another split or other classes; "
                        f"run `manifpt train {ws.path}`"]
        matching = {k: e for k, e in meta["attributors"].items() if artifacts_key(ws, k) == e.get("artifacts")}
        skipped = [f"shipped {k} attributor: the workspace's artifacts differ from those it was trained on; "
                   f"run `manifpt train {ws.path}`" for k in meta["attributors"] if k not in matching]
        if not matching:
            return [], skipped
        record = ws.manifest.setdefault(KEY, {"attributors": {}})
        record.update(split=split_name, split_seed=int(meta["split_seed"]), classes=classes)
        for kind, entry in matching.items():
            current = record["attributors"].get(kind, {})
            if current.get("key") != entry["key"] or not ws.intact(current.get("dir")):
                files = {name: (folder / kind / name).read_bytes() for name in SHIPPED_FILES}
                rel = ws.write_entry(f"attribution/{kind}-{entry['key']}", {}, files=files)
                record["attributors"][kind] = {**entry, "dir": rel}
            installed.append(kind)
        ws.commit(collect=("attribution",))
    return installed, skipped
