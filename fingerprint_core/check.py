"""`manifpt check WS [--repair]`: verify every entry of a workspace, say what is damaged and how to
recompute it, and repair: set a damaged manifest aside, drop damaged entries from it, recompute the
fingerprints from the recorded data root, and name the commands for the rest.

Nothing is deleted that the workspace did not write: a damaged manifest is renamed, not removed, and
a damaged entry folder is removed only when it carries the workspace's own inventory.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from fingerprint_core.fsio import atomic_write
from fingerprint_core.workspace import (
    MANIFEST,
    MARK,
    REAL,
    Workspace,
    WorkspaceError,
    named_paths,
    read_manifest,
)


@dataclass
class Damage:
    """One damaged part of a workspace: what it is, the file, why, and the command that recomputes it."""

    what: str
    file: str
    reason: str
    fix: str


@dataclass
class CheckReport:
    workspace: Path
    damages: list[Damage] = field(default_factory=list)
    checked: int = 0  # entries and tables verified
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damages


def _q(p: object) -> str:
    return shlex.quote(str(p))


def _recompute_command(ws_path: Path, manifest: dict | None) -> str:
    """The command that recomputes a workspace's fingerprints from its recorded inputs."""
    config = (manifest or {}).get("config") or {}
    spaces = ",".join(config.get("spaces") or [])
    if config.get("real_origin") == "fashion-mnist":
        return f"manifpt demo -w {_q(ws_path)}"
    data = config.get("data_root") or "DATA_ROOT"
    return f"manifpt fingerprint {_q(data)} -w {_q(ws_path)}" + (f" --spaces {spaces}" if spaces else "")


def _fix_for(what: str, ws_path: Path, manifest: dict) -> str:
    if "attributor" in what or "attribution split" in what:
        return f"manifpt train {_q(ws_path)}"
    if what == "the analysis" or what.startswith("the learned"):
        return f"manifpt analyze {_q(ws_path)}" + (" --lodo-learned" if "leave-one-design-out" in what else "")
    return _recompute_command(ws_path, manifest)


def check(path: str | os.PathLike) -> CheckReport:
    """Verify the manifest and every entry it names (files present, sizes, full SHA-256)."""
    p = Path(path)
    report = CheckReport(p)
    if not (p / MANIFEST).is_file():
        why = ("a first run stopped before its first save" if (p / MARK).is_file() else "it is not a workspace")
        report.damages.append(Damage("the manifest", str(p / MANIFEST), f"missing: {why}", _recompute_command(p, None)))
        return report
    try:
        manifest = read_manifest(p)
    except WorkspaceError as e:
        report.damages.append(Damage("the manifest", str(p / MANIFEST), str(e), _recompute_command(p, _loose(p))))
        return report
    ws = Workspace(p, manifest)
    for rel, what in named_paths(manifest).items():
        report.checked += 1
        if rel.endswith(".parquet"):
            f = ws.file(rel)
            reason = None if f.is_file() else f"{f} is missing"
            if reason is None:
                try:
                    ws._parquet(rel)
                except WorkspaceError as e:
                    reason = str(e)
        else:
            reason = ws.damage(rel, full=True)
        if reason:
            report.damages.append(Damage(what, str(p / rel), reason, _fix_for(what, p, manifest)))
    return report


def _loose(p: Path) -> dict | None:
    """Whatever JSON object a damaged manifest still holds (for its data root), else None."""
    try:
        m = json.loads((p / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and isinstance(m.get("config"), dict) else None


def repair(path: str | os.PathLike, *, recompute: bool = True, device: str = "auto", progress=None) -> CheckReport:
    """Repair what check finds; with recompute, rerun the fingerprints from the recorded inputs."""
    p = Path(path)
    found = check(p)
    if found.ok:
        return found
    ws = Workspace(p)
    with ws.writing(reload=False):
        if any(d.what == "the manifest" for d in found.damages):
            loose = _loose(p)
            if (p / MANIFEST).is_file():
                aside = p / f"{MANIFEST}.damaged-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
                os.replace(p / MANIFEST, aside)
                found.repaired.append(f"set the damaged manifest aside as {aside.name}")
            if not (p / MARK).is_file():
                atomic_write(p / MARK, json.dumps({"repaired": True}).encode())
            ws.manifest = {}
            manifest_for_command = loose
        else:
            ws.manifest = read_manifest(p)
            _drop_damaged(ws, found)
            ws.commit()  # no clean-up: every intact entry stays for the recompute to reuse
            manifest_for_command = ws.manifest
    if recompute:
        command = _recompute_command(p, manifest_for_command)
        if _rerun_fingerprints(p, manifest_for_command, device=device, progress=progress):
            found.repaired.append(f"recomputed the fingerprints ({command})")
    return found


def _drop_damaged(ws: Workspace, found: CheckReport) -> None:
    """Remove the damaged entries from the manifest (and their folders, when ours)."""
    m = ws.manifest
    bad = {Path(d.file).relative_to(ws.path).as_posix() for d in found.damages}
    for rel in bad:
        folder = ws.file(rel)
        if folder.is_dir():
            ws._discard(folder)
    if m.get("real", {}).get("dir") in bad:  # without the real set nothing downstream holds
        m.pop("real")
        m["spaces"], m["models"] = {}, {}
        m.pop("analysis", None)
        m.pop("attribution", None)
    for table in ("design", "quality"):
        if m.get(table) in bad:
            m.pop(table)
    m["spaces"] = {s: e for s, e in m.get("spaces", {}).items() if e["dir"] not in bad}
    for name, e in list(m.get("models", {}).items()):
        if e["images"]["dir"] in bad:
            del m["models"][name]
            continue
        e["spaces"] = {s: x for s, x in e.get("spaces", {}).items() if x["dir"] not in bad}
    if m.get("analysis", {}).get("dir") in bad:
        m.pop("analysis")
    m["learned"] = {s: e for s, e in (m.get("learned") or {}).items() if e["dir"] not in bad}
    for v in (m.get("lodo_learned") or {}).values():
        v["folds"] = {d: rel for d, rel in v.get("folds", {}).items() if rel not in bad}
    att = m.get("attribution") or {}
    if att.get("split") in bad:
        m.pop("attribution")
    else:
        att["attributors"] = {k: a for k, a in att.get("attributors", {}).items() if a["dir"] not in bad}
    for d in found.damages:
        found.repaired.append(f"dropped {d.what} ({d.reason})")


def _rerun_fingerprints(p: Path, manifest: dict | None, *, device: str, progress) -> bool:
    """Recompute the fingerprints from the data root the manifest recorded; False when it is unknown or gone."""
    config = (manifest or {}).get("config") or {}
    if config.get("real_origin") == "fashion-mnist":
        from fingerprint_core import demo

        demo.build(p, device=device, progress=progress)
        return True
    data = config.get("data_root")
    if not data or not Path(data).is_dir():
        return False
    from fingerprint_core import pipeline

    pipeline.fingerprint(data, p, space_names=config.get("spaces") or pipeline.DEFAULT_SPACES, device=device,
                         holdout=float(config.get("holdout_fraction", 0.1)), seed=int(config.get("split_seed", 0)),
                         progress=progress)
    return True


def still_missing(path: str | os.PathLike) -> list[str]:
    """After a repair: what the workspace still lacks, as the commands that bring it back."""
    p = Path(path)
    try:
        ws = Workspace.open(p)
    except WorkspaceError:
        return [_recompute_command(p, _loose(p))]
    out = []
    spaces = ws.space_names()
    if any(not ws.has(m, s) for m in ws.model_names(include_real=True) for s in spaces) or REAL not in ws.manifest["models"]:
        out.append(_recompute_command(p, ws.manifest))
    return out


def not_rebuilt(found: CheckReport) -> list[str]:
    """The commands for what a repair dropped but does not recompute itself (attributors, the analysis)."""
    return [d.fix for d in found.damages if d.fix.startswith(("manifpt train", "manifpt analyze"))]
