"""GAN family: generator architectures, spectral-norm discriminator, the four adversarial losses, and
the training step.

Generator architectures (the design row's `architecture`, default "dcgan"; all z (N, z_dim) ->
(N, 1, 32, 32) through Tanh):

- dcgan: the shared ConvDecoder (decoder.py), one upsampling block per doubling, the zoo's own;
- resnet: SNGAN-style residual blocks (Miyato et al. 2018), norm-ReLU-resize-conv3x3-norm-ReLU-conv3x3
  plus a resize-conv1x1 shortcut, nearest or bilinear resizing; never in the demo zoo;
- mlp: fully connected layers only (upsampling "none"), as in the original GAN; never in the demo zoo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fingerprint_core.zoo import layers
from fingerprint_core.zoo.decoder import ConvDecoder
from fingerprint_core.zoo.trainer import Trainer, ema_copy, ema_decay, ema_update

LOSSES = ("non_saturating", "hinge", "least_squares", "wasserstein_gp")
NORMALIZATION = ("batch", "none", "spectral", "instance")
GP_WEIGHT = 10.0  # Gulrajani et al. 2017


# architecture -> the upsampling and normalization values it can build
ARCHITECTURES: dict[str, dict[str, tuple[str, ...]]] = {
    "dcgan": {"upsampling": layers.UPSAMPLING, "normalization": NORMALIZATION},
    "resnet": {"upsampling": ("nearest_conv", "bilinear_conv"), "normalization": NORMALIZATION},
    "mlp": {"upsampling": ("none",), "normalization": ("batch", "none", "spectral")},
}
ARCHITECTURE_TEXT = {
    "dcgan": "DCGAN-style conv decoder: z -> 4x4 x 4w -> 8x8 x 2w -> 16x16 x w -> 32x32, one upsampling block per doubling",
    "resnet": "ResNet generator (SNGAN-style): z -> 4x4 x 4w, three residual up-blocks (norm-ReLU-resize-conv3x3-"
              "norm-ReLU-conv3x3, resize-conv1x1 shortcut) to 8x8 x 2w, 16x16 x w, 32x32 x w, then norm-ReLU-conv3x3",
    "mlp": "MLP generator: fully connected z -> 8w -> 16w -> 32w -> 1024 pixels (no convolution, no upsampling)",
}


def build_generator(*, upsampling: str, normalization: str, width: int = 48, z_dim: int = 128,
                    architecture: str = "dcgan") -> nn.Module:
    """A generator of the named architecture: z (N, z_dim) -> (N, 1, 32, 32), Tanh output."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"GAN architecture={architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    allowed = ARCHITECTURES[architecture]
    if normalization not in allowed["normalization"]:
        raise ValueError(f"GAN normalization={normalization!r} is not one of {', '.join(allowed['normalization'])}"
                         + ("" if architecture == "dcgan" else f" for architecture {architecture}"))
    if upsampling not in allowed["upsampling"]:
        raise ValueError(f"GAN upsampling={upsampling!r} is not one of {', '.join(allowed['upsampling'])} "
                         f"for architecture {architecture}")
    if architecture == "mlp":
        return MLPGenerator(normalization=normalization, width=width, z_dim=z_dim)
    if architecture == "resnet":
        return ResNetGenerator(upsampling=upsampling, normalization=normalization, width=width, z_dim=z_dim)
    return ConvDecoder(upsampling=upsampling, normalization=normalization, width=width, z_dim=z_dim)


class MLPGenerator(nn.Module):
    """z (N, z_dim) -> (N, 1, 32, 32): Linear 8w -> 16w -> 32w -> 1024, each hidden layer normalized and
    ReLU'd; no convolution, so no upsampling trace (design value upsampling "none")."""

    def __init__(self, *, normalization: str, width: int = 32, z_dim: int = 128) -> None:
        super().__init__()
        self.latent_shape = (z_dim,)
        blocks: list[nn.Module] = []
        c_in = z_dim
        for c_out in (8 * width, 16 * width, 32 * width):
            blocks += [nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out) if normalization == "batch" else nn.Identity(),
                       nn.ReLU()]
            c_in = c_out
        blocks += [nn.Linear(c_in, 32 * 32), nn.Tanh()]
        self.body = nn.Sequential(*blocks)
        layers.spectral(normalization, self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z).view(len(z), 1, 32, 32)


class ResBlockUp(nn.Module):
    """(N, c_in, H, W) -> (N, c_out, 2H, 2W): norm-ReLU-resize-conv3x3-norm-ReLU-conv3x3 + resize-conv1x1."""

    def __init__(self, c_in: int, c_out: int, *, mode: str, normalization: str) -> None:
        super().__init__()
        resize = nn.Upsample(scale_factor=2, mode=mode) if mode == "nearest" else nn.Upsample(
            scale_factor=2, mode=mode, align_corners=False)
        self.main = nn.Sequential(
            layers.norm(normalization, c_in), nn.ReLU(), resize, nn.Conv2d(c_in, c_out, 3, padding=1),
            layers.norm(normalization, c_out), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2, mode=mode) if mode == "nearest" else nn.Upsample(
            scale_factor=2, mode=mode, align_corners=False), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


class ResNetGenerator(nn.Module):
    """z (N, z_dim) -> 4x4 x 4w -> three ResBlockUp to 8x8 x 2w, 16x16 x w, 32x32 x w -> norm-ReLU-conv3x3-Tanh."""

    def __init__(self, *, upsampling: str, normalization: str, width: int = 32, z_dim: int = 128) -> None:
        super().__init__()
        self.latent_shape = (z_dim,)
        self.width = width
        mode = {"nearest_conv": "nearest", "bilinear_conv": "bilinear"}[upsampling]
        self.project = nn.Linear(z_dim, 4 * width * 4 * 4)
        self.blocks = nn.Sequential(
            ResBlockUp(4 * width, 2 * width, mode=mode, normalization=normalization),
            ResBlockUp(2 * width, width, mode=mode, normalization=normalization),
            ResBlockUp(width, width, mode=mode, normalization=normalization),
            layers.norm(normalization, width), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1), nn.Tanh(),
        )
        layers.spectral(normalization, self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.project(z).view(len(z), 4 * self.width, 4, 4))


class Discriminator(nn.Module):
    """(N, 1, 32, 32) -> logits (N,): three stride-2 spectral-norm convs w -> 2w -> 4w, then linear.

    Spectral norm keeps the critic roughly 1-Lipschitz for every loss, which lets all four losses
    share one architecture and one learning rate.
    """

    def __init__(self, width: int = 48, in_channels: int = 1) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        self.body = nn.Sequential(
            sn(nn.Conv2d(in_channels, width, 4, 2, 1)), nn.LeakyReLU(0.2),  # 16x16
            sn(nn.Conv2d(width, 2 * width, 4, 2, 1)), nn.LeakyReLU(0.2),  # 8x8
            sn(nn.Conv2d(2 * width, 4 * width, 4, 2, 1)), nn.LeakyReLU(0.2),  # 4x4
        )
        self.head = sn(nn.Linear(4 * width * 4 * 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1)).squeeze(1)


def discriminator_loss(loss: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's (critic's) loss from its logits on real and fake images (no penalty)."""
    if loss == "non_saturating":
        return F.softplus(-real).mean() + F.softplus(fake).mean()  # BCE on sigmoid(logits)
    if loss == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if loss == "least_squares":
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()
    if loss == "wasserstein_gp":
        return fake.mean() - real.mean()  # raw critic scores, no sigmoid
    raise ValueError(f"GAN loss={loss!r} is not one of {', '.join(LOSSES)}")


def generator_loss(loss: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss from the discriminator's logits on its samples."""
    if loss == "non_saturating":
        return F.softplus(-fake).mean()  # -log sigmoid(D(G(z))): strong gradients early on
    if loss in ("hinge", "wasserstein_gp"):
        return -fake.mean()
    if loss == "least_squares":
        return 0.5 * ((fake - 1) ** 2).mean()
    raise ValueError(f"GAN loss={loss!r} is not one of {', '.join(LOSSES)}")


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """E[(||grad critic(x_hat)|| - 1)^2] at random points x_hat between real and fake."""
    alpha = torch.rand(len(real), 1, 1, 1, generator=rng, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)  # (N, 1, 32, 32)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, latent_shape: tuple[int, ...], rng: torch.Generator,
                          *, batches: int = 32, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm running statistics of model on its own noise ("standing statistics").

    The averaged (EMA) weights never ran in train mode, so the live model's running statistics do
    not match them; eval-mode samples are only right with statistics measured on the averaged net.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    device = next(model.parameters()).device
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    for _ in range(batches):
        model(torch.randn((batch_size, *latent_shape), generator=rng, device=device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


class GANTrainer(Trainer):
    """Alternating discriminator and generator Adam steps; the sampler is the generator's EMA."""

    def __init__(self, generator: nn.Module, *, loss: str, width: int, device: torch.device,
                 n_critic: int | None = None, ema: float = 0.999) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"GAN loss={loss!r} is not one of {', '.join(LOSSES)}")
        self.loss = loss
        self.generator = generator.to(device)
        self.discriminator = Discriminator(width).to(device)
        self.average = ema_copy(self.generator)
        # WGAN-GP wants a better-trained critic per generator step; 2 (not the paper's 5) keeps it
        # affordable, and the spectral norm already keeps the critic in shape
        self.n_critic = n_critic if n_critic is not None else (2 if loss == "wasserstein_gp" else 1)
        betas = (0.0, 0.9) if loss == "wasserstein_gp" else (0.5, 0.999)
        lr = 1e-4 if loss == "wasserstein_gp" else 2e-4
        self.ema = ema
        self.modules = {"generator": self.generator, "discriminator": self.discriminator, "average": self.average}
        self.optimizers = {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas),
        }

    def _noise(self, n: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.randn((n, *self.generator.latent_shape), generator=rng, device=device)

    def step(self, real: torch.Tensor, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """One generator step after n_critic discriminator steps on the same real batch."""
        G, D = self.generator, self.discriminator
        G.train()
        D.requires_grad_(True)
        for _ in range(self.n_critic):
            with torch.no_grad():
                fake = G(self._noise(len(real), rng, real.device))  # (N, 1, 32, 32)
            logits = D(torch.cat([real, fake]))  # one pass: spectral norm's power step runs once
            loss_d = discriminator_loss(self.loss, logits[: len(real)], logits[len(real):])
            if self.loss == "wasserstein_gp":
                loss_d = loss_d + GP_WEIGHT * gradient_penalty(D, real, fake, rng)
            self.optimizers["discriminator"].zero_grad(set_to_none=True)
            loss_d.backward()
            self.optimizers["discriminator"].step()
        D.requires_grad_(False)  # the generator step needs gradients through D, not of D
        loss_g = generator_loss(self.loss, D(G(self._noise(len(real), rng, real.device))))
        self.optimizers["generator"].zero_grad(set_to_none=True)
        loss_g.backward()
        self.optimizers["generator"].step()
        ema_update(self.average, G, ema_decay(self.steps, self.ema))
        self.steps += 1
        return {"d": loss_d.detach(), "g": loss_g.detach()}

    def sampler(self) -> nn.Module:
        """The averaged generator with BatchNorm statistics measured on itself, in eval mode."""
        rng = torch.Generator(device=next(self.average.parameters()).device).manual_seed(0)
        recalibrate_batchnorm(self.average, self.average.latent_shape, rng)
        return self.average.eval()
