"""Small CNN encoders for the learned spaces (SL, SSL), stored as safetensors with their config.

A file holds the state dict and, in its metadata, the config needed to rebuild the network, so
loading never unpickles anything. Training lives in `encoder_training`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from fingerprint_core.fsio import atomic_write

# Bumped whenever the same config would build a different network, so that an old file is
# refused instead of loading its weights into layers that mean something else.
ARCH_VERSION = 2

# Images per forward pass inside features(): 256 kept the activations in cache and was the
# fastest of 128 / 256 / 1024 / 2048 on our 2-core CPU (channels_last, float32).
_CHUNK = 256


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture and input normalisation of a ConvEncoder: all a file needs to rebuild it."""

    in_channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128)  # per stage: a stride-2 conv to this width, then a stride-1 conv
    feature_dim: int = 128  # penultimate features: the SL / SSL embedding
    num_outputs: int = 10  # classifier classes (SL) or projection size (SSL)
    head_hidden: int = 0  # 0: a linear head (classifier); > 0: an MLP projector this wide (SSL)
    # 0: the features are the penultimate layer, ReLU(embed(global pool)); g >= 1: the last conv map
    # average-pooled to g x g (C * g * g features), and embed + head serve training only
    feature_grid: int = 0
    image_size: int = 32  # the size it was trained on (informational: any size embeds)
    mean: float = 0.5  # input normalisation of pixels in [0, 1]
    std: float = 0.5

    def __post_init__(self) -> None:
        if self.in_channels < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError(f"in_channels={self.in_channels} and widths={self.widths} must be positive")
        if self.feature_dim < 1 or self.num_outputs < 1 or self.head_hidden < 0 or self.feature_grid < 0:
            raise ValueError(
                f"feature_dim={self.feature_dim}, num_outputs={self.num_outputs} must be >= 1, "
                f"head_hidden={self.head_hidden} and feature_grid={self.feature_grid} >= 0"
            )
        if self.std <= 0:
            raise ValueError(f"std={self.std} must be positive")


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)  # BatchNorm supplies the bias
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ConvEncoder(nn.Module):
    """Conv stages -> global average pool -> embed (feature_dim) -> head (classes or projection).

    The space's features are the embed layer's output, or with feature_grid = g the last conv map
    pooled to g x g.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers, c = [], cfg.in_channels
        for w in cfg.widths:
            # downsampling first: the full-resolution maps of a stride-1 first conv cost twice the
            # time (memory traffic) for no measurable accuracy on 32 x 32 garments
            layers += _conv_bn_relu(c, w, 2) + _conv_bn_relu(w, w, 1)
            c = w
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(c, cfg.feature_dim)
        if cfg.head_hidden:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(cfg.feature_dim, cfg.head_hidden), nn.BatchNorm1d(cfg.head_hidden),
                nn.ReLU(inplace=True), nn.Linear(cfg.head_hidden, cfg.num_outputs),
            )
        else:
            self.head = nn.Linear(cfg.feature_dim, cfg.num_outputs)
        # oneDNN's channels_last convolutions ran 2-3x faster than NCHW here
        self.to(memory_format=torch.channels_last)

    @property
    def out_dim(self) -> int:
        """Length of a feature vector."""
        g = self.cfg.feature_grid
        return self.cfg.widths[-1] * g * g if g else self.cfg.feature_dim

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x - self.cfg.mean) / self.cfg.std).contiguous(memory_format=torch.channels_last)
        return self.body(x)  # (N, C, h, w)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input (N x feature_dim) for float pixels in [0, 1], N x C x H x W (differentiable)."""
        return torch.relu(self.embed(self._body(x).mean(dim=(2, 3))))

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """The space's features (N x out_dim) of float pixels in [0, 1]."""
        if not self.cfg.feature_grid:
            return self.encode(x)
        return F.adaptive_avg_pool2d(self._body(x), self.cfg.feature_grid).flatten(1)

    def _chunked(self, fn, x_uint8: torch.Tensor, dim: int) -> torch.Tensor:
        if x_uint8.dtype != torch.uint8:
            raise TypeError(f"expected uint8 pixel codes, got {x_uint8.dtype}")
        if len(x_uint8) == 0:
            return torch.empty((0, dim), device=x_uint8.device)
        return torch.cat([fn(x_uint8[a : a + _CHUNK].to(torch.float32) / 255) for a in range(0, len(x_uint8), _CHUNK)])

    def features(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """The space's features (N x out_dim, float32) of uint8 images N x C x H x W."""
        return self._chunked(self.readout, x_uint8, self.out_dim)

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """Head outputs (class logits or projections) of uint8 images."""
        return self._chunked(lambda x: self.head(self.encode(x)), x_uint8, self.cfg.num_outputs)


def macs_per_image(cfg: EncoderConfig, image_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-adds of features() for one image (convolutions, and the embed layer when used; no head)."""
    size = cfg.image_size if image_size is None else image_size
    h, w = (size, size) if isinstance(size, int) else size
    total, c = 0, cfg.in_channels
    for width in cfg.widths:
        h, w = (h + 1) // 2, (w + 1) // 2  # 3 x 3, stride 2, padding 1
        total += h * w * 9 * (c * width + width * width)
        c = width
    return total + (0 if cfg.feature_grid else c * cfg.feature_dim)


def num_params(model: ConvEncoder, *, features_only: bool = True) -> int:
    """Parameters of the network (of the features path alone by default)."""
    unused = ("head.",) + (("embed.",) if model.cfg.feature_grid else ())
    return sum(p.numel() for name, p in model.named_parameters() if not (features_only and name.startswith(unused)))


def save(model: ConvEncoder, path: str | os.PathLike, **info: object) -> None:
    """Write weights and config (plus info, e.g. accuracy, as strings) to a safetensors file, atomically."""
    meta = {
        "config": json.dumps(asdict(model.cfg)), "arch_version": str(ARCH_VERSION),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()},
    }
    atomic_write(path, safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, metadata=meta))


def load(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[ConvEncoder, dict]:
    """Rebuild an encoder from a safetensors file; returns (model in eval mode, metadata)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    if "config" not in meta:
        raise ValueError(f"{path}: no encoder config in the safetensors metadata")
    if meta.get("arch_version") != str(ARCH_VERSION):
        raise ValueError(
            f"{path}: made for encoder architecture version {meta.get('arch_version', 1)}, this "
            f"version builds {ARCH_VERSION}; retrain it with `manifpt encoders train`"
        )
    raw = json.loads(meta["config"])
    known = {f.name for f in fields(EncoderConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown encoder config field(s) {', '.join(unknown)}")
    raw["widths"] = tuple(raw["widths"])
    model = ConvEncoder(EncoderConfig(**raw))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the config ({err})") from None
    meta["feature_dim"] = model.out_dim  # what spaces.EncoderSpace.dim() reports
    return model.to(device).eval(), meta
