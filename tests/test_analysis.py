"""Structure metrics and spectra on synthetic fingerprints with known structure."""

import numpy as np
import pytest

from fingerprint_core.analysis import design, spectra


def clustered(n_per=60, levels=("a", "b", "c"), dim=8, spread=0.2, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (len(levels), dim))
    x = np.concatenate([c + rng.normal(0, spread, (n_per, dim)) for c in centres])
    y = np.repeat(levels, n_per)
    return x, y


def test_nmi_is_one_for_clusters_that_match_the_labels():
    x, y = clustered()
    r = design.nmi(x, y, n_boot=50)
    assert r.value > 0.99 and r.low > 0.95 and r.low <= r.value <= r.high


def test_nmi_is_near_zero_for_random_labels():
    x, _ = clustered()
    y = np.random.default_rng(1).choice(["a", "b", "c"], len(x))
    assert design.nmi(x, y, n_boot=20).value < 0.05


def test_silhouette_separates_structure_from_noise():
    x, y = clustered()
    assert design.silhouette(x, y) > 0.8
    noise = np.random.default_rng(2).normal(size=x.shape)
    assert abs(design.silhouette(noise, y)) < 0.1


def test_leave_one_design_out_finds_a_planted_design_signal():
    # 8 designs x 2 seeds; the factor "up" (two levels) shifts the fingerprint along one axis
    rng = np.random.default_rng(3)
    feats, labels, designs, models = [], [], [], []
    for d in range(8):
        level = "tconv" if d % 2 else "nearest"
        for s in range(2):
            x = rng.normal(0, 1, (40, 6))
            x[:, 0] += 4 if level == "tconv" else -4
            x[:, 1:] += rng.normal(0, 3, 5)  # a per-model offset that carries no design signal
            feats.append(x)
            labels += [level] * 40
            designs += [f"d{d}"] * 40
            models += [f"d{d}-s{s}"] * 40
    r = design.leave_one_design_out(np.concatenate(feats), np.array(labels), np.array(designs), np.array(models), factor="up")
    assert len(r.folds) == 8 and all(len(f.models) == 2 for f in r.folds)
    assert r.accuracy > 0.95 and r.vote_accuracy == 1.0
    assert r.chance < 0.6  # balanced levels: the majority answer is right about half the time
    # without the signal the classifier is no better than chance
    shuffled = np.concatenate(feats)
    shuffled[:, 0] = rng.normal(0, 1, len(shuffled))
    r0 = design.leave_one_design_out(shuffled, np.array(labels), np.array(designs), np.array(models))
    assert r0.accuracy < 0.8


def test_a_checkerboard_artifact_peaks_at_the_nyquist_frequency():
    n, h = 20, 32
    checker = ((np.indices((h, h)).sum(0) % 2) * 2 - 1).astype(np.float32) * 0.05
    rng = np.random.default_rng(4)
    arts = checker[None, None] + rng.normal(0, 0.005, (n, 1, h, h)).astype(np.float32)
    images = np.full((n, 1, h, h), 128, np.uint8)
    s = spectra.model_spectra(images, arts.reshape(n, -1))
    assert np.unravel_index(np.argmax(s.artifact), s.artifact.shape) == (0, 0)  # (Nyquist, Nyquist)
    profile = s.artifact_profile
    assert np.argmax(profile) == len(profile) - 1  # the outermost ring: the corner frequency


def test_spectra_difference_from_the_real_control():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (10, 1, 16, 16), dtype=np.uint8)
    real = spectra.model_spectra(images, rng.normal(0, 0.01, (10, 256)))
    same = spectra.difference(real, real)
    assert np.allclose(same.artifact, 0) and np.allclose(same.sample_profile, 0)
    loud = spectra.model_spectra(images, rng.normal(0, 0.1, (10, 256)))
    assert (spectra.difference(loud, real).artifact_profile > 0).all()  # 10x the amplitude everywhere


def test_azimuthal_average_of_a_constant_is_that_constant():
    prof = spectra.azimuthal_average(np.full((8, 8), 3.0))
    assert np.allclose(prof, 3.0) and len(prof) == int(np.rint(np.hypot(4, 4))) + 1


@pytest.mark.slow  # numba compiles UMAP on first use
def test_umap_is_reproducible_with_its_seed_and_keeps_clusters_apart():
    from fingerprint_core.analysis import fingerprint_map

    x, y = clustered(n_per=80, dim=60)
    reduced = fingerprint_map.reduce(x, n_components=20)
    assert reduced.shape == (240, 20)
    a = fingerprint_map.umap_2d(reduced, seed=3)
    b = fingerprint_map.umap_2d(reduced, seed=3)
    assert a.shape == (240, 2) and np.array_equal(a, b)
    cents = fingerprint_map.centroids(a, y)
    assert list(cents["model"]) == ["a", "b", "c"] and (cents["n"] == 80).all()
    assert design.silhouette(a, y) > 0.5


@pytest.mark.slow
def test_analyze_caches_in_the_workspace_and_prints_the_json_contract(gray_workspace_root, tmp_path, capsys):
    import json
    import shutil

    from fingerprint_core.analysis.run import Analysis, analyze
    from fingerprint_core.cli import main
    from fingerprint_core.workspace import Workspace

    ws_path = tmp_path / "ws"
    shutil.copytree(gray_workspace_root / "gm-gray", ws_path)
    ws = Workspace.open(ws_path)
    assert Analysis.load(ws) is None
    metrics = analyze(ws)
    # two toy models, one with a checkerboard, one blurred: their fingerprints separate
    assert metrics["nmi"]["freq"]["family"] > 0.9  # the checkerboard is one frequency
    assert metrics["lomo"]["freq"]["family"]["accuracy"] is None  # two designs: nothing to learn from when one is out
    assert set(metrics["nmi"]) == {"rgb", "freq"}
    loaded = Analysis.load(Workspace.open(ws_path))
    fmap = loaded.fingerprint_map("rgb")
    assert set(fmap["model"]) == {"toy_gan", "toy_vae", "real"} and len(fmap) == 24 + 24 + 30
    assert loaded.spectra("toy_gan").artifact.shape == (16, 16)
    assert main(["analyze", str(ws_path), "--json"]) == 0  # cached: returns at once
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"nmi", "silhouette", "lomo", "levels"}
    assert isinstance(out["nmi"]["freq"]["upsampling"], float)
    assert out["nmi"]["freq"]["upsampling"] == out["levels"]["raw"]["nmi"]["freq"]["upsampling"]["value"]
    # models.csv gains a column: the cached analysis no longer matches the workspace
    ws = Workspace.open(ws_path)
    assert Analysis.state(ws) == "current" and loaded.is_current(ws)
    design = ws.design()
    design["depth"] = "4"
    ws.manifest["design"] = ws.write_table("design", design)
    ws.commit()
    assert Analysis.state(ws) == "stale" and Analysis.load(ws) is None


def test_knn_graph_is_exact_and_puts_each_point_first():
    from fingerprint_core.analysis.fingerprint_map import knn_graph

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 7)).astype(np.float32)
    x[10] = x[11]  # an exact duplicate: each must still list itself first
    idx, dist = knn_graph(x, 5, chunk=64)
    d2 = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, -1.0)
    expected = np.argsort(d2, axis=1, kind="stable")[:, :5]
    assert np.array_equal(idx[:, 0], np.arange(300)) and idx[10, 1] == 11 and idx[11, 1] == 10
    assert np.array_equal(np.sort(idx[:, 1:], axis=1), np.sort(expected[:, 1:], axis=1))
    np.fill_diagonal(d2, 0.0)
    assert np.allclose(dist, np.sqrt(np.take_along_axis(d2, idx, axis=1)), atol=1e-4)


def test_nmi_of_counts_matches_sklearn():
    from sklearn.metrics import normalized_mutual_info_score

    from fingerprint_core.analysis.design import _nmi_of_counts

    rng = np.random.default_rng(4)
    for k in (2, 3, 5):
        labels, clusters = rng.integers(0, k, 500), rng.integers(0, k, 500)
        clusters[:300] = labels[:300]  # partly agreeing
        counts = np.bincount(labels * k + clusters, minlength=k * k).reshape(k, k)
        assert abs(_nmi_of_counts(counts) - normalized_mutual_info_score(labels, clusters)) < 1e-12
