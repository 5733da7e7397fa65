"""The classic attribution baselines of ManiFPT's Table 2, behind the Method interface, adapted to
small images of any C x H x W (docs/baselines.md says how). A registry in the timm style:

    from fingerprint_core.attribution import baselines
    baselines.names()                      # ['Yu19', 'Wang20', 'Marra19', 'Durall20', 'Dzanic20', 'Frank20']
    method = baselines.create("Durall20")  # keyword hyperparameters go to the class
"""

from __future__ import annotations

from pathlib import Path

from fingerprint_core.attribution.baselines.durall20 import Durall20
from fingerprint_core.attribution.baselines.dzanic20 import Dzanic20
from fingerprint_core.attribution.baselines.frank20 import Frank20
from fingerprint_core.attribution.baselines.marra19 import Marra19
from fingerprint_core.attribution.baselines.wang20 import Wang20
from fingerprint_core.attribution.baselines.yu19 import Yu19
from fingerprint_core.attribution.method import Method, read_config

BASELINES: dict[str, type[Method]] = {c.name: c for c in (Yu19, Wang20, Marra19, Durall20, Dzanic20, Frank20)}


def names() -> list[str]:
    """The registered baselines, in the order of the benchmark table."""
    return list(BASELINES)


def lookup(name: str) -> type[Method]:
    """The class of a baseline, by name (case-insensitive); unknown names list the valid ones."""
    for key, cls in BASELINES.items():
        if key.lower() == str(name).lower():
            return cls
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")


def create(name: str, **params) -> Method:
    """A new, unfitted baseline; params are its keyword hyperparameters."""
    return lookup(name)(**params)


def load(folder: str | Path) -> Method:
    """A fitted baseline saved in folder (its config.json names which)."""
    return lookup(read_config(Path(folder))["name"]).load(Path(folder))


__all__ = ["BASELINES", "names", "lookup", "create", "load", "Yu19", "Wang20", "Marra19", "Durall20", "Dzanic20", "Frank20"]
