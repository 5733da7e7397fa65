"""Cached loaders and per-upload work of the Attribute and Benchmark pages.

Uploads are read from memory (`uploads.read_uploads` on (name, bytes) pairs) and never written to
disk; what the page keeps of them is small: a thumbnail, the image in the workspace's shape, and the
answer. The attributor (encoders, manifolds) is loaded once per workspace version and shared.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from fingerprint_core.attribution import predict, uploads
from fingerprint_core.attribution import train as train_mod
from fingerprint_core.workspace import Workspace

if TYPE_CHECKING:
    from fingerprint_core.attribution.predict import Attributor

# ---- caps on one batch of uploads (said on the page) ------------------------------------------------
MAX_IMAGES = 200  # images attributed at once, every file and archive together
UPLOAD_MB = 50  # one uploaded file (the uploader refuses bigger ones before they reach the server)
LIMITS = uploads.Limits(
    max_files=MAX_IMAGES,
    max_members=2_000,  # entries of one zip
    max_archive_bytes=256 * 2**20,  # unpacked bytes of one zip
    max_file_bytes=25 * 2**20,  # one image file
    max_pixels=25_000_000,  # one image (a 5000 x 5000 photo passes, a decompression bomb does not)
)
TOP = 5  # models listed per image
THUMB_PX = 160  # longest side of the kept thumbnail of an upload (shown at about 130 px)
NEIGHBOURS = 5  # mapped samples whose map position places an upload


# ---- the attributor ------------------------------------------------------------------------------------


def trained_kinds(ws: Workspace) -> dict[str, dict]:
    """The attributors stored in the workspace (kind -> manifest entry); reading it loads nothing."""
    return train_mod.stored(ws)


def product_entry(ws: Workspace) -> tuple[str, dict] | None:
    """(kind, manifest entry) of the attributor that answers, or None when none is trained."""
    have = trained_kinds(ws)
    if not have:
        return None
    kind = train_mod.product_kind(ws)
    return kind, have[kind]


@st.cache_resource(max_entries=2, show_spinner=False)
def attributor(path: str, stamp: str) -> Attributor:
    """The workspace's product attributor with its encoders and manifolds, one per workspace version."""
    return predict.attributor_for(path)  # predict keeps its own cache too; this one adds per-key locking


def train_command(path: str) -> str:
    """The shell command that trains a workspace's attributors."""
    return f"manifpt train {shlex.quote(str(path))}"


# ---- one batch of uploads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Card:
    """One attributed image: the answer and what the page shows beside it."""

    result: predict.Result
    thumbnail: np.ndarray = field(repr=False)  # uint8 H x W x C, the upload as decoded (longest side <= THUMB_PX)
    converted: np.ndarray = field(repr=False)  # uint8 C x H x W, in the workspace's shape
    notes: tuple[str, ...] = ()  # conversions on the way (alpha dropped, resized, ...)
    domain_gap: str | None = None  # why the image is far from the workspace's images, or None
    evidence: dict = field(default_factory=dict, repr=False)  # this image's artifacts, features, logits (the set verdict)


@dataclass
class Outcome:
    """What one uploaded file gave: its images' cards and, per refused file or member, the reason."""

    cards: list[Card] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def thumbnail(array: np.ndarray, px: int = THUMB_PX) -> np.ndarray:
    """A copy of an H x W x C uint8 image whose longest side is at most px."""
    h, w = array.shape[:2]
    if max(h, w) <= px:
        return np.array(array)
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    pil.thumbnail((px, px), Image.Resampling.LANCZOS)
    return np.asarray(pil).reshape(pil.height, pil.width, -1)


def domain_gap(array: np.ndarray, shape: tuple[int, int, int], padded_from: tuple[int, int] | None = None) -> str | None:
    """Why an H x W x C upload is far from a workspace of C' x H' x W' images (None when it is not)."""
    c, h, w = shape
    ih, iw, ic = array.shape
    grey = ic == 1 or (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]))
    what = "a colour image" if (c == 1 and not grey) else "a grayscale image" if (c == 3 and grey) else None
    size = f"{iw}×{ih} pixels" if (ih, iw) != (h, w) and (ih, iw) != padded_from else None
    if what is None and size is None:
        return None
    this = f"{what} of {size}" if what and size else what or f"an image of {size}"
    kind = "grayscale" if c == 1 else "colour"
    return (f"Far from this workspace's images ({w}×{h} {kind}): this is {this}, so the answer may not mean much. "
            "Converting it can erase or invent the traces the attributor reads.")


def attribute_files(
    attributor: Attributor,
    files: list[tuple[str, str, bytes]],
    *,
    room: int = MAX_IMAGES,
    limits: uploads.Limits = LIMITS,
    top: int = TOP,
) -> dict[str, Outcome]:
    """Read, convert and attribute uploaded files given as (file id, name, bytes); one Outcome per file id.

    room: images still allowed in this batch (files attributed earlier count against MAX_IMAGES).
    """
    outcomes: dict[str, Outcome] = {}
    pending = []  # (file id, upload, image in the workspace's shape, notes)
    left = limits.max_decoded_bytes  # one budget on the decoded pixels of the whole batch, every file together
    for file_id, name, data in files:
        batch = uploads.read_uploads([(name, data)], limits=dataclasses.replace(limits, max_decoded_bytes=left))
        left -= sum(up.array.nbytes for up in batch.images)
        out = outcomes[file_id] = Outcome(errors=list(batch.errors))
        images = batch.images
        if len(images) > room:
            out.errors.append((name, f"{len(images) - room} image(s) not read: the page attributes at most "
                                     f"{MAX_IMAGES} images at once; remove some files or split the batch"))
            images = images[:max(room, 0)]
        room -= len(images)
        for up in images:
            try:
                x, notes = predict.to_domain(up.array, attributor.shape, padded_from=attributor.padded_from)
            except (ValueError, OSError) as err:
                out.errors.append((up.name, f"cannot convert the image to the workspace's shape ({err})"))
                continue
            pending.append((file_id, up, x, (*up.notes, *notes)))
    answers, arts, features, logits = [], {}, None, {}
    if pending:  # one projection per image: the set verdict reads the same evidence later
        arts, nearest, features, logits = attributor.forward(np.stack([p[2] for p in pending]))
        answers = attributor.answers(features, logits, nearest, top)
    for i, ((file_id, up, x, notes), answer) in enumerate(zip(pending, answers, strict=True)):
        status = "ok" if not notes else "warning: " + "; ".join(notes)
        result = predict.Result(file=up.name, status=status, sha256=up.sha256, **answer)
        gap = domain_gap(up.array, attributor.shape, attributor.padded_from)
        evidence = {"arts": {k: a[i] for k, a in arts.items()}, "features": features[i],
                    "logits": {k: z[i] for k, z in logits.items()}}
        outcomes[file_id].cards.append(Card(result, thumbnail(up.array), x, tuple(notes), gap, evidence))
    return outcomes


def results_table(cards: list[Card], decision) -> pd.DataFrame:
    """One row per attributed image: its SHA-256, verdict, attributed and most probable model, the
    runners-up, design choices, the scores beside their thresholds."""
    rows = []
    for c in cards:
        r = c.result
        row = {"file": r.file, "sha256": r.sha256, "verdict": r.verdict, "attributed": r.model or "",
               "model": r.top[0]["model"], "p_model": r.top[0]["p"],
               "top_models": "; ".join(f"{t['model']} {t['p']:.4f}" for t in r.top)}
        for head, v in r.design.items():
            row[head], row[f"p_{head}"] = v["value"], v["p"]
        row.update(p_real=r.p_real, real_threshold=round(float(decision.real_threshold), 4),
                   open_set_score=r.open_set_score, threshold=round(float(decision.unknown.threshold), 4),
                   **{f"nearest_real_{s}": i for s, i in r.nearest_real.items()},
                   domain="far" if c.domain_gap else "ok", notes="; ".join(c.notes))
        rows.append(row)
    return pd.DataFrame(rows)


def set_verdict(attributor: Attributor, cards: list[Card]) -> dict:
    """The verdict for every attributed upload as one source (predict.Attributor.set_verdict); ValueError
    when there are too few images."""
    e = [c.evidence for c in cards]
    arts = {k: np.stack([x["arts"][k] for x in e]) for k in e[0]["arts"]}
    logits = {k: np.stack([x["logits"][k] for x in e]) for k in e[0]["logits"]}
    return attributor.set_verdict(arts, np.stack([x["features"] for x in e]), logits)


# ---- uploads on the fingerprint map ----------------------------------------------------------------------


def upload_artifacts(attributor: Attributor, cards: list[Card], space: str) -> np.ndarray:
    """float32 N x D artifacts of attributed images in a space: embedding minus that of their nearest real image."""
    x = np.stack([c.converted for c in cards])
    emb = attributor.spaces[space].embed(x)
    nearest = np.array([c.result.nearest_real[space] for c in cards], dtype=np.int64)
    return (emb - attributor.manifolds[space].reference(nearest).to(emb.device)).float().cpu().numpy()


@st.cache_resource(max_entries=2, show_spinner=False)
def map_artifacts(path: str, stamp: str, space: str) -> np.ndarray:
    """float16 M x D artifacts of the mapped samples, in the rows' order of the space's fingerprint map."""
    from app import state

    ws, frame = state.open_workspace(path), state.map_frame(path, stamp, space)
    out = None
    for model, rows in frame.groupby("model", sort=False, observed=True).indices.items():
        index = frame["index"].to_numpy()[rows]
        arts = np.asarray(ws.artifacts(str(model), space)[np.sort(index)], dtype=np.float16)
        arts = arts[np.argsort(np.argsort(index))]  # back to the frame's order
        if out is None:
            out = np.empty((len(frame), arts.shape[1]), np.float16)
        out[rows] = arts
    out.setflags(write=False)  # shared by every session
    return out


def nearest_rows(queries: np.ndarray, reference: np.ndarray, k: int = NEIGHBOURS, chunk: int = 8192) -> np.ndarray:
    """int64 N x k: rows of reference nearest (L2) to each query row, nearest first."""
    import torch

    q = torch.as_tensor(np.asarray(queries, np.float32))
    k = min(k, len(reference))
    best_d = torch.full((len(q), k), float("inf"))
    best_i = torch.zeros((len(q), k), dtype=torch.int64)
    q2 = (q * q).sum(1, keepdim=True)
    for a in range(0, len(reference), chunk):  # never the whole N x M at once
        r = torch.as_tensor(np.asarray(reference[a:a + chunk], np.float32))
        d = q2 - 2 * q @ r.T + (r * r).sum(1)[None, :]
        d_all, i_all = torch.cat([best_d, d], 1), torch.cat([best_i, torch.arange(a, a + len(r)).expand(len(q), -1)], 1)
        best_d, pick = d_all.topk(k, dim=1, largest=False)
        best_i = i_all.gather(1, pick)
    return best_i.numpy()


def place_on_map(neighbours: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """float32 N x 2: per upload, the coordinate-wise median map position of its nearest mapped samples."""
    return np.median(np.asarray(xy, np.float32)[neighbours], axis=1).astype(np.float32)


# ---- the benchmark's results ---------------------------------------------------------------------------

RESULTS = "results.json"


def bench_dir(path: str) -> Path:
    """Where the page looks first: where `manifpt bench` writes by default."""
    from fingerprint_core.attribution.bench import default_out

    return default_out(path)


def bench_command(path: str, quick: bool = False) -> str:
    """The shell command that writes a workspace's benchmark where the page looks first."""
    extra = " --seeds 0 --lodo-folds 2 --train-per-model 300 --max-epochs 3" if quick else ""
    return f"manifpt bench {shlex.quote(str(path))} --out {shlex.quote(str(bench_dir(path)))}{extra}"


@st.cache_data(ttl=30, show_spinner=False)
def bench_runs(root: str, workspace: str) -> list[str]:
    """Folders holding a results.json: <workspace>-bench, then any beside the workspace or under the root (two levels)."""
    found = [bench_dir(workspace) / RESULTS, *Path(workspace).parent.glob(f"*/{RESULTS}")]
    found += [*Path(root).glob(f"*/{RESULTS}"), *Path(root).glob(f"*/*/{RESULTS}")]
    runs = list(dict.fromkeys(str(p.parent.resolve()) for p in found if p.is_file()))
    mine = [r for r in runs if _bench_workspace(r) == str(Path(workspace).resolve())]
    return mine + sorted(set(runs) - set(mine))  # this workspace's runs first, the documented place first among them


def _bench_workspace(run: str) -> str | None:
    """The workspace a results.json was made from (resolved), or None when it cannot be read."""
    try:
        return str(Path(json.loads((Path(run) / RESULTS).read_text())["workspace"]).resolve())
    except (OSError, ValueError, KeyError, TypeError):
        return None


@st.cache_data(max_entries=8, show_spinner=False)
def _bench_results(run: str, mtime_ns: int) -> dict:
    """A results.json, read once per version of the file."""
    return json.loads((Path(run) / RESULTS).read_text())


def bench_results(run: str) -> dict:
    """The results document of a benchmark folder (OSError or ValueError when unreadable)."""
    doc = _bench_results(run, (Path(run) / RESULTS).stat().st_mtime_ns)
    if not isinstance(doc, dict) or not isinstance(doc.get("summary"), list):
        raise ValueError("it has no 'summary' list: not written by `manifpt bench`")
    return doc


def bench_seconds(doc: dict) -> float:
    """Compute time of a benchmark: the seconds recorded by every finished part and fold."""
    total = 0.0
    for by_proto in doc.get("parts", {}).values():
        for by_seed in by_proto.values():
            for part in by_seed.values():
                total += float(part.get("seconds", 0) or 0)
                total += sum(float(f.get("seconds", 0) or 0) for f in part.get("folds", []) if isinstance(f, dict))
    return total


def bench_estimate(ws: Workspace, seeds: int = 3, lodo_folds: int = 6, openset_folds: int = 5) -> str:
    """A rough duration of a default benchmark, from the training times `manifpt train` recorded here."""
    fits = 2 * seeds + lodo_folds + openset_folds  # closed and twins per seed, one fit per fold
    have = trained_kinds(ws)
    if not have:
        return (f"Each method is trained about {fits} times (closed set and twins per seed, one fit per held-out "
                "design and open-set fold): minutes on a small workspace, hours on a CPU for the demo.")
    spent = sum(float(e.get("seconds", 0)) for e in have.values())
    return (f"Each method is trained about {fits} times (closed set and twins per seed, one fit per held-out design "
            f"and open-set fold). Training ManiFPT's {len(have)} attributor(s) once took {duration(spent)} here, so "
            f"ManiFPT alone needs roughly {duration(fits * spent)}; the six baselines add about as much again.")


def duration(seconds: float) -> str:
    """A rough human duration: '40 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def modified(run: str) -> str:
    """When a results.json was last written, local time."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime((Path(run) / RESULTS).stat().st_mtime))
