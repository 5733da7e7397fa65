"""Synthetic unknowns (synthetic.py): the augmentation nets' traces, the rows they trace, outlier
exposure in ManiFPT.fit and the bench setting that trains on their re-projected artifacts."""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest

from fingerprint_core.attribution import baselines, bench, robustness, synthetic
from fingerprint_core.attribution import split as split_mod
from fingerprint_core.attribution.manifpt import ManiFPT
from fingerprint_core.attribution.method import Inputs
from fingerprint_core.workspace import Workspace
from gmdata import make_gm_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny training steps: see conftest


def grey(n=12, c=1, size=16, seed=0) -> np.ndarray:
    """Mid-grey textured images: a trace of up to 8 codes is never clipped on them."""
    return np.random.default_rng(seed).integers(100, 156, (n, c, size, size), dtype=np.uint8)


def test_a_trace_is_seeded_per_image_and_has_the_drawn_strength():
    x, ids = grey(), np.arange(100, 112)
    y = synthetic.trace(x, 0, ids)
    assert y.shape == x.shape and y.dtype == np.uint8
    np.testing.assert_array_equal(y, synthetic.trace(x, 0, ids))
    np.testing.assert_array_equal(y[5:], synthetic.trace(x[5:], 0, ids[5:]))  # a chunk as in the whole
    assert not np.array_equal(y, synthetic.trace(x, 1, ids))  # another copy: other nets and strengths
    rms = np.sqrt(((y.astype(np.float64) - x) ** 2).mean(axis=(1, 2, 3)))
    lo, hi = synthetic.STRENGTH
    assert np.all(rms > lo - 0.5) and np.all(rms < hi + 0.5), rms  # rounding moves it by < 0.5 codes
    colour = synthetic.trace(grey(c=3), 0, ids)
    assert colour.shape == (12, 3, 16, 16) and not np.array_equal(colour, grey(c=3))
    with pytest.raises(ValueError, match="uint8"):
        synthetic.trace(x.astype(np.float32), 0, ids)
    with pytest.raises(ValueError, match="even"):
        synthetic.trace(grey(size=15), 0, ids)


def test_the_nets_are_seeded_and_cover_the_upsampling_vocabulary():
    nets = [synthetic.AugmentationNet(k, 1) for k in range(synthetic.NETS)]
    assert {n.upsampling for n in nets} == set(synthetic.UPSAMPLING)
    a, b = synthetic.AugmentationNet(3, 1), synthetic.AugmentationNet(3, 1)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert np.array_equal(p.numpy(), q.numpy())
    assert not all(p.requires_grad for p in a.parameters())


def test_source_rows_skip_real_and_pick_each_model_on_its_own():
    import pandas as pd

    table = pd.DataFrame({"model": ["a"] * 50 + ["b"] * 50 + ["real"] * 50, "index": np.tile(np.arange(50), 3)})
    rows = np.arange(150)
    picked = synthetic.source_rows(table, rows, "real", per_model=10)
    assert len(picked) == 20 and set(table["model"].iloc[picked]) == {"a", "b"}
    only_b = synthetic.source_rows(table, rows[50:], "real", per_model=10)  # "a" held out: "b" keeps its pick
    np.testing.assert_array_equal(only_b, picked[table["model"].to_numpy()[picked] == "b"])


def _separable(n: int, rng: np.random.Generator):
    y = rng.integers(0, 3, n)
    a = rng.normal(0, 1, (n, 16)).astype(np.float32)
    a[:, :4] += 3.0 * y[:, None]
    return Inputs(None, {"sl": a}), {"model": y}


def test_outlier_exposure_flattens_the_softmax_on_outliers_and_keeps_the_classes():
    rng = np.random.default_rng(0)
    (xt, yt), (xv, yv) = _separable(300, rng), _separable(150, rng)
    out = rng.normal(0, 1, (200, 16)).astype(np.float32)
    out[:, 4:8] += 6.0  # unlike every class, in directions the classes do not use
    outliers = Inputs(None, {"sl": out})
    classes = {"model": ["a", "b", "real"]}
    plain = ManiFPT("sl", epochs=6, lr=5e-3).fit(xt, yt, xv, yv, classes=classes, seed=0, device="cpu")
    oe = ManiFPT("sl", epochs=6, lr=5e-3).fit(xt, yt, xv, yv, classes=classes, seed=0, device="cpu", outliers=outliers)

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    test_out = rng.normal(0, 1, (100, 16)).astype(np.float32)
    test_out[:, 4:8] += 6.0
    p_plain, p_oe = (softmax(m.logits(Inputs(None, {"sl": test_out}))["model"]) for m in (plain, oe))
    assert p_oe.max(1).mean() < p_plain.max(1).mean() - 0.1  # less confident on unseen outliers
    assert p_oe[:, 2].mean() < 0.2  # and not "real": outliers are pulled towards the generated classes
    assert np.mean(oe.logits(xv)["model"].argmax(1) == yv["model"]) > 0.9


@pytest.fixture(scope="module")
def built_ws(tmp_path_factory):
    from fingerprint_core.pipeline import fingerprint

    data = make_gm_dataset(tmp_path_factory.mktemp("synthetic-data"), n_per_model=40, bad_file=False)
    path = tmp_path_factory.mktemp("synthetic-ws") / "ws"
    fingerprint(data, path, space_names=("rgb",), device="cpu")
    return path


def test_bench_synthetic_trains_manifpt_on_the_reprojected_traces_of_known_models(built_ws, tmp_path, monkeypatch):
    shutil.copytree(built_ws, tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    seen = {}
    fit = ManiFPT.fit

    @functools.wraps(fit)  # keeps fit's signature: the bench asks it whether outliers are taken
    def spy(self, *args, **kw):
        seen["outliers"] = kw.get("outliers")
        return fit(self, *args, **kw)
    monkeypatch.setattr(ManiFPT, "fit", spy)
    methods = {"manifpt-rgb": lambda: ManiFPT("rgb", epochs=1, batch_size=16),
               "Dzanic20": lambda: baselines.create("Dzanic20")}
    plain = bench.Bench(ws, tmp_path / "plain", methods, settings=bench.Settings(seeds=(0,), device="cpu"))
    synth = bench.Bench(ws, tmp_path / "synth", methods, settings=bench.Settings(seeds=(0,), device="cpu", synthetic=True))
    assert plain._key("manifpt-rgb", "openset", 0, 0) != synth._key("manifpt-rgb", "openset", 0, 0)
    assert plain._key("Dzanic20", "closed", 0) == synth._key("Dzanic20", "closed", 0)  # takes no outliers
    train = synth.part["train"]
    synth._fit("manifpt-rgb", 0, synth.classes, train, synth.part["val"])
    src = synthetic.source_rows(synth.table, train, split_mod.REAL)
    assert len(src) and split_mod.REAL not in set(synth.table["model"].iloc[src])
    images = split_mod.load_inputs(ws, synth.table.iloc[src], ("images",)).images
    expected = robustness.Reprojector(ws, device="cpu").artifacts(synthetic.trace(images, 0, src), "rgb")
    np.testing.assert_array_equal(seen["outliers"].artifacts["rgb"], expected)
    synth._fit("manifpt-rgb", 0, synth.classes, train, synth.part["val"])  # the second fit reads the banks back
    np.testing.assert_array_equal(seen["outliers"].artifacts["rgb"], expected)
    plain._fit("manifpt-rgb", 0, plain.classes, train, plain.part["val"])
    assert seen["outliers"] is None
