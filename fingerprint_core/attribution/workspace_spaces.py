"""The spaces a workspace was embedded with, found again for new images (attribution, robust banks)."""

from __future__ import annotations

from pathlib import Path

import torch

from fingerprint_core import spaces
from fingerprint_core.workspace import Workspace, WorkspaceError


def workspace_space(ws: Workspace, name: str, device: torch.device) -> spaces.Space:
    """The space the workspace embedded with: for a learned one, the weights whose hash matches."""
    try:
        learned = spaces.info(name).learned
    except ValueError as err:
        raise WorkspaceError(f"{ws.path}: it was built with the space {name!r}, which is not available here ({err})") from None
    if not learned:
        return spaces.get(name, device=device)
    entry = ws.manifest.get("spaces", {}).get(name, {})
    recorded = entry.get("identity", {})
    candidates = [Path(entry["weights"])] if entry.get("weights") else []
    candidates.append(spaces.default_weights(name))
    if ws.config.get("data_root"):
        candidates.append(Path(ws.config["data_root"]) / "encoders" / f"{name}.safetensors")
    for weights in dict.fromkeys(candidates):
        if weights.is_file():
            space = spaces.get(name, device=device, weights=weights, backbone=recorded.get("backbone", "auto"))
            if space.identity() == recorded:
                return space
    raise WorkspaceError(
        f"the {name.upper()} weights this workspace was built with (sha256 "
        f"{str(recorded.get('weights_sha256', '?'))[:12]}...) are not at {' or '.join(map(str, dict.fromkeys(candidates)))}; "
        "set MANIFPT_ENCODERS to the folder that holds them"
    )
