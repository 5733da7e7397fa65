"""The zoo plan: one row per model to train; reading, validation, and the demo's coverage rules."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fingerprint_core.zoo import gan, layers, registry

COLUMNS = ("name", "family", "upsampling", "loss", "normalization", "seed", "iterations", "width", "batch_size")
INT_COLUMNS = {"seed": 0, "iterations": 1, "width": 4, "batch_size": 2}  # column -> smallest allowed
OPTIONAL_FLOAT = ("est_minutes",)  # measured s/iter x iterations / 60 on 2 CPU threads
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # becomes a folder name: no slashes, no dotfiles
RESERVED = {"real"}  # a GM dataset's name for the held-out real set
TRAINING_KEYS = ("width", "batch_size", "iterations")  # with the design: what "the same design" means
# GAN generators without normalization collapsed within 300 iterations in trials here (all-black
# output with non_saturating, one fixed dot pattern with hinge; default and DCGAN N(0, 0.02) init
# alike), as Gulrajani et al. 2017 report for the standard loss; with wasserstein_gp they trained.
COLLAPSING = {("gan", "none", "non_saturating"), ("gan", "none", "hinge")}


class PlanError(ValueError):
    """A plan that cannot be used; the message names the file, row or rule."""


def validate(table: pd.DataFrame, source: str = "plan") -> pd.DataFrame:
    """Check columns, types, names and each row's design; returns a typed copy (PlanError if bad)."""
    table = table.copy()
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise PlanError(f"{source}: missing column(s) {', '.join(missing)} (required: {', '.join(COLUMNS)})")
    if table.empty:
        raise PlanError(f"{source}: no models")
    problems = []
    for col in ("name", "family", "upsampling", "loss", "normalization"):
        table[col] = table[col].astype(str).str.strip()
    for col, smallest in INT_COLUMNS.items():
        values = pd.to_numeric(table[col], errors="coerce")
        bad = [i for i, v in enumerate(values) if pd.isna(v) or v != int(v) or v < smallest]
        for i in bad:
            problems.append(f"row {i + 1} ({table['name'].iloc[i]}): {col}={table[col].iloc[i]!r} must be an integer >= {smallest}")
        if not bad:
            table[col] = values.astype(int)
    for col in OPTIONAL_FLOAT:
        if col in table.columns:
            values = pd.to_numeric(table[col], errors="coerce")
            for i in [i for i, v in enumerate(values) if pd.isna(v) or v < 0]:
                problems.append(f"row {i + 1} ({table['name'].iloc[i]}): {col}={table[col].iloc[i]!r} must be a number >= 0")
            table[col] = values
    seen: dict[str, int] = {}
    for i, name in enumerate(table["name"]):
        if not _NAME.fullmatch(name) or name in RESERVED:
            problems.append(f"row {i + 1}: name {name!r} must be letters, digits, '.', '_' or '-' (not 'real')")
        if name in seen:
            problems.append(f"row {i + 1}: name {name!r} repeats row {seen[name] + 1}")
        seen.setdefault(name, i)
    for i, row in enumerate(table.to_dict("records")):
        for p in registry.check_design(row):
            problems.append(f"row {i + 1} ({row['name']}): {p}")
        if (row["family"], row["normalization"], row["loss"]) in COLLAPSING:
            problems.append(f"row {i + 1} ({row['name']}): a GAN generator without normalization collapsed "
                            f"with loss {row['loss']} in trials; use batch, or wasserstein_gp")
    if problems:
        more = f"; (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise PlanError(f"{source}: " + "; ".join(problems[:5]) + more)
    return table.reset_index(drop=True)


@dataclass(frozen=True)
class Rule:
    """A coverage rule of the demo zoo: a name, what it asks, and a check returning problems."""

    name: str
    text: str
    check: Callable[[pd.DataFrame], list[str]]


def _at_least(column: str, values: tuple[str, ...], minimum: int, rows: Callable[[pd.DataFrame], pd.DataFrame] = lambda t: t):
    def check(table: pd.DataFrame) -> list[str]:
        counts = rows(table)[column].value_counts()
        return [f"{v}: {int(counts.get(v, 0))}" for v in values if counts.get(v, 0) < minimum]
    return check


def _repeated_designs(table: pd.DataFrame) -> list[str]:
    keys = list(registry.DESIGN_KEYS) + list(TRAINING_KEYS)
    seeds = table.groupby(keys)["seed"].nunique()
    n = int((seeds >= 2).sum())
    return [] if n >= 3 else [f"{n} design(s) with 2+ seeds"]


RULES: tuple[Rule, ...] = (
    Rule("models", "at least 24 models",
         lambda t: [] if len(t) >= 24 else [f"{len(t)} models"]),
    Rule("upsampling", "each upsampling level in at least 4 models",
         _at_least("upsampling", layers.UPSAMPLING, 4)),
    Rule("gan_loss", "each GAN loss in at least 3 models",
         _at_least("loss", gan.LOSSES, 3, lambda t: t[t["family"] == "gan"])),
    Rule("normalization", "normalization batch and none each in at least 4 models",
         _at_least("normalization", ("batch", "none"), 4)),
    Rule("families", "at least 3 families",
         lambda t: [] if t["family"].nunique() >= 3 else [f"{t['family'].nunique()} families ({', '.join(sorted(t['family'].unique()))})"]),
    Rule("seeds", "at least 3 designs trained twice with different seeds (all else equal)",
         _repeated_designs),
)


def coverage_problems(table: pd.DataFrame) -> list[str]:
    """One line per failing coverage rule, naming the rule and the counts that fail it."""
    return [f"rule '{r.name}' ({r.text}) fails: {', '.join(found)}" for r in RULES if (found := r.check(table))]


def load(path: str | os.PathLike, *, coverage: bool = True) -> pd.DataFrame:
    """Read and validate a plan csv; with coverage=True also enforce the demo's coverage rules."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#", skipinitialspace=True)
    except FileNotFoundError:
        raise PlanError(f"plan {path} does not exist") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise PlanError(f"plan {path} cannot be read ({err})") from None
    table = validate(table, str(path))
    if coverage:
        check(table, str(path))
    return table


def check(table: pd.DataFrame, source: str = "plan") -> None:
    """Raise PlanError listing every failing coverage rule."""
    problems = coverage_problems(table)
    if problems:
        raise PlanError(f"{source}: " + "; ".join(problems))


def estimated_minutes(table: pd.DataFrame) -> float:
    """Sum of the plan's est_minutes (0 where a plan has none)."""
    return float(table["est_minutes"].sum()) if "est_minutes" in table.columns else 0.0
