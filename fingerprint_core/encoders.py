"""Small CNN encoders for the learned spaces, stored as safetensors with their config.

A file holds the state dict and, in its metadata, the config needed to rebuild the network, so
loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    in_channels: int = 1
    widths: tuple[int, ...] = (32, 64, 128)  # one stride-2 stage each
    feature_dim: int = 128  # penultimate features: the SL / SSL embedding
    num_outputs: int = 10  # classifier classes (SL) or projector size (SSL)
    image_size: int = 32
    mean: float = 0.5  # input normalisation of pixels in [0, 1]
    std: float = 0.5


class ConvEncoder(nn.Module):
    """Conv stages -> global average pool -> feature_dim features -> head (classes or projector)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers, c = [], cfg.in_channels
        for w in cfg.widths:
            layers += [
                nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            ]
            c = w
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(c, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_outputs)

    def features(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N x feature_dim) of uint8 images N x C x H x W."""
        x = (x_uint8.to(torch.float32) / 255 - self.cfg.mean) / self.cfg.std
        h = self.body(x).mean(dim=(2, 3))  # (N, C)
        return torch.relu(self.embed(h))

    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x_uint8))


def save(model: ConvEncoder, path: str | os.PathLike, **info: str) -> None:
    """Write weights and config (plus any string info, e.g. accuracy) to a safetensors file."""
    meta = {"config": json.dumps(asdict(model.cfg)), **{k: str(v) for k, v in info.items()}}
    tmp = f"{path}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp, metadata=meta)
    os.replace(tmp, path)


def load(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[ConvEncoder, dict]:
    """Rebuild an encoder from a safetensors file; returns (model in eval mode, metadata)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if "config" not in meta:
        raise ValueError(f"{path}: no encoder config in the safetensors metadata")
    raw = json.loads(meta["config"])
    raw["widths"] = tuple(raw["widths"])
    cfg = EncoderConfig(**raw)
    model = ConvEncoder(cfg)
    model.load_state_dict(load_file(str(path)))
    meta["feature_dim"] = cfg.feature_dim
    return model.to(device).eval(), meta
