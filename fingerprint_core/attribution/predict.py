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

from fingerprint_core import artifacts, devices
from fingerprint_core.attribution import decision as decision_mod
from fingerprint_core.attribution import train as train_mod
from fingerprint_core.attribution import uploads
from fingerprint_core.attribution.method import Inputs, softmax
from fingerprint_core.attribution.workspace_spaces import workspace_space
from fingerprint_core.manifold import Manifold
from fingerprint_core.workspace import MANIFEST, Workspace

TOP = 3
SCHEMA = "manifpt-attribute/2"  # the JSON of `manifpt attribute --json` (docs/attribution.md)


@dataclass
class Result:
    """The answer for one image (the JSON contract of `manifpt attribute --json`)."""

    file: str
    status: str  # "ok", or "warning: <what was converted and why it matters>"
    top: list[dict]  # [{"model", "p"}], most probable first (temperature-calibrated)
    design: dict[str, dict]  # head -> {"value", "p"}
    verdict: str  # "known" | "unknown" | "real"
    model: str | None  # the attributed model when the verdict is "known"
    p_real: float  # calibrated p(real): "real" at or above the real threshold
    open_set_score: float  # "unknown" above the open-set threshold (for images not called real)
    nearest_real: dict[str, int]  # space -> row of the nearest real image in the reference set
    sha256: str = ""  # of the file's bytes

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    """All results of a call and every file that could not be attributed."""

    results: list[Result] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    set: dict | None = None  # the verdict for all results as one source (--as-set)
    about: dict = field(default_factory=dict)  # the attributor, its thresholds and what they were set for

    def to_json(self) -> dict:
        out = {"schema": SCHEMA, "report": self.about, "results": [r.to_json() for r in self.results],
               "errors": [{"file": f, "reason": r} for f, r in self.errors]}
        if self.set is not None:
            out["set"] = self.set
        return out


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
class Attributor:
    """A workspace's trained attributor with its encoders and manifolds, loaded once."""

    def __init__(self, workspace: str | os.PathLike | Workspace, *, kind: str | None = None,
                 device: str | torch.device = "auto") -> None:
        ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        self.ws = ws
        self.device = devices.resolve(device)
        self.method, entry = train_mod.load(ws, kind, device=self.device)
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
        self.entry = entry
        self.decision = decision_mod.ensure(ws, self.kind, self.method, entry)

    def about(self) -> dict:
        """What a filed report needs besides the answers: the attributor, its thresholds, what they were set for."""
        from fingerprint_core import __version__

        d = self.decision
        return {"tool": "manifpt-studio", "version": __version__, "workspace": str(self.ws.path),
                "attributor": {"kind": self.kind, "key": self.entry.get("key"), "test_accuracy": self.entry.get("test", {}).get("model")},
                "temperature": d.temperature,
                "real": {"threshold": d.real_threshold, "keeps": decision_mod.REAL_KEEP,
                         "set_for": "share of real validation images called real",
                         "validation": {"real_kept": d.measured.get("val_real_kept"),
                                        "generated_called_real": d.measured.get("val_generated_called_real")}},
                "unknown": {"score": d.unknown.kind, "threshold": d.unknown.threshold, "accepts": d.unknown.accept,
                            "set_for": "share of generated validation images of known models accepted",
                            "validation": {"generated_accepted": d.measured.get("val_generated_accepted")}},
                "sets": {"statistic": "unbiased MMD^2, Gaussian kernel on standardised attributor features",
                         "sizes": list(d.set_rule.sizes), "rejects": d.set_rule.reject,
                         "set_for": "share of a known class's validation sets its own threshold rejects"},
                "calibration": {"test_ece": d.measured.get("test_ece"), "test_ece_uncalibrated": d.measured.get("test_ece_raw")}}

    @torch.no_grad()
    def forward(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
        """(artifacts per space, nearest real row per space, features, logits per head) of images in the workspace's shape."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"images must be N x {' x '.join(map(str, self.shape))} uint8; got {images.shape}")
        arts, nearest = {}, {}
        with self._lock:
            for s, space in self.spaces.items():
                proj = artifacts.project(space, images, self.manifolds[s])
                # the attributor learned on float16 artifacts (as the workspace stores them): round the same way
                arts[s] = proj.artifacts.cpu().numpy().astype(np.float16).astype(np.float32)
                nearest[s] = proj.nearest.cpu().numpy()
        features, logits = self.method.features_and_logits(Inputs(None, arts))
        return arts, nearest, features, logits

    @torch.no_grad()
    def attribute_array(self, images: np.ndarray, *, top: int = TOP) -> list[dict]:
        """Answers for uint8 N x C x H x W images already in the workspace's shape (no file names)."""
        if len(images) == 0:
            return []
        _, nearest, features, logits = self.forward(images)
        return self.answers(features, logits, nearest, top)

    def answers(self, features, logits, nearest, top: int = TOP) -> list[dict]:
        """The per-image answers from forward()'s features, logits and nearest real rows."""
        v = self.decision.verdicts(features, logits["model"])
        probs = {h: softmax(z) for h, z in logits.items() if h != "model"}
        models = self.classes["model"]
        out = []
        for i in range(len(features)):
            p = v["probs"][i]
            order = np.argsort(-p, kind="stable")[: max(1, top)]
            out.append({
                "top": [{"model": models[j], "p": round(float(p[j]), 4)} for j in order],
                "design": {h: {"value": self.classes[h][int(probs[h][i].argmax())], "p": round(float(probs[h][i].max()), 4)}
                           for h in probs},
                "verdict": str(v["verdict"][i]),
                "model": models[int(v["model"][i])] if v["verdict"][i] == "known" else None,
                "p_real": round(float(v["p_real"][i]), 4),
                "open_set_score": round(float(v["score"][i]), 4),
                "nearest_real": {s: int(nearest[s][i]) for s in self.spaces},
            })
        return out

    def _convert(self, batch: uploads.Batch, report: Report) -> list[tuple[uploads.Upload, np.ndarray, str]]:
        converted = []
        for up in batch.images:
            try:
                x, notes = to_domain(up.array, self.shape, padded_from=self.padded_from)
            except (ValueError, OSError) as err:
                report.errors.append((up.name, f"cannot convert the image to {self.shape} ({err})"))
                continue
            notes = [*up.notes, *notes]
            converted.append((up, x, "ok" if not notes else "warning: " + "; ".join(notes)))
        return converted

    @torch.no_grad()
    def attribute(self, batch: uploads.Batch, *, top: int = TOP, as_set: bool = False) -> Report:
        """Answers for decoded uploads (any size or channels), with the batch's errors passed on; with
        as_set, also the verdict for all of them as one source."""
        report = Report(errors=list(batch.errors), about=self.about())
        converted = self._convert(batch, report)
        if not converted:
            if as_set:
                report.errors.append(("(set)", "no readable image: no set verdict"))
            return report
        arts, nearest, features, logits = self.forward(np.stack([x for _, x, _ in converted]))
        for (up, _, status), answer in zip(converted, self.answers(features, logits, nearest, top), strict=True):
            report.results.append(Result(file=up.name, status=status, sha256=up.sha256, **answer))
        if as_set:
            try:
                report.set = self.set_verdict(arts, features, logits)
            except ValueError as err:
                report.errors.append(("(set)", str(err)))
        return report

    def set_verdict(self, arts: dict[str, np.ndarray], features: np.ndarray, logits: dict[str, np.ndarray]) -> dict:
        """The JSON "set" of a batch from one source (see decision.Decision.set_verdict)."""
        from fingerprint_core.analysis import learned

        d = self.decision.set_verdict(features, logits["model"])
        models = self.classes["model"]
        name = models[d["model"]] if d["model"] is not None else None
        if d["verdict"] == "known":
            design = _design_of_posterior(self.ws, models, d["posterior"], self.decision.generated())
        elif d["verdict"] == "unknown":
            design = learned.unknown_source_design(self.ws, arts)
        else:
            design = {}
        return {"verdict": d["verdict"], "model": name, "p": round(d["p"], 4), "n": d["n"],
                "size_calibrated": d["size_calibrated"], "design": design,
                "by_n": [{"n": b["n"], "verdict": b["verdict"], "p": round(b["p"], 4),
                          "model": models[b["model"]] if b["model"] is not None else None} for b in d["by_n"]],
                "mmd2": {m: round(v, 6) for m, v in d["mmd2"].items()}}


def _design_of_posterior(ws: Workspace, models: list[str], posterior: np.ndarray, generated: np.ndarray) -> dict:
    """Per factor, the design value with the most set-posterior mass among the known generated models, and that mass."""
    table = ws.design().astype(str).set_index("model")
    mass = posterior[generated] / max(posterior[generated].sum(), 1e-300)
    names = [models[i] for i in generated]
    out = {}
    for factor in [c for c in table.columns if c != "seed"]:
        values = table.reindex(names)[factor].to_numpy()
        totals = {v: float(mass[values == v].sum()) for v in dict.fromkeys(values) if v != "nan"}
        if totals:
            best = max(totals, key=totals.get)
            out[factor] = {"value": best, "p": round(totals[best], 4)}
    return out


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
                    kind: str | None = None, device: str = "auto", limits: uploads.Limits = uploads.Limits(),
                    as_set: bool = False) -> Report:
    """Attribute image files, folders and zip archives (the CLI's `manifpt attribute`)."""
    attributor = attributor_for(workspace, kind=kind, device=device)  # fails early, before reading any file
    return attributor.attribute(uploads.read_paths(paths, limits=limits), top=top, as_set=as_set)


def attribute_uploads(workspace: str | os.PathLike, items: list[tuple[str, bytes]], *, top: int = TOP,
                      kind: str | None = None, device: str = "auto", limits: uploads.Limits = uploads.Limits(),
                      as_set: bool = False) -> Report:
    """Attribute in-memory uploads (the app): images or zip archives as (name, bytes)."""
    attributor = attributor_for(workspace, kind=kind, device=device)
    return attributor.attribute(uploads.read_uploads(items, limits=limits), top=top, as_set=as_set)
