"""Model-level fingerprints: distances between models' sets and permutation tests over designs."""

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import energy_distance
from sklearn.metrics import normalized_mutual_info_score

from fingerprint_core.analysis import model_level as ml
from fingerprint_core.analysis import nulls

DEMO_TABLE = Path(__file__).resolve().parents[1] / "assets" / "demo" / "models.csv"
UPSAMPLING = ("transposed_conv", "nearest_conv", "bilinear_conv", "pixel_shuffle")
NORMALIZATION = ("batch", "instance", "spectral")


def design_table() -> pd.DataFrame:
    """4 upsampling x 3 normalization designs x 2 seeds: 24 models, 12 designs, 12 twin pairs.

    (With 16 models, 4 levels x 2 designs x 2 seeds, only 105 ways exist to group 8 designs into 4
    pairs, so no design permutation test can reach p < 1/105 ~ 0.0095; 12 designs allow 15,400.)
    """
    rows = [{"model": f"gan-{u}-{n}-s{s}", "family": "gan", "upsampling": u, "normalization": n, "seed": s}
            for u, n in itertools.product(UPSAMPLING, NORMALIZATION) for s in range(2)]
    return pd.DataFrame(rows)


def model_sets(table: pd.DataFrame, *, n_per=200, dim=8, level=1.0, model=0.3, noise=3.0, seed=0) -> dict:
    """Each model's samples: an upsampling offset + a per-model offset + per-sample noise (which dominates)."""
    rng = np.random.default_rng(seed)
    offsets = {u: rng.normal(0, level, dim) for u in UPSAMPLING}
    return {r["model"]: offsets[r["upsampling"]] + rng.normal(0, model, dim) + rng.normal(0, noise, (n_per, dim))
            for _, r in table.iterrows()}


def stacked(sets: dict):
    return np.concatenate(list(sets.values())), np.repeat(list(sets), [len(v) for v in sets.values()])


def shuffle_designs(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    facs = nulls.design_factors(table)
    ids = nulls.design_ids(table)
    rows = table.groupby(ids, sort=True).first()[facs].to_numpy()
    out = table.copy()
    out[facs] = rows[np.random.default_rng(seed).permutation(len(rows))][ids]
    return out


@pytest.fixture(scope="module")
def planted():
    t = design_table()
    x, names = stacked(model_sets(t))
    return t, ml.class_mean_distance(x, names, list(t["model"]))


# ---- distances ---------------------------------------------------------------------------------------

def test_class_mean_distance_is_the_distance_of_standardised_means():
    x = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 30.0], [6.0, 30.0]])
    names = np.array(["a", "a", "b", "b"])
    z = (x - x.mean(0)) / x.std(0)
    expected = np.linalg.norm(z[:2].mean(0) - z[2:].mean(0))
    d = ml.class_mean_distance(x, names, ["b", "a"])
    assert d[0, 1] == pytest.approx(expected) and d[1, 0] == pytest.approx(expected) and d[0, 0] == 0
    with pytest.raises(ValueError, match="c"):
        ml.class_mean_distance(x, names, ["a", "c"])


def test_energy_distance_agrees_with_scipy_in_one_dimension():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 300), rng.normal(0.5, 2, 200)
    e = ml.energy_distance_matrix({"a": a[:, None], "b": b[:, None]}, max_per_model=None)
    # scipy's 1-D energy distance is sqrt(2 * int (F - G)^2) = sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|)
    assert e[0, 1] == pytest.approx(energy_distance(a, b) ** 2, rel=1e-9)


def test_energy_and_mmd_match_brute_force_across_blocks():
    rng = np.random.default_rng(1)
    sets = [rng.normal(i * 0.2, 1, (n, 5)) for i, n in enumerate((900, 1300, 700))]  # 2,900 points: two row blocks
    e = ml.energy_distance_matrix(sets, max_per_model=None)
    eu = ml.energy_distance_matrix(sets, max_per_model=None, unbiased=True)
    k = ml.mmd_matrix(sets, bandwidth=2.0, max_per_model=None)
    for i, j in itertools.combinations(range(3), 2):
        x, y = sets[i], sets[j]
        xy, xx, yy = cdist(x, y).mean(), cdist(x, x).mean(), cdist(y, y).mean()
        assert e[i, j] == pytest.approx(2 * xy - xx - yy, rel=1e-8)
        nx, ny = len(x), len(y)
        assert eu[i, j] == pytest.approx(2 * xy - xx * nx / (nx - 1) - yy * ny / (ny - 1), rel=1e-8)

        def kern(u, v):
            return np.exp(-cdist(u, v, "sqeuclidean") / (2 * 2.0**2))
        kxx, kyy = kern(x, x), kern(y, y)
        mmd = ((kxx.sum() - nx) / (nx * (nx - 1)) + (kyy.sum() - ny) / (ny * (ny - 1)) - 2 * kern(x, y).mean())
        assert k[i, j] == pytest.approx(mmd, rel=1e-7)
    assert np.allclose(e, e.T) and np.allclose(k, k.T) and (np.diag(e) == 0).all()


def test_set_distances_are_near_zero_for_one_distribution_and_grow_with_a_shift():
    rng = np.random.default_rng(2)
    same = {"a": rng.normal(size=(300, 64)), "b": rng.normal(size=(300, 64)), "c": rng.normal(0.5, 1, (300, 64))}
    e = ml.energy_distance_matrix(same, seed=0)
    eu = ml.energy_distance_matrix(same, seed=0, unbiased=True)
    k = ml.mmd_matrix(same, seed=0)
    assert e[0, 1] < 0.1 * e[0, 2] and e[0, 2] > 0  # the V-statistic's small positive bias, against a real shift
    assert abs(eu[0, 1]) < 0.05 * eu[0, 2]
    assert abs(k[0, 1]) < 0.1 * k[0, 2] and k[0, 2] > 0


def test_set_distances_subsample_with_a_seed():
    rng = np.random.default_rng(3)
    sets = {m: rng.normal(size=(500, 4)) for m in "abc"}
    assert np.array_equal(ml.energy_distance_matrix(sets, max_per_model=100, seed=5),
                          ml.energy_distance_matrix(sets, max_per_model=100, seed=5))
    assert not np.array_equal(ml.mmd_matrix(sets, max_per_model=100, seed=5), ml.mmd_matrix(sets, max_per_model=100, seed=6))


# ---- share test --------------------------------------------------------------------------------------

def test_share_test_finds_the_planted_factor_and_not_an_unrelated_one(planted):
    t, d = planted
    up = ml.share_test(d, t, "upsampling", permutations=2000, seed=0, exclude_twins="both")
    assert up["effect"] > 0 and up["p"] < 0.01 and up["p_without_twins"] < 0.01
    assert up["twin_pairs"] == 12 and up["share_pairs_without_twins"] == up["share_pairs"] - 12
    assert up["differ_pairs"] == up["differ_pairs_without_twins"]  # twins always share a level
    assert up["effect"] == pytest.approx(up["differ_mean"] - up["share_mean"])
    norm = ml.share_test(d, t, "normalization", permutations=2000, seed=0)
    assert norm["p"] > 0.05


def test_share_test_is_calibrated_when_designs_are_shuffled(planted):
    t, d = planted
    ps = [ml.share_test(d, shuffle_designs(t, s), "upsampling", permutations=1000, seed=s)["p"] for s in range(20)]
    assert ps[0] >= 0.01  # the fixed seed
    assert np.mean(np.array(ps) < 0.05) <= 0.15  # near 5%: at most 3 of 20


def nested_table() -> pd.DataFrame:
    """GANs: 4 upsampling x 3 losses; VAEs: 4 upsampling x elbo. Loss is nested in family."""
    rows = [{"model": f"gan-{u}-{loss}", "family": "gan", "upsampling": u, "loss": loss}
            for u, loss in itertools.product(UPSAMPLING, ("non_saturating", "hinge", "least_squares"))]
    rows += [{"model": f"vae-{u}", "family": "vae", "upsampling": u, "loss": "elbo"} for u in UPSAMPLING]
    return pd.DataFrame(rows)


def nested_distance(t: pd.DataFrame, driver: str, seed: int = 0) -> np.ndarray:
    """Class-mean distances of models whose features shift with `driver`'s level (plus noise)."""
    rng = np.random.default_rng(seed)
    offsets = {v: rng.normal(0, 1.0, 8) for v in t[driver].unique()}
    sets = {r["model"]: offsets[r[driver]] + rng.normal(0, 0.3, 8) + rng.normal(0, 3.0, (200, 8)) for _, r in t.iterrows()}
    return ml.class_mean_distance(*stacked(sets), list(t["model"]))


def test_share_test_within_strata_tells_loss_from_family_in_disguise():
    t = nested_table()
    by_family = nested_distance(t, "family")  # family drives the features, loss does not
    plain = ml.share_test(by_family, t, "loss", permutations=2000, seed=0)
    assert plain["p"] < 0.01  # loss over all models: family in disguise (elbo = vae)
    within = ml.share_test(by_family, t, "loss", strata="family", permutations=2000, seed=0)
    assert within["share_pairs"] + within["differ_pairs"] == 12 * 11 // 2 + 4 * 3 // 2  # pairs inside one family only
    assert within["testable"] and within["p"] > 0.05
    by_loss = nested_distance(t, "loss")  # now loss drives the features within the GANs too
    assert ml.share_test(by_loss, t, "loss", strata="family", permutations=2000, seed=0)["p"] < 0.01


def test_share_test_says_when_strata_leave_nothing_to_permute(planted):
    t, d = planted
    # upsampling within normalization: one design per (upsampling, normalization) cell, so within a
    # stratum only twins share a level, whatever the permutation
    r = ml.share_test(d, t, "upsampling", strata="normalization", permutations=200, seed=0)
    assert r["share_pairs"] + r["differ_pairs"] == 3 * (8 * 7 // 2)  # 3 strata of 8 models
    assert not r["testable"] and r["p"] == 1.0
    assert ml.share_test(d, t, "upsampling", permutations=200, seed=0)["testable"]


def test_share_test_accepts_a_labelled_frame_in_any_order(planted):
    t, d = planted
    order = list(t["model"])[::-1]
    frame = pd.DataFrame(d, index=t["model"], columns=t["model"]).loc[order, order]
    a = ml.share_test(frame, t, "upsampling", permutations=300, seed=1)
    b = ml.share_test(d, t, "upsampling", permutations=300, seed=1)
    assert a["effect"] == pytest.approx(b["effect"])
    with pytest.raises(ValueError, match="24 models"):
        ml.share_test(d[:5, :5], t, "upsampling")


# ---- clustering of the models ------------------------------------------------------------------------

def test_cluster_nmi_equals_sklearn_and_finds_the_planted_factor(planted):
    t, d = planted
    r = ml.cluster_nmi(d, t, "upsampling", permutations=1000, seed=0)
    clusters = [r["clusters"][m] for m in t["model"]]
    assert r["k"] == 4
    assert r["value"] == pytest.approx(normalized_mutual_info_score(t["upsampling"], clusters), abs=1e-12)
    assert r["p"] < 0.01
    assert ml.cluster_nmi(d, t, "normalization", permutations=1000, seed=0)["p"] > 0.05


def test_cluster_nmi_is_not_small_when_designs_are_shuffled(planted):
    t, d = planted
    ps = [ml.cluster_nmi(d, shuffle_designs(t, s), "upsampling", permutations=500, seed=s)["p"] for s in range(20)]
    assert ps[0] >= 0.01 and np.mean(np.array(ps) < 0.05) <= 0.15


def test_leaf_order_is_a_permutation_that_keeps_levels_together(planted):
    t, d = planted
    order = ml.leaf_order(d)
    assert sorted(order) == list(range(len(t)))
    levels = t["upsampling"].to_numpy()[order]
    assert sum(a != b for a, b in itertools.pairwise(levels)) == 3  # four contiguous runs


# ---- nesting -----------------------------------------------------------------------------------------

def test_nesting_flags_elbo_in_vae_on_the_demo_table():
    t = pd.read_csv(DEMO_TABLE)
    found = {(n.factor, n.level, n.within, n.within_level) for n in ml.nesting(t)}
    assert ("loss", "elbo", "family", "vae") in found
    assert ("loss", "denoising", "family", "diffusion") in found
    assert not any(f == "upsampling" for f, *_ in found)  # every upsampling occurs in several families
    assert ml.determines(t, "loss", "family") and not ml.determines(t, "upsampling", "family")
    assert ("normalization", "group", "family", "diffusion") in found
    assert not any(n.designs < 2 for n in ml.nesting(t))
