"""Diffusion family: a small DDPM U-Net (group norm), the denoising loss, and a seeded DDIM sampler."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fingerprint_core.zoo import layers
from fingerprint_core.zoo.trainer import Trainer, ema_copy, ema_decay, ema_update

NORMALIZATION = ("group",)
LOSSES = ("denoising",)
TIMESTEPS = 1000  # DDPM's T, with its linear beta schedule 1e-4 .. 0.02


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features (N, dim) of integer timesteps (N,), as in the Transformer."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.to(torch.float32)[:, None] * freqs[None]  # (N, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the timestep added in between, plus a (1x1) skip."""

    def __init__(self, c_in: int, c_out: int, t_dim: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = layers.norm("group", c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = layers.norm("group", c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(t_emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a (small) feature map, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = layers.norm("group", channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=2)  # (N, HW, C) each
        a = F.scaled_dot_product_attention(q, k, v)  # (N, HW, C)
        return x + self.out(a.transpose(1, 2).reshape(n, c, h, w))


class UNet(nn.Module):
    """Noise predictor eps(x_t, t): (N, 1, 32, 32), (N,) -> (N, 1, 32, 32).

    Levels 32 -> 16 -> 8 with channels width * mults, one residual block per level on each path,
    self-attention only at 8 x 8 (64 tokens, cheap); the decoder path doubles the resolution with
    the design's upsampling block, the encoder path halves it with strided convs.
    """

    def __init__(self, *, upsampling: str, width: int = 32, mults: tuple[int, ...] = (1, 2, 2),
                 t_dim: int = 128) -> None:
        super().__init__()
        chans = [width * m for m in mults]
        self.t_dim = t_dim
        self.time = nn.Sequential(nn.Linear(t_dim, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.conv_in = nn.Conv2d(1, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = chans[0]
        for i, c in enumerate(chans):
            self.down.append(ResBlock(c_prev, c, t_dim))
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            c_prev = c
        self.mid_block = ResBlock(chans[-1], chans[-1], t_dim)
        self.mid_attention = SelfAttention(chans[-1])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chans))):
            self.up.append(ResBlock(2 * chans[i], chans[i], t_dim))  # concatenated with the skip
            if i > 0:
                self.upsample.append(layers.upsample(upsampling, chans[i], chans[i - 1]))
        self.norm_out = layers.norm("group", chans[0])
        self.conv_out = nn.Conv2d(chans[0], 1, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time(timestep_embedding(t, self.t_dim))  # (N, t_dim)
        h = self.conv_in(x)  # (N, c0, 32, 32)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, t_emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid_attention(self.mid_block(h, t_emb))  # (N, c_last, 8, 8)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), t_emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, 1, 32, 32)


def linear_alphas_cumprod(timesteps: int = TIMESTEPS) -> torch.Tensor:
    """alpha-bar_t = prod_{s<=t} (1 - beta_s) for DDPM's linear betas, float64 (T,)."""
    betas = torch.linspace(1e-4, 0.02, timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class DiffusionSampler(nn.Module):
    """Generator view of a diffusion model: x_T ~ N(0, I) (N, 1, 32, 32) -> image in [-1, 1].

    Deterministic DDIM (eta = 0) over `steps` evenly spaced timesteps, so the same noise always
    gives the same image; the x_0 prediction is clipped to [-1, 1] at every step.
    """

    def __init__(self, unet: UNet, *, steps: int = 50) -> None:
        super().__init__()
        self.unet = unet
        self.steps = steps
        self.latent_shape = (1, 32, 32)
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod().to(torch.float32))

    @torch.no_grad()
    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        ts = torch.linspace(TIMESTEPS - 1, 0, self.steps, device=noise.device).round().long()
        x = noise
        for i, t in enumerate(ts):
            ab = self.alphas_cumprod[t]
            ab_prev = self.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else torch.ones_like(ab)
            eps = self.unet(x, t.expand(len(x)))
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()  # the noise consistent with the clipped x0
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        return x.clamp(-1, 1)


def build_generator(*, upsampling: str, normalization: str = "group", width: int = 32, steps: int = 50) -> DiffusionSampler:
    """A U-Net noise predictor wrapped in its DDIM sampler."""
    if normalization not in NORMALIZATION:
        raise ValueError(f"diffusion normalization={normalization!r} is not one of {', '.join(NORMALIZATION)}")
    return DiffusionSampler(UNet(upsampling=upsampling, width=width), steps=steps)


class DiffusionTrainer(Trainer):
    """Noise-prediction MSE at uniform timesteps; the sampler runs the U-Net's EMA."""

    def __init__(self, sampler: DiffusionSampler, *, device: torch.device, lr: float = 5e-4,
                 warmup: int = 200, ema: float = 0.999) -> None:
        super().__init__()
        self.model = sampler.to(device)
        self.average = ema_copy(self.model)
        self.lr, self.warmup, self.ema = lr, warmup, ema
        self.modules = {"model": self.model, "average": self.average}
        self.optimizers = {"model": torch.optim.Adam(self.model.unet.parameters(), lr=lr)}

    def step(self, real: torch.Tensor, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """One Adam step on || eps - eps_theta(sqrt(ab) x + sqrt(1 - ab) eps, t) ||^2."""
        unet = self.model.unet.train()
        t = torch.randint(0, TIMESTEPS, (len(real),), generator=rng, device=real.device)
        eps = torch.randn(real.shape, generator=rng, device=real.device)
        ab = self.model.alphas_cumprod[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(unet(ab.sqrt() * real + (1 - ab).sqrt() * eps, t), eps)
        opt = self.optimizers["model"]
        for group in opt.param_groups:  # linear warm-up; a function of the step, so nothing to save
            group["lr"] = self.lr * min(1.0, (self.steps + 1) / self.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(self.average, self.model, ema_decay(self.steps, self.ema))
        self.steps += 1
        return {"loss": loss.detach()}

    def sampler(self) -> nn.Module:
        return self.average.eval()
