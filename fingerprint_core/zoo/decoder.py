"""The DCGAN-style convolutional decoder (latent -> 4x4 -> 32x32 image) shared by the GAN and the VAE."""

from __future__ import annotations

import torch
from torch import nn

from fingerprint_core.zoo import layers


class ConvDecoder(nn.Module):
    """Latent (N, z_dim) -> image (N, 1, 32, 32) in [-1, 1]; channels 4w -> 2w -> w -> 1.

    Each of the three doublings (4 -> 8 -> 16 -> 32) is the named upsampling block; the last one
    writes the image itself, so its trace lands on the pixels as in DCGAN.
    """

    def __init__(self, *, upsampling: str, normalization: str, width: int = 48, z_dim: int = 128,
                 out_channels: int = 1) -> None:
        super().__init__()
        self.latent_shape = (z_dim,)
        self.width = width
        c = 4 * width
        self.project = nn.Linear(z_dim, c * 4 * 4)
        self.norm0 = layers.norm(normalization, c)
        blocks: list[nn.Module] = []
        for c_in, c_out in ((4 * width, 2 * width), (2 * width, width)):
            blocks += [layers.upsample(upsampling, c_in, c_out), layers.norm(normalization, c_out), nn.ReLU()]
        blocks += [layers.upsample(upsampling, width, out_channels), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        # weight normalization of the generator (SAGAN-style) when asked for; a no-op otherwise
        layers.spectral(normalization, self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(len(z), 4 * self.width, 4, 4)  # (N, 4w, 4, 4)
        h = torch.relu(self.norm0(h))
        return self.blocks(h)  # (N, 1, 32, 32)
