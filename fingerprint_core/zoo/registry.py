"""The zoo's families: design row -> generator or trainer, sampling, and weights with their design."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from fingerprint_core.fsio import atomic_write
from fingerprint_core.zoo import diffusion, gan, layers, vae
from fingerprint_core.zoo.trainer import Trainer


@dataclass(frozen=True)
class Family:
    """What a family accepts, its architecture defaults, and how to build its generator and trainer."""

    name: str
    upsampling: tuple[str, ...]
    loss: tuple[str, ...]
    normalization: tuple[str, ...]
    make_generator: Callable[[dict], nn.Module]
    make_trainer: Callable[[nn.Module, dict, torch.device], Trainer]
    defaults: dict = field(default_factory=dict)  # architecture arguments a plan row may override
    # generator architectures of the family (a plan row's optional `architecture`, default
    # defaults["architecture"]) -> the upsampling and normalization values each can build;
    # empty: one architecture, which builds everything in upsampling and normalization
    architectures: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "gan", (*layers.UPSAMPLING, "none"), gan.LOSSES, gan.NORMALIZATION,
            lambda d: gan.build_generator(upsampling=d["upsampling"], normalization=d["normalization"],
                                          width=d["width"], z_dim=d["z_dim"], architecture=d["architecture"]),
            lambda g, d, dev: gan.GANTrainer(g, loss=d["loss"], width=d["width"], device=dev),
            {"width": 48, "z_dim": 128, "architecture": "dcgan"},
            gan.ARCHITECTURES,  # "none" (no upsampling) only for the fully connected generator
        ),
        Family(
            "vae", layers.UPSAMPLING, vae.LOSSES, vae.NORMALIZATION,
            lambda d: vae.build_generator(upsampling=d["upsampling"], normalization=d["normalization"],
                                          width=d["width"], z_dim=d["z_dim"]),
            lambda g, d, dev: vae.VAETrainer(g, width=d["width"], device=dev, sigma=d["sigma"] or None),
            {"width": 48, "z_dim": 16, "sigma": 0.5},  # sigma 0: calibrated (batch RMSE); see vae.VAE
        ),
        Family(
            "diffusion", layers.UPSAMPLING, diffusion.LOSSES, diffusion.NORMALIZATION,
            lambda d: diffusion.build_generator(upsampling=d["upsampling"], normalization=d["normalization"],
                                                width=d["width"], steps=d["sampling_steps"]),
            lambda g, d, dev: diffusion.DiffusionTrainer(g, device=dev),
            {"width": 32, "sampling_steps": 50},
        ),
    )
}
DESIGN_KEYS = ("family", "upsampling", "loss", "normalization")


def _empty(value) -> bool:
    """A plan cell that means "the default": missing, None, "" or NaN (an empty csv cell)."""
    return value is None or value == "" or (isinstance(value, float) and np.isnan(value))


def family(name: str) -> Family:
    """The family called name; an unknown one fails with the list of valid ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def check_design(design: dict) -> list[str]:
    """Problems with a design row's family/upsampling/loss/normalization (empty when it is valid)."""
    missing = [k for k in DESIGN_KEYS if k not in design]
    if missing:
        return [f"missing {', '.join(missing)}"]
    if design["family"] not in FAMILIES:
        return [f"family={design['family']!r} is not one of {', '.join(FAMILIES)}"]
    fam = FAMILIES[design["family"]]
    problems = [
        f"{key}={design[key]!r} is not one of {', '.join(getattr(fam, key))} for family {fam.name}"
        for key in DESIGN_KEYS[1:]
        if design[key] not in getattr(fam, key)
    ]
    if fam.architectures and not problems:
        arch = design.get("architecture")
        arch = fam.defaults["architecture"] if _empty(arch) else str(arch).strip()
        if arch not in fam.architectures:
            return [f"architecture={arch!r} is not one of {', '.join(fam.architectures)} for family {fam.name}"]
        problems = [
            f"{key}={design[key]!r} is not one of {', '.join(allowed)} for {fam.name} architecture {arch}"
            for key, allowed in fam.architectures[arch].items()
            if design[key] not in allowed
        ]
    return problems


def generator_config(design: dict) -> dict:
    """The design plus the family's architecture defaults: all that rebuilds the generator."""
    problems = check_design(design)
    if problems:
        raise ValueError("; ".join(problems))
    fam = FAMILIES[design["family"]]
    config = {k: str(design[k]) for k in DESIGN_KEYS}
    for key, default in fam.defaults.items():
        value = design.get(key)
        # plan rows read from csv carry NaN/"" for an empty cell: that means "the default"
        config[key] = type(default)(default if _empty(value) else value)
        if isinstance(default, str):
            config[key] = config[key].strip()
    return config


def build_generator(design: dict) -> nn.Module:
    """The untrained generator of a design row: noise (N, *latent_shape) -> (N, 1, 32, 32) in [-1, 1]."""
    config = generator_config(design)
    return FAMILIES[config["family"]].make_generator(config)


def build_trainer(design: dict, device: torch.device | str = "cpu") -> Trainer:
    """A fresh trainer for a design row (its generator built by build_generator), on device."""
    config = generator_config(design)
    device = torch.device(device)
    return FAMILIES[config["family"]].make_trainer(build_generator(config), config, device)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 pixel codes round((x + 1) * 127.5)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def sample(model: nn.Module, n: int, *, seed: int, batch_size: int = 250) -> np.ndarray:
    """n uint8 samples (n, 32, 32) of a generator from seeded noise; the same seed, the same images."""
    device = next(model.parameters()).device
    rng = torch.Generator(device=device).manual_seed(int(seed))
    model.eval()
    out = []
    for start in range(0, n, batch_size):
        noise = torch.randn((min(batch_size, n - start), *model.latent_shape), generator=rng, device=device)
        out.append(to_uint8(model(noise))[:, 0].cpu().numpy())  # (B, 32, 32)
    return np.concatenate(out) if out else np.zeros((0, 32, 32), np.uint8)


SHIPPED_DTYPE = torch.float16  # generator weights in assets/: half the bytes, samples drawn from them


def _shipped_names(model: nn.Module) -> set[str]:
    """The state-dict entries stored as float16: learned weights and batch-norm statistics (not fixed
    tables such as a diffusion noise schedule, which float16 would distort near 1)."""
    names = {n for n, p in model.named_parameters() if p.is_floating_point()}
    return names | {n for n, b in model.named_buffers() if b.is_floating_point() and n.rsplit(".", 1)[-1].startswith("running_")}


def round_to_shipped(model: nn.Module) -> nn.Module:
    """Round the shipped weights to float16 in place, so the samples drawn now are exactly what the
    shipped weights file redraws."""
    state = model.state_dict()
    with torch.no_grad():
        for n in _shipped_names(model):
            state[n].copy_(state[n].to(SHIPPED_DTYPE))
    return model


def shipped_dtype(path: str | os.PathLike) -> str:
    """The dtype a generator file stores its floating weights in ("float32" for files from before float16)."""
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("dtype", "float32")


def save_generator(model: nn.Module, config: dict, path: str | os.PathLike, **info: str) -> None:
    """Write a generator's weights (floating ones as float16) with its config and any string info in
    the metadata, atomically."""
    meta = {"config": json.dumps(config, sort_keys=True), "dtype": str(SHIPPED_DTYPE).removeprefix("torch."),
            **{k: str(v) for k, v in info.items()}}
    halve = _shipped_names(model)
    tensors = {k: (v.to(SHIPPED_DTYPE) if k in halve else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    atomic_write(path, save(tensors, metadata=meta))


def load_generator(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a generator from its safetensors file (no pickle); returns (model in eval mode, metadata)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if "config" not in meta:
        raise ValueError(f"{path}: no generator config in the safetensors metadata")
    config = json.loads(meta["config"])
    model = build_generator(config)
    model.load_state_dict(load_file(str(path)))  # float16 values widen to float32 exactly
    meta["config"] = config
    return model.to(device).eval(), meta
