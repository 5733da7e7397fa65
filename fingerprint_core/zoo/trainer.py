"""What every family's trainer shares: the step contract, checkpointable state, and weight averaging."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Trainer:
    """One family's optimisation step; subclasses fill `modules` and `optimizers` and define step()."""

    def __init__(self) -> None:
        self.modules: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.steps = 0  # iterations done: drives the averaging warm-up

    def step(self, real: torch.Tensor, rng: torch.Generator) -> dict[str, torch.Tensor]:
        """One training iteration on real images (N, 1, 32, 32) in [-1, 1]; detached losses by name."""
        raise NotImplementedError

    def sampler(self) -> nn.Module:
        """The generator to save and sample from: noise -> (N, 1, 32, 32) in [-1, 1], in eval mode."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything that resuming needs: module weights and buffers, optimizer moments."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned."""
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.steps = int(state.get("steps", 0))


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of model to hold its exponential moving average."""
    return copy.deepcopy(model).requires_grad_(False)


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model for parameters; buffers are copied."""
    for a, p in zip(average.parameters(), model.parameters(), strict=True):
        a.lerp_(p, 1 - decay)
    for a, b in zip(average.buffers(), model.buffers(), strict=True):
        a.copy_(b)


def ema_decay(step: int, decay: float) -> float:
    """Warm-up of the averaging rate, so early averages are not dominated by the random init."""
    return min(decay, (1 + step) / (10 + step))
