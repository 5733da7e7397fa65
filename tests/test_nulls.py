"""Per-sample structure metrics beside their design-permutation nulls, on synthetic fingerprints with known structure."""

import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from fingerprint_core.analysis import nulls

UPSAMPLING = ("transposed_conv", "nearest_conv", "bilinear_conv", "pixel_shuffle")
NORMALIZATION = ("batch", "instance", "spectral")


def design_table(seeds: int = 2) -> pd.DataFrame:
    """4 upsampling x 3 normalization designs, each trained with `seeds` seeds (seed twins)."""
    rows = [
        {"model": f"gan-{u}-{n}-s{s}", "family": "gan", "upsampling": u, "normalization": n, "seed": s}
        for u, n in itertools.product(UPSAMPLING, NORMALIZATION)
        for s in range(seeds)
    ]
    return pd.DataFrame(rows)


def samples(table: pd.DataFrame, *, n_per=150, dim=8, level=1.0, model=0.3, noise=2.0, seed=0):
    """Per-sample features: an upsampling offset + a per-model offset + per-sample noise (which dominates)."""
    rng = np.random.default_rng(seed)
    offsets = {u: rng.normal(0, level, dim) for u in UPSAMPLING}
    feats, names = [], []
    for _, r in table.iterrows():
        centre = offsets[r["upsampling"]] + rng.normal(0, model, dim)
        feats.append(centre + rng.normal(0, noise, (n_per, dim)))
        names += [r["model"]] * n_per
    return np.concatenate(feats), np.array(names)


def shuffle_designs(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same models with their designs shuffled among designs (twins keep a shared design)."""
    facs = nulls.design_factors(table)
    ids = nulls.design_ids(table)
    rows = table.groupby(ids, sort=True).first()[facs].to_numpy()
    perm = np.random.default_rng(seed).permutation(len(rows))
    out = table.copy()
    out[facs] = rows[perm][ids]
    return out


def kmeans(x, k, seed=0):
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)


def per_sample(table, names, factor):
    return table.set_index("model").loc[names, factor].to_numpy()


# ---- design codes and permutations ------------------------------------------------------------------

def test_design_ids_join_seed_twins_and_permutations_move_whole_designs():
    t = design_table()
    ids = nulls.design_ids(t)
    assert len(np.unique(ids)) == 12 and (np.bincount(ids) == 2).all()  # each design has its two seeds
    codes = nulls.design_codes(t, "upsampling")
    labels = nulls.permuted_model_labels(codes, 200, seed=1)
    twins = codes.design.reshape(-1, 2)  # rows are in design order, two seeds each
    assert (labels[:, twins[:, 0]] == labels[:, twins[:, 1]]).all()  # twins always share the drawn design
    assert (np.sort(labels, axis=1) == np.sort(codes.model_labels)).all()  # the level counts are kept
    assert not (labels == codes.model_labels).all(axis=1).all()  # and it does shuffle


def test_permutations_within_strata_never_cross_them():
    strata = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    perms = nulls.design_permutations(len(strata), 500, strata=strata, seed=3)
    assert (strata[perms] == strata).all()
    assert (np.sort(perms, axis=1) == np.arange(len(strata))).all()  # each row is a permutation
    assert len({tuple(p) for p in perms}) > 100


def test_design_codes_names_missing_models_and_columns():
    t = design_table()
    with pytest.raises(ValueError, match="nope"):
        nulls.design_codes(t, "upsampling", ["nope"])
    with pytest.raises(ValueError, match="'loss'"):
        nulls.design_codes(t, "loss")


# ---- NMI ---------------------------------------------------------------------------------------------

def test_nmi_value_equals_sklearn():
    t = design_table()
    x, names = samples(t)
    clusters = kmeans(x, 4)
    for factor in ("upsampling", "normalization"):
        r = nulls.nmi_null(clusters, names, t, factor, permutations=50)
        assert r["value"] == pytest.approx(normalized_mutual_info_score(per_sample(t, names, factor), clusters), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("true,pred", [([0, 0, 0], [1, 1, 1]), ([0, 0, 1], [0, 0, 0]), ([0, 1, 2, 3], [0, 0, 0, 0]),
                                       ([0, 0, 1, 1], [1, 1, 0, 0]), ([0, 1, 1, 2, 2, 2], [0, 0, 1, 1, 2, 0])])
def test_nmi_of_tables_matches_sklearn_on_edge_cases(true, pred):
    table = pd.crosstab(np.array(true), np.array(pred)).to_numpy()
    assert nulls.nmi_of_tables(table) == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-12)


def test_nmi_null_finds_a_planted_design_factor_and_not_an_unrelated_one():
    t = design_table()
    x, names = samples(t, seed=0)
    clusters = kmeans(x, 4)
    up = nulls.nmi_null(clusters, names, t, "upsampling", permutations=1000, seed=0)
    assert up["p"] < 0.01 and up["value"] > up["null_p95"]
    norm = nulls.nmi_null(kmeans(x, 3), names, t, "normalization", permutations=1000, seed=0)
    assert norm["p"] > 0.05
    assert up["p"] >= 1 / 1001  # never below the smallest attainable p


def test_a_label_constant_within_models_scores_above_zero_but_not_above_its_null():
    # the learned level: features cluster by model, no design signal at all
    t = design_table()
    x, names = samples(t, level=0.0, model=3.0, noise=0.5, seed=4)
    clusters = kmeans(x, 4)
    r = nulls.nmi_null(clusters, names, t, "upsampling", permutations=1000, seed=0)
    assert r["value"] > 0.1  # far above zero by construction ...
    assert r["null_mean"] > 0.1 and r["p"] > 0.05  # ... and so is the null, which keeps the models


def test_nmi_null_is_calibrated_when_designs_are_shuffled():
    t = design_table()
    x, names = samples(t, seed=0)
    clusters = kmeans(x, 4)
    ps = [nulls.nmi_null(clusters, names, shuffle_designs(t, s), "upsampling", permutations=500, seed=s)["p"] for s in range(20)]
    assert min(ps[:1]) >= 0.01  # the fixed seed
    assert np.mean(np.array(ps) < 0.05) <= 0.15  # near 5%: at most 3 of 20


def test_nmi_null_within_strata_keeps_the_nested_levels():
    t = design_table(seeds=1)
    vae = pd.DataFrame([{"model": f"vae-{u}", "family": "vae", "upsampling": u, "normalization": "elbo-norm", "seed": 0}
                        for u in UPSAMPLING])
    t = pd.concat([t, vae], ignore_index=True)
    codes = nulls.design_codes(t, "normalization", strata="family")
    labels = nulls.permuted_model_labels(codes, 300, seed=0)
    vae_rows = (t["family"] == "vae").to_numpy()
    level = codes.levels.index("elbo-norm")
    assert (labels[:, vae_rows] == level).all() and (labels[:, ~vae_rows] != level).all()


def test_design_bootstrap_brackets_the_value_and_is_seeded():
    t = design_table()
    x, names = samples(t, seed=0)
    clusters = kmeans(x, 4)
    value = nulls.nmi_null(clusters, names, t, "upsampling", permutations=10)["value"]
    low, high = nulls.nmi_design_bootstrap(clusters, names, t, "upsampling", n_boot=500, seed=1)
    assert 0 < low <= value <= high <= 1
    assert (low, high) == nulls.nmi_design_bootstrap(clusters, names, t, "upsampling", n_boot=500, seed=1)
    # a design bootstrap is wider than a sample bootstrap would be: at least a few hundredths here
    assert high - low > 0.02


# ---- silhouette --------------------------------------------------------------------------------------

def test_silhouette_of_sums_equals_sklearn_for_any_labelling_of_the_models():
    t = design_table()
    x, names = samples(t, n_per=20, seed=2)
    models = list(t["model"])
    unit = np.array([models.index(m) for m in names])
    sums = nulls.model_distance_sums(x, unit, len(models))
    rng = np.random.default_rng(0)
    labellings = rng.integers(0, 4, (5, len(models)))
    labellings[0, :] = 0
    labellings[0, :2] = 1  # one level of just two models
    got = nulls.silhouette_of_sums(sums, unit, labellings, 4)
    for lab, g in zip(labellings, got, strict=True):
        assert g == pytest.approx(silhouette_score(x, lab[unit]), abs=1e-10)


def test_silhouette_null_matches_sklearn_and_sees_the_planted_factor():
    t = design_table()
    x, names = samples(t, n_per=40, seed=0)
    up = nulls.silhouette_null(x, names, t, "upsampling", permutations=300, max_samples=5000, seed=0)
    assert up["value"] == pytest.approx(silhouette_score(x, per_sample(t, names, "upsampling")), abs=1e-10)
    assert up["p"] < 0.01 and up["value"] > up["null_p95"]
    norm = nulls.silhouette_null(x, names, t, "normalization", permutations=300, max_samples=600, seed=0)
    assert norm["p"] > 0.05


# ---- purity ------------------------------------------------------------------------------------------

def brute_purity(xy, names, k):
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    nb = np.argsort(d, axis=1, kind="stable")[:, :k]
    return float((names[nb] == names[:, None]).mean())


def test_purity_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(120, 2))
    names = rng.choice(["a", "b", "c"], 120)
    assert nulls.purity(xy, names, k=10) == pytest.approx(brute_purity(xy, names, 10))


def test_purity_null_tells_a_map_of_models_from_an_unstructured_one():
    rng = np.random.default_rng(1)
    names = np.repeat([f"m{i}" for i in range(8)], 50)
    centres = rng.normal(0, 10, (8, 2))
    clustered = centres[np.repeat(np.arange(8), 50)] + rng.normal(0, 0.5, (400, 2))
    r = nulls.purity_null(clustered, names, permutations=200, seed=0)
    assert r["value"] > 0.9 and r["p"] < 0.01
    assert r["null_mean"] == pytest.approx(r["chance"], abs=0.01) and r["chance"] == pytest.approx(49 / 399)
    flat = nulls.purity_null(rng.normal(size=(400, 2)), names, permutations=200, seed=0)
    assert flat["value"] < flat["null_p95"] + 0.02 and flat["p"] > 0.01


def test_level_purity_null_needs_design_structure_beyond_models():
    t = design_table()
    n = 30
    names = np.repeat(t["model"].to_numpy(), n)
    rng = np.random.default_rng(2)
    # every model a tight blob, at random places: a map of models, not of designs
    blobs = rng.normal(0, 10, (len(t), 2))[np.repeat(np.arange(len(t)), n)] + rng.normal(0, 0.3, (len(names), 2))
    models_only = nulls.level_purity_null(blobs, names, t, "upsampling", permutations=500, seed=0)
    assert models_only["value"] > 0.8  # own-model neighbours share the level ...
    assert models_only["p"] > 0.05  # ... which the design null keeps
    # models placed by upsampling: each level's models side by side
    level_pos = {u: rng.normal(0, 20, 2) for u in UPSAMPLING}
    centres = np.array([level_pos[u] for u in t["upsampling"]]) + rng.normal(0, 1.0, (len(t), 2))
    by_level = centres[np.repeat(np.arange(len(t)), n)] + rng.normal(0, 0.3, (len(names), 2))
    r = nulls.level_purity_null(by_level, names, t, "upsampling", permutations=500, seed=0)
    assert r["p"] < 0.01


# ---- Holm --------------------------------------------------------------------------------------------

def test_holm_matches_a_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(nulls.holm(p), [0.03, 0.06, 0.06, 0.02])
    assert nulls.holm({"a": 0.5, "b": 0.01, "c": float("nan")}) == pytest.approx({"a": 0.5, "b": 0.02, "c": float("nan")}, nan_ok=True)
    np.testing.assert_allclose(nulls.holm([0.6, 0.9]), [1.0, 1.0])  # clipped at 1
    assert nulls.holm(np.array([[0.01, 0.02], [0.03, 0.04]])).shape == (2, 2)


def test_p_value_counts_ties_and_never_reaches_zero():
    assert nulls.p_value(np.array([0.1, 0.2, 0.3]), 0.2) == pytest.approx(3 / 4)
    assert nulls.p_value(np.zeros(999), 1.0) == pytest.approx(1 / 1000)
