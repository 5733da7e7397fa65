"""Ship trained attributors with a dataset (the demo's live in assets/demo/attribution) and install
them into a workspace built from the same data, so attribution works without training.

A shipped folder holds record.json (the split name, seed, classes and per kind its manifest entry)
and one folder per kind with the weights and the open-set rule. Installing checks that the
workspace's artifacts, split and classes are the very ones the attributors were trained on;
otherwise it installs nothing and says why (then `manifpt train WS`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fingerprint_core.attribution import split as split_mod
from fingerprint_core.attribution.train import KEY, artifacts_key
from fingerprint_core.workspace import Workspace

SHIPPED_FILES = ("weights.safetensors", "config.json", "openset.safetensors", "openset.json")


def export(ws: Workspace, folder: str | Path) -> list[str]:
    """Write the workspace's trained attributors into folder (replacing what is there); returns the kinds."""
    record = ws.manifest.get(KEY) or {}
    kinds = list(record.get("attributors", {}))
    if not kinds:
        raise ValueError(f"workspace {ws.path} has no trained attributor; run `manifpt train {ws.path}` first")
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    entries = {}
    for kind in kinds:
        entry = dict(record["attributors"][kind])
        (folder / kind).mkdir()
        for name in SHIPPED_FILES:
            shutil.copyfile(ws.path / entry["dir"] / name, folder / kind / name)
        entry.pop("dir")
        entries[kind] = entry
    meta = {"split": record["split"], "split_seed": record["split_seed"], "classes": record["classes"],
            "attributors": entries}
    (folder / "record.json").write_text(json.dumps(meta, indent=1))
    return kinds


def install(ws: Workspace, folder: str | Path) -> tuple[list[str], list[str]]:
    """Install the shipped attributors that match the workspace; returns (installed kinds, reasons for the rest)."""
    folder = Path(folder)
    meta = json.loads((folder / "record.json").read_text())
    table = split_mod.workspace_split(ws, seed=int(meta["split_seed"]))
    classes = split_mod.classes(ws)
    installed: list[str] = []
    with ws.writing():
        ws.manifest = Workspace.open(ws.path).manifest
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
            if record["attributors"].get(kind, {}).get("key") != entry["key"]:
                files = {name: (folder / kind / name).read_bytes() for name in SHIPPED_FILES}
                rel = ws.write_entry(f"attribution/{kind}-{entry['key']}", {}, files=files)
                record["attributors"][kind] = {**entry, "dir": rel}
            installed.append(kind)
        ws.commit()
    return installed, skipped
