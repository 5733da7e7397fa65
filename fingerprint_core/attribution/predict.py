"""Attribute new images with a workspace's trained attributor: which model, which design choices,
or "unknown" (none of the known models) or "real".

Each image goes the way the training samples went: converted to the workspace's image shape,
embedded by the same encoders, its exact nearest real image found in each space, its artifact
taken, and the attributor and open-set rule read it. Everything loaded once per workspace
(attributor, encoders, manifolds) is cached: `attributor_for(ws)` returns the same object until
the workspace changes.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fingerprint_core import artifacts, devices, spaces
from fingerprint_core.attribution import train as train_mod
from fingerprint_core.attribution import uploads
from fingerprint_core.attribution.method import Inputs, softmax
from fingerprint_core.manifold import Manifold
from fingerprint_core.workspace import MANIFEST, REAL, Workspace, WorkspaceError

TOP = 3


@dataclass
class Result:
    """The answer for one image (the JSON contract of `manifpt attribute --json`)."""

    file: str
    status: str  # "ok", or "warning: <what was converted and why it matters>"
    top: list[dict]  # [{"model", "p"}], most probable first
    design: dict[str, dict]  # head -> {"value", "p"}
    verdict: str  # "known" | "unknown" | "real"
    open_set_score: float
    nearest_real: dict[str, int]  # space -> row of the nearest real image in the reference set

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    """All results of a call and every file that could not be attributed."""

    results: list[Result] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def to_json(self) -> dict:
        return {"results": [r.to_json() for r in self.results],
                "errors": [{"file": f, "reason": r} for f, r in self.errors]}


# ---- into the workspace's domain ------------------------------------------------------------------
def to_domain(array: np.ndarray, shape: tuple[int, int, int], *, padded_from: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, list[str]]:
    """uint8 (H, W, C) -> the workspace's (C', H', W'), with a note per conversion that weakens the answer.

    padded_from: the size the reference images were zero-padded from (the demo's 28 x 28
    Fashion-MNIST in 32 x 32): an image of that size is padded the same way instead of resized.
    """
    c, h, w = shape
    notes = []
    if array.shape[2] == 3 and c == 1:
        if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
            array = array[..., :1]  # grey stored as RGB: nothing is lost
        else:
            array = np.asarray(Image.fromarray(array).convert("L"))[..., None]  # ITU-R 601-2 luma, as datasets.py
            notes.append("colour image converted to grayscale (the workspace's images are grayscale); "
                         "the answer is less reliable")
    elif array.shape[2] == 1 and c == 3:
        array = np.repeat(array, 3, axis=2)
        notes.append("grayscale image repeated to 3 channels (the workspace's images are colour); "
                     "the answer is less reliable")
    ih, iw = array.shape[:2]
    if (ih, iw) != (h, w):
        if padded_from == (ih, iw) and ih <= h and iw <= w:
            top, left = (h - ih) // 2, (w - iw) // 2
            out = np.zeros((h, w, array.shape[2]), np.uint8)
            out[top : top + ih, left : left + iw] = array
            array = out
            notes.append(f"{iw} x {ih} image zero-padded to {w} x {h}, as the reference images are")
        else:
            shrinks = iw > w or ih > h
            resample = Image.Resampling.LANCZOS if shrinks else Image.Resampling.BICUBIC  # as datasets.py
            pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).resize((w, h), resample)
            array = np.asarray(pil).reshape(h, w, -1)
            notes.append(f"image is {iw} x {ih}, resized to {w} x {h}: resizing can erase the high-frequency "
                         "artifacts (the fingerprint), so the answer is less reliable")
    return np.ascontiguousarray(array.transpose(2, 0, 1)), notes


# ---- the cached attributor ------------------------------------------------------------------------
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


class Attributor:
    """A workspace's trained attributor with its encoders and manifolds, loaded once."""

    def __init__(self, workspace: str | os.PathLike | Workspace, *, kind: str | None = None,
                 device: str | torch.device = "auto") -> None:
        ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        self.ws = ws
        self.device = devices.resolve(device)
        self.method, self.rule, entry = train_mod.load(ws, kind, device=self.device)
        self.kind = self.method.space
        self.classes = self.method.classes_
        self.shape = tuple(int(v) for v in ws.config["image_shape"])
        # the demo's reference set is Fashion-MNIST 28 x 28 zero-padded to 32 x 32 (datasets.load_fashion_mnist)
        self.padded_from = (28, 28) if ws.config.get("real_origin") == "fashion-mnist" else None
        self.warnings = []
        if entry.get("artifacts") != train_mod.artifacts_key(ws, self.kind):
            self.warnings.append(f"the {self.kind} attributor was trained before the workspace's artifacts last "
                                 f"changed; retrain with `manifpt train {ws.path}`")
        self.spaces = {s: workspace_space(ws, s, self.device) for s in self.method.needs}
        # Built once: norms of the whole reference set, and (on first search) its compute-ready chunks
        self.manifolds = {s: Manifold(ws.space_reference(s), device=self.device) for s in self.method.needs}
        self._lock = threading.Lock()  # one search at a time: the manifolds' chunk caches are shared

    @torch.no_grad()
    def attribute_array(self, images: np.ndarray, *, top: int = TOP) -> list[dict]:
        """Answers for uint8 N x C x H x W images already in the workspace's shape (no file names)."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"images must be N x {' x '.join(map(str, self.shape))} uint8; got {images.shape}")
        if len(images) == 0:
            return []
        arts, nearest = {}, {}
        with self._lock:
            for s, space in self.spaces.items():
                proj = artifacts.project(space, images, self.manifolds[s])
                # the attributor learned on float16 artifacts (as the workspace stores them): round the same way
                arts[s] = proj.artifacts.cpu().numpy().astype(np.float16).astype(np.float32)
                nearest[s] = proj.nearest.cpu().numpy()
        features, logits = self.method.features_and_logits(Inputs(None, arts))
        scores = self.rule.score(features, logits["model"])
        probs = {h: softmax(z) for h, z in logits.items()}
        models = self.classes["model"]
        out = []
        for i in range(len(images)):
            p = probs["model"][i]
            order = np.argsort(-p, kind="stable")[: max(1, top)]
            best = models[order[0]]
            unknown = bool(scores[i] > self.rule.threshold)
            out.append({
                "top": [{"model": models[j], "p": round(float(p[j]), 4)} for j in order],
                "design": {h: {"value": self.classes[h][int(probs[h][i].argmax())], "p": round(float(probs[h][i].max()), 4)}
                           for h in probs if h != "model"},
                "verdict": "unknown" if unknown else ("real" if best == REAL else "known"),
                "open_set_score": round(float(scores[i]), 4),
                "nearest_real": {s: int(nearest[s][i]) for s in self.spaces},
            })
        return out

    def attribute(self, batch: uploads.Batch, *, top: int = TOP) -> Report:
        """Answers for decoded uploads (any size or channels), with the batch's errors passed on."""
        report = Report(errors=list(batch.errors))
        converted, statuses = [], []
        for up in batch.images:
            try:
                x, notes = to_domain(up.array, self.shape, padded_from=self.padded_from)
            except (ValueError, OSError) as err:
                report.errors.append((up.name, f"cannot convert the image to {self.shape} ({err})"))
                continue
            notes = [*up.notes, *notes]
            converted.append((up.name, x))
            statuses.append("ok" if not notes else "warning: " + "; ".join(notes))
        answers = self.attribute_array(np.stack([x for _, x in converted]), top=top) if converted else []
        for (name, _), status, answer in zip(converted, statuses, answers, strict=True):
            report.results.append(Result(file=name, status=status, **answer))
        return report


@functools.lru_cache(maxsize=4)
def _cached(path: str, stamp: tuple, kind: str | None, device: str) -> Attributor:
    return Attributor(path, kind=kind, device=device)


def attributor_for(workspace: str | os.PathLike, *, kind: str | None = None, device: str = "auto") -> Attributor:
    """The Attributor of a workspace, built once and reused until its manifest changes."""
    path = Path(workspace).resolve()
    try:
        st = os.stat(path / MANIFEST)
    except OSError:
        Workspace.open(path)  # raises the clear "not a workspace" message
        raise
    return _cached(str(path), (st.st_mtime_ns, st.st_size), kind, str(devices.resolve(device)))


def attribute_paths(workspace: str | os.PathLike, paths: list[str | os.PathLike], *, top: int = TOP,
                    kind: str | None = None, device: str = "auto", limits: uploads.Limits = uploads.Limits()) -> Report:
    """Attribute image files, folders and zip archives (the CLI's `manifpt attribute`)."""
    attributor = attributor_for(workspace, kind=kind, device=device)  # fails early, before reading any file
    return attributor.attribute(uploads.read_paths(paths, limits=limits), top=top)


def attribute_uploads(workspace: str | os.PathLike, items: list[tuple[str, bytes]], *, top: int = TOP,
                      kind: str | None = None, device: str = "auto", limits: uploads.Limits = uploads.Limits()) -> Report:
    """Attribute in-memory uploads (the app): images or zip archives as (name, bytes)."""
    attributor = attributor_for(workspace, kind=kind, device=device)
    return attributor.attribute(uploads.read_uploads(items, limits=limits), top=top)
