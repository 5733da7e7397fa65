"""Embedding spaces behind one interface: RGB, FREQ, and the learned SL / SSL encoders.

Every space maps uint8 images (N x C x H x W) to float32 embeddings (N x D) on its device.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from fingerprint_core import devices

FREQ_EPS = 1e-12  # the paper's epsilon inside log(|F| + eps)
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _as_uint8_tensor(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate N x C x H x W uint8 images and return them as a CPU tensor (no copy if possible)."""
    if isinstance(images, torch.Tensor):
        t = images
    else:
        a = np.asarray(images)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())  # memmaps are read-only
    if t.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 pixel codes, got {t.dtype}")
    if t.ndim != 4:
        raise ValueError(f"images must be N x C x H x W, got shape {tuple(t.shape)}")
    return t


class Space:
    """An embedding space: a name, a device and a batched, deterministic embed()."""

    name = "space"
    image_shaped = False  # True when an embedding reshapes to the image's C x H x W

    def __init__(self, *, device: str | torch.device = "auto", batch_size: int = 2048) -> None:
        self.device = devices.resolve(device)
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def embed(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 N x D embeddings of uint8 N x C x H x W images."""
        x = _as_uint8_tensor(images)
        parts = [self._embed_batch(x[a : a + self.batch_size].to(self.device)) for a in range(0, len(x), self.batch_size)]
        if not parts:
            return torch.empty((0, self.dim(tuple(x.shape[1:]))), dtype=torch.float32, device=self.device)
        return torch.cat(parts)

    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dim(self, image_shape: tuple[int, int, int]) -> int:
        """Embedding dimension for images of shape C x H x W."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What decides this space's numbers (cache keys in a workspace)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device})"


class RGBSpace(Space):
    """Pixels in [0, 1]: code / 255 in float32, flattened."""

    name = "rgb"
    image_shaped = True

    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) / 255).reshape(len(x), -1)

    def dim(self, image_shape):
        return int(np.prod(image_shape))


class FreqSpace(Space):
    """Per channel log(|fftshift(fft2(x))| + 1e-12) of x in [0, 1], flattened.

    The transform runs in float64 so an image's embedding does not depend on its batch, then is
    stored as float32.
    """

    name = "freq"
    image_shaped = True

    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.fft.fftshift(torch.fft.fft2(x.to(torch.float64) / 255), dim=(-2, -1))
        return torch.log(f.abs() + FREQ_EPS).to(torch.float32).reshape(len(x), -1)

    def dim(self, image_shape):
        return int(np.prod(image_shape))

    def identity(self):
        return {"name": self.name, "eps": FREQ_EPS}


class EncoderSpace(Space):
    """Penultimate features of a small CNN whose weights come from a safetensors file (SL, SSL)."""

    image_shaped = False

    def __init__(self, name: str, weights: str | os.PathLike, **kw) -> None:
        from fingerprint_core import encoders  # torch.nn models live apart from the registry

        super().__init__(**kw)
        self.name = name
        self.weights = Path(weights)
        if not self.weights.is_file():
            raise FileNotFoundError(
                f"no weights for the {name.upper()} space at {self.weights}; "
                "train a pair with `manifpt encoders train DATA_ROOT` or point to a .safetensors file"
            )
        self.encoder, self.meta = encoders.load(self.weights, device=self.device)
        self._sha = hashlib.sha256(self.weights.read_bytes()).hexdigest()

    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x).to(torch.float32)

    def dim(self, image_shape):
        return int(self.meta["feature_dim"])

    def identity(self):
        return {"name": self.name, "weights_sha256": self._sha}


SPACES = ("rgb", "freq", "sl", "ssl")


def default_weights(name: str) -> Path:
    """Where the encoder weights of a learned space are looked for ($MANIFPT_ENCODERS, then assets/)."""
    root = Path(os.environ.get("MANIFPT_ENCODERS", ASSETS / "encoders"))
    return root / f"{name}.safetensors"


def get(name: str, *, device: str | torch.device = "auto", weights: str | os.PathLike | None = None, batch_size: int = 2048) -> Space:
    """The space called name: "rgb" | "freq" | "sl" | "ssl"."""
    key = name.lower()
    if key == "rgb":
        return RGBSpace(device=device, batch_size=batch_size)
    if key == "freq":
        return FreqSpace(device=device, batch_size=batch_size)
    if key in ("sl", "ssl"):
        return EncoderSpace(key, weights or default_weights(key), device=device, batch_size=batch_size)
    raise ValueError(f"unknown space {name!r}; choose one of {', '.join(SPACES)}")
