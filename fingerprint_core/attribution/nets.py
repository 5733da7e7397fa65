"""The attributor's networks: a compact ResNet for image-shaped artifacts (RGB, FREQ), an MLP for
vector artifacts (SL, SSL), and multi-head readouts (one linear head per label: model, design choices).

Every trunk maps a flat artifact (N x D, as the workspace stores it) to features (N x FEATURES);
standardisation with the training split's statistics is part of the network, so it travels with
the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fingerprint_core import spaces

FEATURES = 128  # width of every trunk's feature vector (what the heads and open-set scores read)


class Standardize(nn.Module):
    """(x - mean) / std per input element, with statistics of the training split (saved as buffers)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set mean and std from N x D training inputs (float64 sums: 60,000 rows lose nothing)."""
        x64 = x.to(torch.float64)
        mean = x64.mean(0)
        std = x64.std(0, unbiased=False)
        # constant elements (e.g. a border that every artifact leaves at 0) pass through unscaled
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016), stride on the first."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetTrunk(nn.Module):
    """Compact CIFAR-style ResNet for C x H x W artifacts: stem, one block per stage, pooled grid.

    The stem is a 4 x 4 convolution with stride 2: it still sees every pixel (a learned
    space-to-depth, so a checkerboard stays detectable) and makes an epoch 4x cheaper than a
    stride-1 stem (measured: 42,000 32 x 32 artifacts, one thread, 210 s -> 36 s with channels_last).
    The last map is pooled to a grid x grid (not 1 x 1): where an artifact sits matters, most of all
    in FREQ, where position is frequency and a global average would forget which band carries it.
    """

    def __init__(self, image_shape: tuple[int, int, int], *, widths: tuple[int, ...] = (16, 32, 64),
                 grid: int = 2) -> None:
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        self.image_shape = (c, h, w)
        self.standardize = Standardize(c * h * w)
        self.stem = nn.Sequential(nn.Conv2d(c, widths[0], 4, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, prev = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(BasicBlock(prev, width, 1 if i == 0 else 2))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.grid = int(grid)
        self.embed = nn.Sequential(nn.Linear(prev * self.grid**2, FEATURES), nn.BatchNorm1d(FEATURES), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.standardize(x).reshape(len(x), *self.image_shape)  # (N, C, H, W)
        x = x.contiguous(memory_format=torch.channels_last)  # faster convolutions on CPU
        x = self.stages(self.stem(x))  # (N, widths[-1], H/8, W/8)
        x = F.adaptive_avg_pool2d(x, self.grid).flatten(1)  # (N, widths[-1] * grid^2)
        return self.embed(x)  # (N, FEATURES)


class MLPTrunk(nn.Module):
    """Two hidden layers for vector artifacts (the SL / SSL embedding differences)."""

    def __init__(self, dim: int, *, hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.standardize = Standardize(int(dim))
        self.layers = nn.Sequential(
            nn.Linear(int(dim), hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, FEATURES), nn.BatchNorm1d(FEATURES), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.standardize(x))  # (N, FEATURES)


def trunk_for(space: str, dim: int, image_shape: tuple[int, int, int] | None) -> nn.Module:
    """The trunk of one space: ResNet when its artifacts are image-shaped (rgb, freq), else MLP."""
    if spaces.info(space).image_shaped:
        if image_shape is None or math.prod(image_shape) != dim:
            raise ValueError(f"{space} artifacts of dimension {dim} do not reshape to the image shape {image_shape}")
        return ResNetTrunk(image_shape)
    return MLPTrunk(dim)


class Attributor(nn.Module):
    """Trunks (one per space) -> concatenated features -> one linear head per label."""

    def __init__(self, trunks: dict[str, nn.Module], heads: dict[str, int]) -> None:
        super().__init__()
        self.trunks = nn.ModuleDict(trunks)
        n_features = FEATURES * len(trunks)
        self.heads = nn.ModuleDict({h: nn.Linear(n_features, n) for h, n in heads.items()})

    def features(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, FEATURES * spaces): each space's trunk on its artifacts, side by side."""
        return torch.cat([trunk(x[s]) for s, trunk in self.trunks.items()], dim=1)

    def forward(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(features, logits per head)."""
        f = self.features(x)
        return f, {h: head(f) for h, head in self.heads.items()}


def infer_image_shape(dim: int) -> tuple[int, int, int] | None:
    """C x H x W of a flat square image artifact (1 or 3 channels), or None when D fits neither.

    Unambiguous: D = H^2 and D = 3 W^2 cannot both hold for integers.
    """
    for c in (1, 3):
        if dim % c == 0:
            side = math.isqrt(dim // c)
            if side * side * c == dim:
                return (c, side, side)
    return None
