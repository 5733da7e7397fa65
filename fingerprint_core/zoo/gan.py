"""GAN family: spectral-norm discriminator, the four adversarial losses, and the training step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fingerprint_core.zoo.decoder import ConvDecoder
from fingerprint_core.zoo.trainer import Trainer, ema_copy, ema_decay, ema_update

LOSSES = ("non_saturating", "hinge", "least_squares", "wasserstein_gp")
NORMALIZATION = ("batch", "none", "spectral", "instance")
GP_WEIGHT = 10.0  # Gulrajani et al. 2017


def build_generator(*, upsampling: str, normalization: str, width: int = 48, z_dim: int = 128) -> ConvDecoder:
    """A DCGAN-style generator: z (N, z_dim) -> (N, 1, 32, 32), Tanh output."""
    if normalization not in NORMALIZATION:
        raise ValueError(f"GAN normalization={normalization!r} is not one of {', '.join(NORMALIZATION)}")
    return ConvDecoder(upsampling=upsampling, normalization=normalization, width=width, z_dim=z_dim)


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

    def __init__(self, generator: ConvDecoder, *, loss: str, width: int, device: torch.device,
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
