"""Protocol c of the benchmark: the perturbations (JPEG, down-and-up scaling, noise) and the
re-projection of perturbed images, so ManiFPT's artifacts are recomputed from them as a user's
images would be (embedded, nearest real image found again)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fingerprint_core.workspace import Workspace

JPEG_QUALITY = 75
NOISE_SIGMA = 2.0  # in pixel codes: 2/255 of the [0, 1] range
NOISE_SEED = 0
PERTURBATIONS = ("jpeg75", "down2", "noise2")


def perturb(images: np.ndarray, kind: str, *, seed: int = NOISE_SEED) -> np.ndarray:
    """uint8 N x C x H x W after one of PERTURBATIONS (seeded where random)."""
    from fingerprint_core.attribution.baselines.wang20 import jpeg

    x = np.asarray(images)
    if kind == "jpeg75":
        return np.stack([jpeg(img, JPEG_QUALITY) for img in x]) if len(x) else x.copy()
    if kind == "down2":
        t = torch.from_numpy(np.ascontiguousarray(x)).float()
        h, w = t.shape[-2:]
        # antialiased bilinear down (the average of each 2 x 2 block), plain bilinear back up
        small = F.interpolate(t, size=(max(1, h // 2), max(1, w // 2)), mode="bilinear", antialias=True, align_corners=False)
        back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        return back.round().clamp(0, 255).to(torch.uint8).numpy()
    if kind == "noise2":
        noise = np.random.default_rng(seed).normal(0.0, NOISE_SIGMA, x.shape)
        return np.clip(np.rint(x + noise), 0, 255).astype(np.uint8)
    raise ValueError(f"unknown perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}")


class Reprojector:
    """Artifacts of new images in a workspace's spaces: embed, exact nearest real image, difference
    (the same spaces and manifold the workspace was fingerprinted with)."""

    def __init__(self, ws: Workspace, *, device: str = "auto") -> None:
        self.ws, self.device = ws, device
        self._spaces: dict = {}

    def _space(self, name: str):
        from fingerprint_core import devices
        from fingerprint_core.attribution.predict import workspace_space
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
