"""Wang20 (Wang et al., CVPR 2020, "CNN-generated images are surprisingly easy to spot... for now"):
a ResNet classifier trained with random Gaussian blur and JPEG re-encoding (each with probability
0.5). Their ResNet-50 pretrained on ImageNet becomes a small ResNet trained from scratch (no
ImageNet weights here, and 32 x 32 inputs); the augmentation ranges are scaled as documented below."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fingerprint_core.attribution.baselines.common import CNNMethod

# The paper: sigma ~ U[0, 3] px at 256 px, quality ~ U{30..100}. A blur radius is a size in pixels,
# so it shrinks with the image: sigma 3 at 256 px is a light blur, sigma 3 at 32 px erases the
# image; sigma <= 1 px removes roughly the top octave of a 32 x 32 image. JPEG quality acts per
# 8 x 8 block whatever the image size, so the paper's range is kept.
BLUR_SIGMA = (0.0, 1.0)
JPEG_QUALITY = (30, 100)
P_BLUR = P_JPEG = 0.5


def gaussian_blur(batch: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """uint8 N x C x H x W, image i blurred with its own sigma[i] (separable Gaussian truncated at
    3 sigma, reflected borders; sigma 0 leaves the image as it is)."""
    radius = max(1, int(np.ceil(3 * max(float(np.max(sigma, initial=0.0)), 1e-3))))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = torch.as_tensor(np.asarray(sigma, np.float32)).clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # (N, 2r+1); sigma -> 0 gives a delta
    n, c, h, w = batch.shape
    x = torch.from_numpy(np.ascontiguousarray(batch)).float().reshape(1, n * c, h, w)
    kern = k.repeat_interleave(c, 0)  # one kernel per (image, channel) group
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kern[:, None, None, :], groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kern[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w).round_().clamp_(0, 255).to(torch.uint8).numpy()


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """uint8 C x H x W through a JPEG encode/decode at this quality (RGB as one image, other
    channel counts one grayscale image per channel)."""
    def once(a: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())))

    if img.shape[0] == 3:
        return once(img.transpose(1, 2, 0)).transpose(2, 0, 1).copy()
    return np.stack([once(c) for c in img])


def blur_jpeg(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Wang20's training augmentation on a uint8 batch: blur, then JPEG, each with p = 0.5."""
    n = len(batch)
    blur, sigma = rng.random(n) < P_BLUR, rng.uniform(*BLUR_SIGMA, n)
    squeeze, quality = rng.random(n) < P_JPEG, rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, n)
    out = batch.copy()
    if blur.any():
        out[blur] = gaussian_blur(out[blur], sigma[blur])
    for i in np.flatnonzero(squeeze):
        out[i] = jpeg(out[i], quality[i])
    return out


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1, strided) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return nn.functional.relu(self.body(x) + self.skip(x))


class ResNetTrunk(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem, one block per stage at widths w, 2w, 4w (strides 1, 2, 2),
    global average pooling: (N, C, H, W) -> (N, 4w)."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x):
        return self.body(x)


class Wang20(CNNMethod):
    """ResNet on images with blur + JPEG augmentation (Wang et al. 2020)."""

    name = "Wang20"

    def trunk(self, in_channels, width):
        return ResNetTrunk(in_channels, width), 4 * width

    def augment(self, batch, rng):
        return blur_jpeg(batch, rng)
