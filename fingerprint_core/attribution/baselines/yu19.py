"""Yu19 (Yu, Davis, Fritz, ICCV 2019, "Attributing fake images to GANs"): a CNN trained to name the
source of an image, here a plain conv net sized for 32 x 32 inputs with any number of channels.
Batch norm after each conv: without it the net sat at chance for the few epochs the benchmark
affords (measured on the planted traces of tests/test_baselines.py)."""

from __future__ import annotations

from torch import nn

from fingerprint_core.attribution.baselines.common import CNNMethod


class ConvTrunk(nn.Module):
    """Three stages of two 3x3 convs + batch norm + LeakyReLU(0.2), average-pooled between stages,
    then global average pooling: (N, C, H, W) -> (N, 4w)."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        layers, c = [], in_channels
        for i, w in enumerate((width, 2 * width, 4 * width)):
            if i:
                layers.append(nn.AvgPool2d(2))  # no pooling before stage 1: keep the pixel grid's artifacts
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2),
                       nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.LeakyReLU(0.2)]
            c = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.body(x)


class Yu19(CNNMethod):
    """Image-level attribution CNN (Yu et al. 2019), no augmentation."""

    name = "Yu19"

    def trunk(self, in_channels, width):
        return ConvTrunk(in_channels, width), 4 * width
