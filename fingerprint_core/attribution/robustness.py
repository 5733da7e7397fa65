"""Robustness: the benchmark's fixed perturbations (protocol c: JPEG 50 / 75 / 90, down-and-up
scaling by 0.5, noise), the re-projection of new images (so ManiFPT's artifacts are recomputed from
perturbed images as a user's images would be: embedded, nearest real image found again), and robust
training: a seeded perturbation recipe (`augment`, in the style of Wang et al. CVPR 2020) and the
banks of re-projected artifacts of perturbed training images that `manifpt train --robust` and
`manifpt bench --robust` train on.

Bank layout (workspace entries, beside the rest; docs/attribution.md)::

    WS/robust/<space>/<model>-c<copy>-<key>/artifacts.npy   float16 N x D: the artifacts of the
                                                             images after the bank's Transform (default
                                                             augment(images, seed=copy, ids=rows))
    WS/robust/<space>/<model>-c<copy>-<key>/index.npy       int64 N: the sample index of each row

<key> hashes the model's artifact entry in that space, its images, the transform's recipe, the copy and the
rows, so a rerun finds a finished bank by its name. One entry per (space, model, copy): a killed
run keeps every finished one and computes only the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fingerprint_core.workspace import Workspace, key_of

JPEG_QUALITY = 75  # the headline JPEG column (jpeg75)
JPEG_QUALITIES = {"jpeg50": 50, "jpeg75": 75, "jpeg90": 90}
NOISE_SIGMA = 2.0  # in pixel codes: 2/255 of the [0, 1] range
NOISE_SEED = 0
PERTURBATIONS = ("jpeg50", "jpeg75", "jpeg90", "down2", "noise2")  # down2: resize by 0.5 and back
LABELS = {"jpeg50": "JPEG 50", "jpeg75": "JPEG 75", "jpeg90": "JPEG 90", "down2": "resize 0.5", "noise2": "noise 2/255"}

# ---- the training recipe (Wang et al. 2020 style: each operation with probability P, per image) ------
RECIPE_VERSION = 1  # bump when augment would give other images for the same (images, seed, ids, p)
P = 0.5
JPEG_RANGE = (50, 100)  # quality, uniform integers
RESIZE_RANGE = (0.5, 1.0)  # scale factor, uniform: antialiased down, bilinear or bicubic back up
NOISE_RANGE = (0.0, 3.0)  # Gaussian sigma in pixel codes (/255), uniform
BLUR_RANGE = (0.0, 1.0)  # Gaussian blur sigma in pixels, uniform
BANKS = "robust"  # top-level folder of the banks in a workspace (no writer's commit collects it)
BANK_VERSION = 1
BANK_CHUNK = 1024  # rows re-projected and written per step


def perturb(images: np.ndarray, kind: str, *, seed: int = NOISE_SEED) -> np.ndarray:
    """uint8 N x C x H x W after one of PERTURBATIONS (seeded where random)."""
    from fingerprint_core.attribution.baselines.wang20 import jpeg

    x = np.asarray(images)
    if kind in JPEG_QUALITIES:
        return np.stack([jpeg(img, JPEG_QUALITIES[kind]) for img in x]) if len(x) else x.copy()
    if kind == "down2":
        # antialiased bilinear down (the average of each 2 x 2 block), plain bilinear back up
        return down_up(x, 0.5)
    if kind == "noise2":
        noise = np.random.default_rng(seed).normal(0.0, NOISE_SIGMA, x.shape)
        return np.clip(np.rint(x + noise), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}")


def down_up(images: np.ndarray, factor: float, mode: str = "bilinear") -> np.ndarray:
    """uint8 N x C x H x W resized by factor (antialiased bilinear down) and back to H x W (mode: bilinear | bicubic)."""
    x = np.asarray(images)
    if len(x) == 0:
        return x.copy()
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    h, w = t.shape[-2:]
    small = F.interpolate(t, size=(max(1, int(h * factor)), max(1, int(w * factor))), mode="bilinear",
                          antialias=True, align_corners=False)
    back = F.interpolate(small, size=(h, w), mode=mode, align_corners=False)
    return back.round().clamp(0, 255).to(torch.uint8).numpy()


def add_noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 images plus Gaussian noise of sigma pixel codes, rounded and clipped."""
    x = np.asarray(images)
    return np.clip(np.rint(x + rng.normal(0.0, sigma, x.shape)), 0, 255).astype(np.uint8)


def recipe(p: float = P) -> dict:
    """The training recipe as data (part of every key that depends on it)."""
    return {"version": RECIPE_VERSION, "p": float(p), "jpeg_quality": list(JPEG_RANGE), "resize": list(RESIZE_RANGE),
            "noise_sigma_codes": list(NOISE_RANGE), "blur_sigma_px": list(BLUR_RANGE),
            "order": ["resize", "blur", "noise", "jpeg"]}


def augment(images: np.ndarray, seed: int, *, ids: np.ndarray | None = None, p: float = P) -> np.ndarray:
    """uint8 N x C x H x W after the training recipe: per image, each with probability p, down-and-up
    resizing by U[0.5, 1] (bilinear or bicubic back), Gaussian blur sigma U[0, 1] px, Gaussian noise
    sigma U[0, 3/255], JPEG quality U{50..100}, in that order (compression last, as a shared image
    gets it). Image i draws from its own generator (seed, ids[i]) (ids default: 0..N-1), so a chunk
    of rows is perturbed as it would be in the whole array."""
    from fingerprint_core.attribution.baselines.wang20 import gaussian_blur, jpeg

    x = np.asarray(images)
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"augment takes uint8 N x C x H x W images; got {x.dtype} {x.shape}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p}: a probability in [0, 1]")
    ids = np.arange(len(x)) if ids is None else np.asarray(ids, np.int64)
    if len(ids) != len(x):
        raise ValueError(f"{len(ids)} ids for {len(x)} images")
    out = np.array(x, copy=True)
    for i in range(len(x)):
        rng = np.random.default_rng([RECIPE_VERSION, int(seed), int(ids[i])])
        on = rng.random(4) < p  # resize, blur, noise, jpeg: every draw made, used or not (stable streams)
        factor, bicubic = rng.uniform(*RESIZE_RANGE), rng.random() < 0.5
        blur, noise = rng.uniform(*BLUR_RANGE), rng.uniform(*NOISE_RANGE)
        quality = int(rng.integers(JPEG_RANGE[0], JPEG_RANGE[1] + 1))
        img = out[i : i + 1]
        if on[0]:
            img = down_up(img, factor, "bicubic" if bicubic else "bilinear")
        if on[1]:
            img = gaussian_blur(img, np.array([blur]))
        if on[2]:
            img = add_noise(img, noise, rng)
        if on[3]:
            img = jpeg(img[0], quality)[None]
        out[i] = img[0]
    return out


class Reprojector:
    """Artifacts of new images in a workspace's spaces: embed, exact nearest real image, difference
    (the same spaces and manifold the workspace was fingerprinted with)."""

    def __init__(self, ws: Workspace, *, device: str = "auto") -> None:
        self.ws, self.device = ws, device
        self._spaces: dict = {}

    def _space(self, name: str):
        from fingerprint_core import devices
        from fingerprint_core.attribution.workspace_spaces import workspace_space
        from fingerprint_core.manifold import Manifold

        if name not in self._spaces:  # the encoder the workspace was built with, found as attribution finds it
            space = workspace_space(self.ws, name, devices.resolve(self.device))
            self._spaces[name] = (space, Manifold(self.ws.space_reference(name), device=self.device))
        return self._spaces[name]

    def artifacts(self, images: np.ndarray, space: str) -> np.ndarray:
        """float32 N x D artifacts, rounded through float16 as the workspace stores them."""
        from fingerprint_core import artifacts

        sp, manifold = self._space(space)
        parts = [artifacts.compute(sp, np.asarray(images[a:a + 4096]), manifold).cpu().numpy()
                 for a in range(0, len(images), 4096)]
        arts = np.concatenate(parts) if parts else np.zeros((0, sp.dim(tuple(images.shape[1:]))), np.float32)
        return arts.astype(np.float16).astype(np.float32)


# ---- banks: re-projected artifacts of perturbed training images -----------------------------------

@dataclass(frozen=True)
class Transform:
    """What a bank's images go through before re-projection: its recipe as data (part of every bank
    key) and apply(uint8 images, copy, ids) -> uint8 images, deterministic in (copy, ids)."""

    recipe: dict
    apply: Callable[[np.ndarray, int, np.ndarray], np.ndarray]


def training_transform(p: float = P) -> Transform:
    """The robust-training recipe (augment with probability p) as a bank transform."""
    return Transform(recipe(p), lambda images, copy, ids: augment(images, copy, ids=ids, p=p))


def bank_rel(ws: Workspace, space: str, model: str, copy: int, index: np.ndarray, transform: Transform) -> str:
    """The entry folder of one bank: the artifacts of one model's rows after transform (copy)."""
    entry = ws.manifest["models"][model]
    key = key_of(BANK_VERSION, entry["spaces"][space]["key"], entry["images"]["key"], ws.config.get("algorithm"),
                 transform.recipe, int(copy), np.asarray(index, np.int64).tolist())
    return f"{BANKS}/{space}/{model}-c{int(copy)}-{key}"


def banks(ws: Workspace, table, rows: np.ndarray, space: str, copies: int = 1, *, p: float = P,
          transform: Transform | None = None, reprojector: Reprojector | None = None,
          log=lambda message: None) -> list[np.ndarray]:
    """Per copy c < copies, float32 len(rows) x D: the artifacts (through the space and the exact
    manifold, Reprojector.artifacts) of the rows' images after transform (default: augment at p,
    seed=c, ids=rows), rows being positions in the split table (model, index). Finished banks are
    read back from the workspace; missing ones are computed and written as entries in chunks (the
    caller holds the writer lock, or accepts that two runs may compute the same bank; the entry
    write keeps the first)."""
    from fingerprint_core.workspace import load_npy

    transform = transform or training_transform(p)
    rows = np.asarray(rows, np.int64)
    sub = table.iloc[rows]
    reprojector = reprojector or Reprojector(ws)
    out = []
    for c in range(int(copies)):
        parts, order = [], []
        for model, group in sub.groupby("model", sort=False):
            pos = np.flatnonzero((sub["model"] == model).to_numpy())
            idx = group["index"].to_numpy(np.int64)
            sort = np.argsort(idx, kind="stable")
            pos, idx, ids = pos[sort], idx[sort], rows[pos[sort]]
            rel = bank_rel(ws, space, model, c, idx, transform)
            if ws.verified(rel) is None:
                log(f"re-projecting transformed copy {c} of {model} ({len(idx)} images) in {space}")
                _write_bank(ws, rel, space, model, idx, ids, c, transform, reprojector)
            parts.append(np.asarray(load_npy(ws.file(rel, "artifacts.npy"), ws.path), np.float32))
            order.append(pos)
        back = np.empty(len(rows), np.int64)
        if order:
            back[np.concatenate(order)] = np.arange(len(rows))
        arts = np.concatenate(parts)[back] if parts else np.zeros((0, 0), np.float32)
        out.append(arts)
    return out


def _write_bank(ws: Workspace, rel: str, space: str, model: str, idx: np.ndarray, ids: np.ndarray, copy: int,
                transform: Transform, reprojector: Reprojector) -> None:
    images = ws.images(model)
    meta = {"space": space, "model": model, "copy": int(copy), "recipe": transform.recipe,
            "artifacts": ws.manifest["models"][model]["spaces"][space]["key"]}
    with ws.entry(rel, meta=meta) as e:
        e.put_array("index.npy", idx)
        stream = None
        for a in range(0, len(idx), BANK_CHUNK):
            aug = transform.apply(np.asarray(images[idx[a:a + BANK_CHUNK]]), copy, ids[a:a + BANK_CHUNK])
            arts = reprojector.artifacts(aug, space).astype(np.float16)
            if stream is None:
                stream = e.array("artifacts.npy", (len(idx), arts.shape[1]), np.float16)
            stream.write(arts)
        if stream is None:  # no rows
            e.put_array("artifacts.npy", np.zeros((0, 0), np.float16))
