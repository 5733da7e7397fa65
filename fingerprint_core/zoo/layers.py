"""Layer factories for the design choices: upsampling blocks and normalization layers."""

from __future__ import annotations

import math

from torch import nn

UPSAMPLING = ("transposed_conv", "nearest_conv", "bilinear_conv", "pixel_shuffle")
NORMALIZATION = ("batch", "none", "group", "spectral", "instance")


def _check(kind: str, allowed: tuple[str, ...], what: str) -> None:
    if kind not in allowed:
        raise ValueError(f"{what}={kind!r} is not one of {', '.join(allowed)}")


def upsample(kind: str, in_channels: int, out_channels: int) -> nn.Module:
    """A block that doubles H and W: (N, in, H, W) -> (N, out, 2H, 2W), by the named upsampling."""
    _check(kind, UPSAMPLING, "upsampling")
    if kind == "transposed_conv":
        # kernel 4 with stride 2 overlaps unevenly: the checkerboard trace the paper looks for
        return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
    if kind == "pixel_shuffle":
        # sub-pixel convolution: 4 output maps per channel, interleaved into a 2x2 neighbourhood
        return nn.Sequential(nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1), nn.PixelShuffle(2))
    mode = "nearest" if kind == "nearest_conv" else "bilinear"
    resize = nn.Upsample(scale_factor=2, mode=mode) if mode == "nearest" else nn.Upsample(
        scale_factor=2, mode=mode, align_corners=False
    )
    return nn.Sequential(resize, nn.Conv2d(in_channels, out_channels, 3, padding=1))


def norm(kind: str, channels: int, *, groups: int = 8) -> nn.Module:
    """The normalization layer that follows a conv: BatchNorm2d, GroupNorm, InstanceNorm2d or Identity.

    "spectral" normalizes weights, not activations, so its layer here is the identity; wrap the
    conv itself with `spectral`.
    """
    _check(kind, NORMALIZATION, "normalization")
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)  # the most groups <= groups that divide
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def spectral(kind: str, module: nn.Module) -> nn.Module:
    """Wrap every conv/linear weight in module with spectral norm when kind is "spectral"."""
    _check(kind, NORMALIZATION, "normalization")
    if kind != "spectral":
        return module
    for sub in list(module.modules()):
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.utils.parametrizations.spectral_norm(sub)
    return module

