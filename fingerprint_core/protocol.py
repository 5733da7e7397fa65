"""The evaluation protocols, once: what a design is, its seed twins, the leave-one-design-out folds,
the held-out-model folds and the chance level of a held-out design. `manifpt analyze` (the Design
page) and `manifpt bench` (the Benchmark page) both call these, so the same workspace gives both the
same folds, the same design ids and the same chance.

Pure functions over the design table: a DataFrame with a `model` column, an optional `seed` and one
column per design choice. The held-out real row (model == "real") is never a design: it is dropped
wherever designs are counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fingerprint_core.workspace import REAL

IDENTIFIERS = ("model", "seed")  # name a model (and its training run), never a design choice
ALPHA = 0.01  # a structure test counts when its Holm-corrected p is below this (every reading, CLI and app)
TINY_NMI = 0.05  # an NMI below this is detectable with many samples, yet no visible structure


# ---- designs ------------------------------------------------------------------------------------

def _rows(table: pd.DataFrame, models: Iterable[str] | None = None) -> pd.DataFrame:
    """The table as text, one row per generated model (those named, in their order; default: every one)."""
    t = table.astype(str).drop_duplicates("model").set_index("model", drop=False)
    if models is None:
        names = [m for m in t.index if m != REAL]
    else:
        names = [str(m) for m in models if str(m) != REAL]
        missing = [m for m in names if m not in t.index]
        if missing:
            raise ValueError(f"no row in the design table for model(s) {', '.join(missing)}")
    return t.loc[names]


def design_columns(table: pd.DataFrame) -> list[str]:
    """Every column but the identifiers (model, seed): the columns a design is read from."""
    return [c for c in table.columns if c not in IDENTIFIERS]


def factors(table: pd.DataFrame, models: Iterable[str] | None = None) -> list[str]:
    """The design factors to test: design columns with at least two levels among the generated models."""
    rows = _rows(table, models)
    return [c for c in design_columns(table) if rows[c].nunique() >= 2]


def design_id(table: pd.DataFrame, models: Iterable[str] | None = None) -> pd.Series:
    """Model -> its design id ("gan|transposed_conv|..."): the same choices in every design column are
    the same design, whatever the seed.

    The id joins every design column, not only the factors. A column that is constant over the
    models cannot split or merge two of them, so both choices give the same groups (tests check
    it); joining every column makes a model's id a function of its own row alone, so it is the same
    in every subset of models the analysis or the bench looks at (the factors, and so a factor-only
    id, change with the subset). A table with no design column at all says nothing about designs:
    there every model is its own design (its id is its name), so no model is claimed as a twin.
    """
    rows = _rows(table, models)
    cols = design_columns(table)
    if not cols:
        return pd.Series(rows.index.to_numpy(), index=rows.index, name="design", dtype=object)
    ids = rows[cols].agg("|".join, axis=1).rename("design")
    distinct = rows[cols].assign(_id=ids).drop_duplicates()
    clash = distinct.index[distinct["_id"].duplicated(keep=False)]  # a level with "|": ("a|b", "c") vs ("a", "b|c")
    if len(clash):
        raise ValueError(f"models {', '.join(clash)} have different designs that join to one id: "
                         "a design-table value contains '|'")
    return ids


def design_groups(table: pd.DataFrame, models: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Design id -> its models, both in first-seen order (the real row left out)."""
    groups: dict[str, list[str]] = {}
    for model, d in design_id(table, models).items():
        groups.setdefault(d, []).append(model)
    return groups


def twin_groups(table: pd.DataFrame, models: Iterable[str] | None = None) -> list[list[str]]:
    """Seed twins: the models of every design trained more than once."""
    return [g for g in design_groups(table, models).values() if len(g) > 1]


def levels_by_design(designs: Iterable[str], levels: Iterable[str]) -> dict[str, str]:
    """Design id -> the factor's level, from paired per-model or per-sample sequences (first-seen order)."""
    out: dict[str, str] = {}
    for d, level in zip(designs, levels, strict=True):
        if out.setdefault(str(d), str(level)) != str(level):
            raise ValueError(f"design {d!r} has two levels, {out[str(d)]!r} and {str(level)!r}: a design is one choice per factor")
    return out


def design_levels(table: pd.DataFrame, factor: str, models: Iterable[str] | None = None) -> dict[str, str]:
    """Design id -> its level of one factor, over the generated models (default: every one)."""
    ids = design_id(table, models)
    return levels_by_design(ids, _rows(table, ids.index)[factor])


# ---- leave one design out --------------------------------------------------------------------------

@dataclass(frozen=True)
class DesignFold:
    """One held-out design: its id and every model of it (all its seeds)."""

    design: str
    models: tuple[str, ...]


def held_out_designs(designs: Iterable[str], k: int | None = None, seed: int = 0) -> list[str]:
    """The designs to hold out, in first-seen order: every one, or (k > 0) a seeded choice of k."""
    ids = list(dict.fromkeys(str(d) for d in designs))
    if not k or k <= 0 or k >= len(ids):
        return ids
    order = np.random.default_rng(seed).permutation(len(ids))
    return [ids[i] for i in sorted(order[:k])]


def lodo_folds(table: pd.DataFrame, models: Iterable[str] | None = None, k: int | None = None,
               seed: int = 0) -> list[DesignFold]:
    """Leave-one-design-out folds: every design (or a seeded k of them) with its models; none when
    there are fewer than two designs or no factor to predict."""
    models = list(_rows(table, models).index)
    groups = design_groups(table, models)
    if len(groups) < 2 or not factors(table, models):
        return []
    return [DesignFold(d, tuple(groups[d])) for d in held_out_designs(groups, k, seed)]


def chance(train_design_levels: Sequence[str], truth: str) -> float:
    """Chance accuracy on a held-out design: the best guess that ignores the fingerprints.

    Two such guesses, both counted per training design (one vote per design, whatever its number of
    seeds or samples, since the held-out unit is a design): always answer the most common level (a
    tie among several broken at random: 1 / their number when the truth is one of them), or answer a
    level drawn with the training designs' frequencies (right with the truth's share). Chance is the
    better of the two. Holding a design out often leaves another level on top, so the majority guess
    alone can be 0 where guessing by frequency is not; and a chance that depended on how the levels
    are spelled (an alphabetical tie-break) would not be a chance. NaN with no training design.
    """
    levels = [str(v) for v in train_design_levels]
    if not levels:
        return float("nan")
    names, counts = np.unique(levels, return_counts=True)
    top = names[counts == counts.max()]
    majority = 1.0 / len(top) if str(truth) in top else 0.0
    share = float(counts[names == str(truth)].sum() / counts.sum())
    return max(majority, share)


@dataclass(frozen=True)
class HeldOutLevel:
    """One factor of one held-out design: what is true, what chance gets, whether it can be learned."""

    truth: str  # the held-out design's level
    chance: float  # see chance()
    unseen: bool  # no training design has the truth level (nothing can predict it)
    learnable: bool  # the training designs have two levels or more (else the fold is not scored)


def held_out_level(levels: Mapping[str, str], held: str) -> HeldOutLevel:
    """The truth, chance and flags of a factor when design `held` is left out; `levels` is design id ->
    level for every design of the evaluation (the held-out one and the training ones)."""
    truth = str(levels[held])
    train = [str(v) for d, v in levels.items() if d != held]
    return HeldOutLevel(truth, chance(train, truth), truth not in train, len(set(train)) >= 2)


# ---- held-out models (open set) ---------------------------------------------------------------------

@dataclass(frozen=True)
class HeldOutModels:
    """One rotation: models held out of training; one group sets the threshold, the other measures it."""

    calibration: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def held_out(self) -> tuple[str, ...]:
        return self.calibration + self.test


def heldout_model_folds(models: Iterable[str], n_groups: int = 5, seed: int = 0) -> list[HeldOutModels]:
    """Generated models shuffled (seeded) into groups; fold i calibrates on group i and tests on group i+1."""
    models = [m for m in models if m != REAL]  # the real class is always known
    n_groups = min(n_groups, len(models))
    if n_groups < 2:
        raise ValueError(f"{len(models)} model(s): the held-out protocol needs at least 2 (one to calibrate, one to test)")
    order = np.random.default_rng(seed).permutation(len(models))
    groups = [tuple(models[j] for j in order[i::n_groups]) for i in range(n_groups)]
    return [HeldOutModels(groups[i], groups[(i + 1) % n_groups]) for i in range(n_groups)]
