"""Embedding spaces behind one interface and one registry: RGB, FREQ, and the learned SL / SSL.

Every space maps uint8 images (N x C x H x W) to float32 embeddings (N x D) on its device. The
registry, in the manner of timm's, is the one place that knows what a space is:

    spaces.names()                 registered names, in registration order
    spaces.get("sl", weights=p)    a space instance (options are the space's own)
    spaces.info("freq")            what the rest of the code may ask of a space (SpaceInfo)
    spaces.register("mine", build, summary=..., image_shaped=..., ...)

Code outside this module asks SpaceInfo (image-shaped? pixel-exact? learned?) and never tests a
space's name (and it imports torch only when a space is built, so the app starts light).
Spaces of one's own come in through $MANIFPT_PLUGINS (comma-separated modules that
call register() when imported).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fingerprint_core.fsio import sha256_file

if TYPE_CHECKING:
    import torch

FREQ_EPS = 1e-12  # the paper's epsilon inside log(|F| + eps)
ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class SpaceInfo:
    """What a space is, for every caller that must treat spaces differently."""

    name: str
    build: Callable[..., Space]
    summary: str
    image_shaped: bool = False  # embeddings reshape to the image's C x H x W (drawn as images, conv attributor)
    pixel_exact: bool = False  # embedding = code / 255: the reference is kept as uint8 codes, searched by codes
    learned: bool = False  # needs a weights file (option `weights`)
    fused: bool = False  # one of the paper's spaces, read together by the fused attributor
    dim_from_image: bool = True  # D follows the image's shape (else the network's width)
    artifact_label: str = "φ(x) − φ(x*)"  # how the app titles an artifact of this space
    # how `manifpt encoders train` makes a learned space's offline default encoder from the real images:
    # "classifier" (cross-entropy on their class labels) or "simclr" (contrastive, no labels); "" = none
    encoder_objective: str = ""


_REGISTRY: dict[str, SpaceInfo] = {}
_PLUGINS_LOADED: set[str] = set()


def register(name: str, build: Callable[..., Space], *, summary: str, replace: bool = False, **flags: bool | str) -> SpaceInfo:
    """Add a space: build(**options) -> Space, with its SpaceInfo flags."""
    key = name.lower()
    if not key.replace("_", "").replace("-", "").isalnum() or key in ("fused", "images"):
        raise ValueError(f"space name {name!r}: use letters, digits, '-' or '_' (not 'fused' or 'images')")
    if key in _REGISTRY and not replace:
        raise ValueError(f"a space called {key!r} is registered already")
    _REGISTRY[key] = SpaceInfo(key, build, summary, **flags)
    return _REGISTRY[key]


def unregister(name: str) -> None:
    _REGISTRY.pop(name.lower(), None)


def _load_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get("MANIFPT_PLUGINS", "").split(","))):
        if module not in _PLUGINS_LOADED:
            _PLUGINS_LOADED.add(module)
            importlib.import_module(module)


def names() -> tuple[str, ...]:
    """Every registered space, the paper's four first."""
    _load_plugins()
    return tuple(_REGISTRY)


def fused_names() -> tuple[str, ...]:
    """The spaces the fused attributor reads together (the paper's RGB, FREQ, SL, SSL)."""
    return tuple(n for n in names() if _REGISTRY[n].fused)


def info(name: str) -> SpaceInfo:
    _load_plugins()
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown space {name!r}; choose one of {', '.join(_REGISTRY)}"
                         " (spaces of your own: $MANIFPT_PLUGINS)")
    return _REGISTRY[key]


def get(name: str, **options) -> Space:
    """An instance of the space called name; options go to its builder (device, batch_size, weights, ...)."""
    return info(name).build(**options)


def _as_uint8_tensor(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate N x C x H x W uint8 images and return them as a CPU tensor (no copy if possible)."""
    import torch

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

    def __init__(self, *, device: str | torch.device = "auto", batch_size: int = 2048) -> None:
        from fingerprint_core import devices

        self.device = devices.resolve(device)
        self.batch_size = int(batch_size)

    @property
    def info(self) -> SpaceInfo:
        return info(self.name)

    def embed(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 N x D embeddings of uint8 N x C x H x W images."""
        import torch

        x = _as_uint8_tensor(images)
        with torch.no_grad():
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

    def preprocessing(self) -> dict:
        """How images are prepared before the embedding (recorded in the workspace config)."""
        return {"input": "uint8 codes / 255"}

    def source(self) -> str | None:
        """The weights file a learned space was loaded from (so a workspace can find it again)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device})"


class RGBSpace(Space):
    """Pixels in [0, 1]: code / 255 in float32, flattened."""

    name = "rgb"

    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255).reshape(len(x), -1)

    def dim(self, image_shape):
        return int(np.prod(image_shape))


class FreqSpace(Space):
    """Per channel log(|fftshift(fft2(x))| + 1e-12) of x in [0, 1], flattened.

    The transform runs in float64 so an image's embedding does not depend on its batch, then is
    stored as float32.
    """

    name = "freq"

    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        f = torch.fft.fftshift(torch.fft.fft2(x.double() / 255), dim=(-2, -1))
        return torch.log(f.abs() + FREQ_EPS).float().reshape(len(x), -1)

    def dim(self, image_shape):
        return int(np.prod(image_shape))

    def identity(self):
        return {"name": self.name, "eps": FREQ_EPS}

    def preprocessing(self):
        return {"input": "uint8 codes / 255", "transform": "log(|fftshift(fft2)| + 1e-12) per channel, float64"}


class EncoderSpace(Space):
    """Penultimate features of a small CNN whose weights come from a safetensors file (SL, SSL)."""

    def __init__(self, name: str, weights: str | os.PathLike, **kw) -> None:
        from fingerprint_core import encoders  # torch.nn models live apart from the registry

        super().__init__(**kw)
        self.name = name
        self.weights = Path(weights)
        self.encoder, self.meta = encoders.load(self.weights, device=self.device)
        self._sha = sha256_file(self.weights)

    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(x).float()

    def dim(self, image_shape):
        return int(self.meta["feature_dim"])

    def identity(self):
        return {"name": self.name, "weights_sha256": self._sha}

    def preprocessing(self):
        cfg = self.encoder.cfg
        return {"input": "uint8 codes / 255", "mean": cfg.mean, "std": cfg.std, "resize": None,
                "trained_at": cfg.image_size, "network": "small CNN encoder"}

    def source(self):
        return str(self.weights.resolve())


class BackboneSpace(Space):
    """Features of a standard backbone (ResNet-50, ViT-S/14) loaded from its official weights file."""

    def __init__(self, name: str, weights: str | os.PathLike, backbone: str = "auto", **kw) -> None:
        from fingerprint_core import backbones

        super().__init__(**kw)
        self.name = name
        self.weights = Path(weights)
        self.net, self.prep, self.meta = backbones.load(backbone, self.weights, device=self.device)
        self._backbones = backbones

    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self._backbones.embed(self.net, self.prep, x, batch_size=len(x)).to(self.device)

    def dim(self, image_shape):
        return int(self.meta["feature_dim"])

    def identity(self):
        return {"name": self.name, "backbone": self.meta["name"], "weights_sha256": self.meta["sha256"],
                "preprocessing": self.prep.as_dict()}

    def preprocessing(self):
        return {"network": self.meta["name"], **self.prep.as_dict()}

    def source(self):
        return str(self.weights.resolve())


def default_weights(name: str) -> Path:
    """Where the encoder weights of a learned space are looked for ($MANIFPT_ENCODERS, then assets/)."""
    root = Path(os.environ.get("MANIFPT_ENCODERS", ASSETS / "encoders"))
    return root / f"{name}.safetensors"


def _learned(name: str):
    """Builder of a learned space: the small encoder by default, a standard backbone from its file."""

    def build(*, weights: str | os.PathLike | None = None, backbone: str = "auto", **kw) -> Space:
        path = Path(weights) if weights else default_weights(name)
        if not path.is_file():
            raise FileNotFoundError(
                f"no weights for the {name.upper()} space at {path}; train a pair with "
                "`manifpt encoders train DATA_ROOT`, or give a .safetensors encoder or a ResNet-50 / "
                "ViT-S/14 weights file (--weights)"
            )
        if backbone in ("auto", "small") and _is_small_encoder(path):
            return EncoderSpace(name, path, **kw)
        if backbone == "small":
            raise ValueError(f"{path}: not a small-encoder safetensors file (no encoder config in its metadata)")
        return BackboneSpace(name, path, backbone=backbone, **kw)

    return build


def _is_small_encoder(path: Path) -> bool:
    """A safetensors file written by encoders.save (its metadata holds the encoder config)."""
    if path.suffix != ".safetensors":
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return "config" in (f.metadata() or {})
    except (SafetensorError, OSError):
        return True  # let the encoder loader name the problem


register("rgb", RGBSpace, summary="pixels in [0, 1]", image_shaped=True, pixel_exact=True, fused=True,
         artifact_label="x − x*")
register("freq", FreqSpace, summary="log magnitude spectrum per channel", image_shaped=True, fused=True,
         artifact_label="Δ log|F|")
register("sl", _learned("sl"), summary="supervised encoder features (small CNN, or ResNet-50 from its weights)",
         learned=True, fused=True, dim_from_image=False, encoder_objective="classifier")
register("ssl", _learned("ssl"), summary="self-supervised encoder features (small CNN, or Barlow Twins ResNet-50 / "
         "DINOv2 ViT-S/14 from their weights)", learned=True, fused=True, dim_from_image=False,
         encoder_objective="simclr")
