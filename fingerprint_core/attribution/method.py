"""The one train/predict interface every attribution method follows: ManiFPT's attributors (on
artifacts) and the classic baselines (on images), so the benchmark runs them all the same way."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class Inputs:
    """What a method may see of a batch of N samples; each method reads only what it `needs`."""

    images: np.ndarray | None = None  # uint8 N x C x H x W (the generated or real images)
    artifacts: dict[str, np.ndarray] = field(default_factory=dict)  # space -> float32 N x D

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        return len(next(iter(self.artifacts.values()))) if self.artifacts else 0

    def take(self, idx: np.ndarray) -> Inputs:
        """The rows idx of every array (a batch, or a subset)."""
        return Inputs(
            None if self.images is None else self.images[idx],
            {s: a[idx] for s, a in self.artifacts.items()},
        )


# Targets: head name -> int64 labels (N,). The head "model" (the real images are one more class,
# "real") is always there; design heads ("family", "upsampling", ...) where the workspace has them.
Targets = dict[str, np.ndarray]
# Classes: head name -> the label names, index = class id.
Classes = dict[str, list[str]]


class Method(ABC):
    """A trainable attributor: fit on labelled inputs, then logits per head and a feature vector."""

    name: str = "method"
    needs: tuple[str, ...] = ("images",)  # "images" and/or space names ("rgb", "freq", "sl", "ssl")

    @abstractmethod
    def fit(self, train: Inputs, targets: Targets, val: Inputs, val_targets: Targets, *, classes: Classes,
            seed: int = 0, device: str | torch.device = "auto") -> Method:
        """Train every head on `train`; `val` selects the epoch / regularisation. Returns self."""

    @abstractmethod
    def logits(self, x: Inputs) -> dict[str, np.ndarray]:
        """Per head, float32 N x n_classes scores (softmax of them = the probabilities)."""

    @abstractmethod
    def features(self, x: Inputs) -> np.ndarray:
        """float32 N x F: the representation the heads read (Fisher ratio, open-set scores)."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write weights (safetensors / npz, never pickle) and a config.json into folder."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path) -> Method:
        """The method saved in folder, ready to predict."""

    def proba(self, x: Inputs) -> dict[str, np.ndarray]:
        """Per head, float32 N x n_classes probabilities."""
        return {h: softmax(z) for h, z in self.logits(x).items()}


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large scores."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def write_config(folder: Path, config: dict) -> None:
    """config.json beside a method's weights (plain JSON, read back with read_config)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))


def read_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())
