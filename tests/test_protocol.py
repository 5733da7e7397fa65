"""The evaluation protocols (fingerprint_core/protocol.py): one definition of a design, its twins, the
leave-one-design-out folds, the held-out-model folds and chance, and the analysis and the bench
reading the same ones off the same design table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fingerprint_core import protocol
from fingerprint_core.analysis import design as analysis_design
from fingerprint_core.attribution import bench
from fingerprint_core.attribution import split as split_mod

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo" / "models.csv"


def stored(table: pd.DataFrame) -> pd.DataFrame:
    """The table as a workspace stores it: text, plus the held-out real row (pipeline._store_design)."""
    real = {c: "" for c in table.columns}
    real.update({"model": "real", "family": "real", "upsampling": "none", "loss": "none", "normalization": "none"})
    return pd.concat([table, pd.DataFrame([real])], ignore_index=True).astype(str)


def demo_table() -> pd.DataFrame:
    """The demo's design table with a column constant over every model, as stored in a workspace."""
    return stored(pd.read_csv(DEMO).assign(dataset="fashion-mnist"))


def hand_table() -> pd.DataFrame:
    """Four designs, A trained with three seeds; family and dataset constant over the generated models.

    design  upsampling  loss   normalization
    A (x3)  tconv       ns     batch
    B       nearest     ns     batch
    C       nearest     hinge  batch
    D       bilinear    hinge  none
    """
    rows = [("a-s0", "tconv", "ns", "batch", 0), ("a-s1", "tconv", "ns", "batch", 1),
            ("a-s2", "tconv", "ns", "batch", 2), ("b-s0", "nearest", "ns", "batch", 0),
            ("c-s0", "nearest", "hinge", "batch", 0), ("d-s0", "bilinear", "hinge", "none", 0)]
    t = pd.DataFrame(rows, columns=["model", "upsampling", "loss", "normalization", "seed"])
    return stored(t.assign(family="gan", dataset="toy"))


class TableWorkspace:
    """What Bench.__init__ reads the design from (model names and the design table), nothing more."""

    def __init__(self, table: pd.DataFrame):
        self.table = table

    def model_names(self, include_real: bool = False) -> list[str]:
        names = [m for m in self.table["model"] if m != "real"]
        return names + ["real"] if include_real else names

    def design(self) -> pd.DataFrame:
        return self.table


def table_bench(table: pd.DataFrame, lodo_folds: int = 0) -> bench.Bench:
    """A Bench over a design table alone: the attributes its __init__ sets from the design, set the
    same way, so its own lodo plan, truths and aggregate run as in a real run (no training)."""
    ws = TableWorkspace(table)
    b = object.__new__(bench.Bench)
    b.settings = bench.Settings(lodo_folds=lodo_folds)
    b.classes = split_mod.classes(ws)
    b.design, b.generated = ws.design(), ws.model_names()
    b.factors = [h for h in b.classes if h != "model"]
    b.lodo_factors = b._lodo_factors()
    b.lodo_plan = b._lodo_plan()
    return b


def bench_lodo(b: bench.Bench) -> dict:
    """Bench.lodo with the training replaced by a fold that reports the bench's truths (accuracy 0)."""
    b._do = lambda name, proto, seed, compute, fold=None: compute()
    b._lodo_fold = lambda name, seed, d, m: {
        "design": d, "models": m,
        "factors": {f: {"truth": h.truth, "accuracy": 0.0, "vote": 0.0, "chance": h.chance, "unseen": h.unseen,
                        "learnable": h.learnable} for f, h in b.lodo_truths(d).items()}}
    return b.lodo("none", 0)


def analysis_lodo(table: pd.DataFrame, factor: str, per_model: int = 4) -> analysis_design.LeaveOneDesignOut:
    """analysis.design.leave_one_design_out on random per-sample features, with the design ids and
    labels the analysis passes it (per sample: the model's protocol.design_id and its level)."""
    gen = table[table["model"] != "real"]
    ids = protocol.design_id(table)
    models = np.repeat(gen["model"].to_numpy(), per_model)
    feats = np.random.default_rng(0).normal(size=(len(models), 3))
    labels = np.repeat(gen[factor].to_numpy(), per_model)
    return analysis_design.leave_one_design_out(feats, labels, ids[models].to_numpy(), models, factor=factor)


# ---- designs and twins ------------------------------------------------------------------------------

def test_the_demo_factors_are_its_four_design_columns_and_never_the_constant_or_the_real_row():
    t = demo_table()
    assert protocol.factors(t) == ["family", "upsampling", "loss", "normalization"]
    # the hand table: family is "gan" for every generated model and differs only on the real row
    assert protocol.factors(hand_table()) == ["upsampling", "loss", "normalization"]
    assert "real" not in protocol.design_id(t).index


def test_demo_seed_twins_are_one_design_and_the_constant_column_changes_no_group():
    t = demo_table()
    groups = protocol.design_groups(t)
    assert len(groups) == 22 and sum(map(len, groups.values())) == 25
    assert protocol.twin_groups(t) == [["gan-tconv-ns-bn-s0", "gan-tconv-ns-bn-s1"],
                                       ["vae-nearest-none-s0", "vae-nearest-none-s1"],
                                       ["gan-bilinear-hinge-bn-s0", "gan-bilinear-hinge-bn-s1"]]
    assert protocol.design_id(t)["gan-tconv-ns-bn-s0"] == "gan|transposed_conv|non_saturating|batch|fashion-mnist"

    def partition(ids) -> set[frozenset[str]]:
        return {frozenset(ids.index[ids == d]) for d in set(ids)}

    gen = t[t["model"] != "real"].set_index("model")
    by_factors = gen[protocol.factors(t)].agg("|".join, axis=1)  # the id analysis/run.py joined so far
    assert partition(protocol.design_id(t)) == partition(by_factors)
    without_constant = protocol.design_id(t.drop(columns="dataset"))
    assert partition(protocol.design_id(t)) == partition(without_constant)


def test_a_design_id_is_the_same_in_every_subset_of_models():
    t = demo_table()
    subset = ["vae-tconv-bn-s0", "gan-tconv-ns-bn-s1", "real", "diffusion-nearest-gn-s0"]
    ids = protocol.design_id(t, subset)
    assert list(ids.index) == ["vae-tconv-bn-s0", "gan-tconv-ns-bn-s1", "diffusion-nearest-gn-s0"]  # real dropped
    assert ids.equals(protocol.design_id(t)[ids.index])
    with pytest.raises(ValueError, match="no row in the design table for model.*ghost"):
        protocol.design_id(t, ["ghost"])


def test_designs_and_twins_ignore_the_seed_column():
    design = pd.DataFrame({"model": ["a-s0", "a-s1", "b-s0", "c-s0", "real"],
                           "family": ["gan", "gan", "gan", "vae", "real"],
                           "upsampling": ["tconv", "tconv", "nearest", "tconv", "none"],
                           "seed": ["0", "1", "0", "0", ""]})
    groups = protocol.design_groups(design, ["a-s0", "a-s1", "b-s0", "c-s0"])
    assert list(groups.values()) == [["a-s0", "a-s1"], ["b-s0"], ["c-s0"]]
    assert protocol.twin_groups(design, ["a-s0", "a-s1", "b-s0", "c-s0"]) == [["a-s0", "a-s1"]]
    assert protocol.twin_groups(design, ["a-s0", "b-s0"]) == []
    # no design column at all: nothing says two models share a design
    bare = pd.DataFrame({"model": ["m0", "m1"], "seed": ["0", "1"]})
    assert protocol.twin_groups(bare) == [] and protocol.lodo_folds(bare) == []


# ---- leave one design out ------------------------------------------------------------------------------

def test_analysis_and_bench_hold_out_the_same_demo_designs_with_the_same_truth_and_chance():
    t = demo_table()
    b = table_bench(t)
    folds = protocol.lodo_folds(t)
    assert b.lodo_plan == [[f.design, list(f.models)] for f in folds] and len(folds) == 22
    assert b.lodo_factors == protocol.factors(t)
    summary = bench_lodo(b)["factors"]
    for factor in protocol.factors(t):
        a = analysis_lodo(t, factor)
        scored = [(d, m) for d, m in b.lodo_plan if b.lodo_truths(d)[factor].learnable]
        assert [f.design for f in a.folds] == [d for d, _ in scored]
        assert [f.models for f in a.folds] == [sorted(m) for _, m in scored]
        for f in a.folds:
            h = b.lodo_truths(f.design)[factor]
            assert (f.truth, f.unseen) == (h.truth, h.unseen)
            assert f.chance == pytest.approx(h.chance)
        assert summary[factor]["chance"] == pytest.approx(a.chance)
        assert summary[factor]["n_folds"] == len(a.folds)


def test_chance_counts_training_designs_not_models_and_both_paths_agree_on_a_hand_table():
    t = hand_table()
    b = table_bench(t)
    # family is a bench head (the real row is "real") but constant over the generated models: not scored
    assert "family" in b.factors and b.lodo_factors == ["upsampling", "loss", "normalization"]
    ids = [d for d, _ in b.lodo_plan]
    assert [m for _, m in b.lodo_plan] == [["a-s0", "a-s1", "a-s2"], ["b-s0"], ["c-s0"], ["d-s0"]]
    # by hand, one vote per training design (A's three seeds count once):
    # upsampling: A out -> nearest, nearest, bilinear: tconv unseen, 0; B (or C) out -> tconv, nearest,
    #   bilinear: a three-way tie, 1/3 (counting models, tconv would lead 3 to 1 and give 0); D out: unseen, 0
    # loss: A out -> ns, hinge, hinge: the majority is wrong, the frequency guess right 1/3; the same for each
    # normalization: D out leaves batch alone (one level: not scored, and "none" unseen although the
    #   real row has "none"); A, B or C out: batch is the majority, 1
    expect = {"upsampling": [(0.0, True), (1 / 3, False), (1 / 3, False), (0.0, True)],
              "loss": [(1 / 3, False)] * 4,
              "normalization": [(1.0, False)] * 3 + [(0.0, True)]}
    for factor, values in expect.items():
        got = [b.lodo_truths(d)[factor] for d in ids]
        assert [h.chance for h in got] == pytest.approx([c for c, _ in values])
        assert [h.unseen for h in got] == [u for _, u in values]
        assert [h.learnable for h in got] == ([True] * 3 + [False] if factor == "normalization" else [True] * 4)
    summary = bench_lodo(b)["factors"]
    assert summary["upsampling"]["chance"] == pytest.approx(1 / 6)
    assert summary["loss"]["chance"] == pytest.approx(1 / 3)
    assert summary["normalization"]["chance"] == pytest.approx(1.0) and summary["normalization"]["n_folds"] == 3
    for factor in expect:
        a = analysis_lodo(t, factor)
        assert a.chance == pytest.approx(summary[factor]["chance"])
        assert [f.design for f in a.folds] == (ids[:3] if factor == "normalization" else ids)


def test_chance_by_hand():
    assert protocol.chance(["a", "a", "b"], "a") == 1.0  # always the majority
    assert protocol.chance(["a", "a", "b"], "b") == pytest.approx(1 / 3)  # the frequency guess
    assert protocol.chance(["a", "b"], "a") == pytest.approx(0.5)  # a tie: broken at random
    assert protocol.chance(["a", "b"], "b") == pytest.approx(0.5)  # whatever the spelling
    assert protocol.chance(["a", "b", "b", "c", "c"], "c") == pytest.approx(0.5)
    assert protocol.chance(["a", "b", "b", "c", "c"], "a") == pytest.approx(0.2)
    assert protocol.chance(["a", "b"], "z") == 0.0  # unseen
    assert np.isnan(protocol.chance([], "a"))
    h = protocol.held_out_level({"d1": "x", "d2": "x", "d3": "y"}, "d3")
    assert h == protocol.HeldOutLevel(truth="y", chance=0.0, unseen=True, learnable=False)


def test_a_seeded_choice_of_k_designs_is_reproducible_and_the_bench_uses_it():
    t = demo_table()
    every = [f.design for f in protocol.lodo_folds(t)]
    six = protocol.lodo_folds(t, k=6, seed=0)
    assert six == protocol.lodo_folds(t, k=6, seed=0) and len(six) == 6
    assert [f.design for f in six] == [d for d in every if d in {f.design for f in six}]  # first-seen order
    assert [f.design for f in protocol.lodo_folds(t, k=6, seed=1)] != [f.design for f in six]
    assert protocol.lodo_folds(t, k=100) == protocol.lodo_folds(t) == protocol.lodo_folds(t, k=0)
    assert table_bench(t, lodo_folds=6).lodo_plan == [[f.design, list(f.models)] for f in six]
    assert protocol.held_out_designs(["x", "y", "x", "z"]) == ["x", "y", "z"]


def test_a_design_with_two_levels_of_a_factor_is_refused():
    with pytest.raises(ValueError, match="design 'd1' has two levels"):
        protocol.levels_by_design(["d1", "d1"], ["a", "b"])


# ---- held-out models -------------------------------------------------------------------------------------

def test_heldout_model_folds_rotate_every_model_through_the_test_group_once():
    models = [f"m{i}" for i in range(7)] + ["real"]
    folds = protocol.heldout_model_folds(models, n_groups=3, seed=0)
    assert sorted(m for f in folds for m in f.test) == sorted(models[:-1])
    assert all(not set(f.calibration) & set(f.test) and "real" not in f.held_out for f in folds)
    assert folds == protocol.heldout_model_folds(models, 3, 0)
    with pytest.raises(ValueError, match="at least 2"):
        protocol.heldout_model_folds(["m0", "real"])


def test_designs_whose_joined_ids_clash_are_refused():
    t = pd.DataFrame({"model": ["m0", "m1"], "upsampling": ["a|b", "a"], "loss": ["c", "b|c"]})
    with pytest.raises(ValueError, match="models m0, m1 have different designs that join to one id"):
        protocol.design_id(t)
