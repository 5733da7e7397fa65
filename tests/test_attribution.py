"""Attribution: the networks, ManiFPT training and storage, open-set scoring, training a workspace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fingerprint_core.attribution import nets, openset, predict, train
from fingerprint_core.attribution.manifpt import ManiFPT
from fingerprint_core.attribution.method import Inputs
from fingerprint_core.workspace import Workspace
from gmdata import add_model, blob_images

SIZE = 16
DESIGN = {  # model -> (family, upsampling, loss, normalization)
    "toy_checker": ("gan", "transposed_conv", "non_saturating", "batch"),
    "toy_rows": ("vae", "nearest_conv", "elbo", "group"),
}


def traced(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 N x H x W x 1 blob images with a model's trace: a checkerboard, horizontal or vertical stripes."""
    x = blob_images(n, SIZE, 1, rng).astype(np.float32)
    yy, xx = np.indices((SIZE, SIZE))
    pattern = {"toy_checker": (yy + xx) % 2, "toy_rows": yy % 2, "toy_columns": (xx // 2) % 2}[kind]
    x += 30 * (pattern * 2 - 1)[None, ..., None]
    return np.clip(x, 0, 255).round().astype(np.uint8)


def toy_dataset(folder: Path, *, n_per_model: int = 60, n_real: int = 600, seed: int = 0) -> Path:
    """A GM dataset whose models leave clear, different traces (and a real set without any)."""
    rng = np.random.default_rng(seed)
    (folder / "real").mkdir(parents=True)
    np.savez_compressed(folder / "real" / "real.npz", images=blob_images(n_real, SIZE, 1, rng)[..., 0])
    (folder / "models.csv").write_text("model,family,upsampling,loss,normalization\n")
    for name, design in DESIGN.items():
        add_model(folder, name, design, traced(name, n_per_model, rng))
    return folder


def trained_workspace(tmp_path_factory, kinds=("rgb",), epochs: int = 8) -> Path:
    """A toy workspace fingerprinted in rgb and freq, with trained attributors of the given kinds."""
    from fingerprint_core.pipeline import fingerprint

    data = toy_dataset(tmp_path_factory.mktemp("attr-data"))
    ws = tmp_path_factory.mktemp("attr-ws") / "toy"
    fingerprint(data, ws, space_names=("rgb", "freq"), device="cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.train(ws, kinds=list(kinds), epochs=epochs, device="cpu")
    finally:
        torch.set_num_threads(before)
    return ws


@pytest.fixture(scope="module")
def toy_ws(tmp_path_factory) -> Path:
    return trained_workspace(tmp_path_factory, kinds=("rgb", "freq"))


def synthetic(n: int, rng: np.random.Generator, shift: float = 3.0):
    """Inputs in all four spaces (rgb/freq 1 x 8 x 8, sl 16-d, ssl 24-d) where 3 classes differ by a shift."""
    y = rng.integers(0, 3, n)
    arts = {}
    for s, d in (("rgb", 64), ("freq", 64), ("sl", 16), ("ssl", 24)):
        a = rng.normal(0, 1, (n, d)).astype(np.float32)
        a[:, :4] += shift * y[:, None]
        arts[s] = a
    return Inputs(None, arts), {"model": y, "family": (y > 0).astype(np.int64)}


CLASSES = {"model": ["a", "b", "real"], "family": ["gan", "real"]}


# ---- networks -------------------------------------------------------------------------------------
def test_resnet_and_mlp_trunks_give_features_and_one_logit_row_per_head():
    torch.manual_seed(0)
    net = nets.Attributor({"rgb": nets.trunk_for("rgb", 3 * 16 * 16, (3, 16, 16)), "sl": nets.trunk_for("sl", 40, None)},
                          {"model": 5, "upsampling": 3})
    features, logits = net({"rgb": torch.randn(4, 768), "sl": torch.randn(4, 40)})
    assert features.shape == (4, 2 * nets.FEATURES)
    assert {h: tuple(z.shape) for h, z in logits.items()} == {"model": (4, 5), "upsampling": (4, 3)}
    assert isinstance(net.trunks["rgb"], nets.ResNetTrunk) and isinstance(net.trunks["sl"], nets.MLPTrunk)


def test_an_image_space_whose_dimension_is_not_the_image_shape_is_refused():
    with pytest.raises(ValueError, match="do not reshape to the image shape"):
        nets.trunk_for("freq", 100, (1, 16, 16))


@pytest.mark.parametrize("dim, shape", [(1024, (1, 32, 32)), (3072, (3, 32, 32)), (256, (1, 16, 16)), (1000, None)])
def test_square_image_shapes_are_inferred_from_the_artifact_dimension(dim, shape):
    assert nets.infer_image_shape(dim) == shape


def test_standardize_uses_training_statistics_and_passes_constant_elements():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    s = nets.Standardize(2)
    s.fit(x)
    assert torch.allclose(s(x), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))


# ---- ManiFPT -------------------------------------------------------------------------------------------
def test_unknown_space_names_the_choices():
    with pytest.raises(ValueError, match="rgb, freq, sl, ssl, fused"):
        ManiFPT("pixels")


def test_an_untrained_attributor_says_how_to_get_one():
    with pytest.raises(RuntimeError, match="call fit"):
        ManiFPT("sl").logits(Inputs(None, {"sl": np.zeros((2, 4), np.float32)}))


def test_missing_artifacts_are_named():
    x, y = synthetic(40, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs the sl, ssl artifacts"):
        ManiFPT("fused").fit(Inputs(None, {"rgb": x.artifacts["rgb"], "freq": x.artifacts["freq"]}), y,
                             x, y, classes=CLASSES, device="cpu")


@pytest.mark.parametrize("space", ["rgb", "ssl", "fused"])
def test_manifpt_learns_separable_artifacts(space, one_thread):
    rng = np.random.default_rng(0)
    (xt, yt), (xv, yv) = synthetic(300, rng), synthetic(150, rng)
    m = ManiFPT(space, epochs=6, lr=5e-3).fit(xt, yt, xv, yv, classes=CLASSES, seed=0, device="cpu")
    logits = m.logits(xv)
    assert set(logits) == {"model", "family"}
    assert np.mean(logits["model"].argmax(1) == yv["model"]) > 0.9
    assert m.features(xv).shape == (150, nets.FEATURES * (4 if space == "fused" else 1))


def test_training_is_seeded(one_thread):
    rng = np.random.default_rng(1)
    (xt, yt), (xv, yv) = synthetic(120, rng), synthetic(40, rng)
    a = ManiFPT("sl", epochs=2).fit(xt, yt, xv, yv, classes=CLASSES, seed=3, device="cpu").logits(xv)
    b = ManiFPT("sl", epochs=2).fit(xt, yt, xv, yv, classes=CLASSES, seed=3, device="cpu").logits(xv)
    assert np.array_equal(a["model"], b["model"])


def test_save_and_load_give_identical_logits_and_no_pickle(tmp_path, one_thread):
    rng = np.random.default_rng(2)
    (xt, yt), (xv, yv) = synthetic(120, rng), synthetic(40, rng)
    m = ManiFPT("fused", epochs=2).fit(xt, yt, xv, yv, classes=CLASSES, seed=0, device="cpu")
    m.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "weights.safetensors"]
    back = ManiFPT.load(tmp_path)
    for h, z in m.logits(xv).items():
        assert np.array_equal(z, back.logits(xv)[h])
    assert np.array_equal(m.features(xv), back.features(xv))
    assert json.loads((tmp_path / "config.json").read_text())["classes"] == CLASSES


# ---- open set ----------------------------------------------------------------------------------------
def test_auroc_counts_ties_half_and_orders_unknown_above_known():
    assert openset.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert openset.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert openset.auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5


# The hand-written versions that sklearn's calls replaced, kept to check that the numbers stay the same.
def _ref_auroc(known, unknown):
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks, sorted_scores = np.empty(len(both)), both[order]
    start = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    end = np.r_[start[1:], len(both)]
    ranks[order] = np.repeat((start + end + 1) / 2.0, end - start)
    return (ranks[len(known):].sum() - len(unknown) * (len(unknown) + 1) / 2) / (len(known) * len(unknown))


def _ref_youden(known, unknown):
    cands = np.unique(np.concatenate([known, unknown]))
    fpr = 1 - np.searchsorted(np.sort(known), cands, side="right") / len(known)
    tpr = 1 - np.searchsorted(np.sort(unknown), cands, side="right") / len(unknown)
    return cands[np.argmax(tpr - fpr)]


def _ref_ledoit_wolf(x):
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    delta2 = np.sum((s - mu * np.eye(p)) ** 2) / p
    beta2 = (np.sum(np.einsum("ij,ij->i", x, x) ** 2) - n * np.sum(s**2)) / (p * n**2)
    shrink = 1.0 if delta2 <= 0 else float(np.clip(beta2 / delta2, 0.0, 1.0))
    return shrink * mu * np.eye(p) + (1 - shrink) * s + openset.SHRINKAGE * max(mu, 1e-12) * np.eye(p)


@pytest.mark.parametrize("seed", range(20))
def test_sklearn_roc_and_ledoit_wolf_give_the_hand_written_numbers(seed):
    rng = np.random.default_rng(seed)
    n_known, n_unknown = rng.integers(1, 60, 2)
    # rounded scores on half the seeds: many ties, inside and across the two groups
    known, unknown = rng.normal(0, 1, n_known), rng.normal(rng.uniform(-1, 2), 1.5, n_unknown)
    if seed % 2:
        known, unknown = np.round(known, 1), np.round(unknown, 1)
    assert openset.auroc(known, unknown) == pytest.approx(_ref_auroc(known, unknown), abs=1e-12)
    assert openset.youden_threshold(known, unknown) == _ref_youden(known, unknown)
    n, p = rng.integers(2, 40), rng.integers(1, 30)  # fewer rows than features on some seeds
    x = rng.normal(0, rng.uniform(0.1, 3, p), (n, p))
    x[:, rng.random(p) < 0.2] = 0.0  # dead features
    x -= x.mean(0)
    assert np.allclose(openset.shrunk_covariance(x), _ref_ledoit_wolf(x), rtol=1e-10, atol=1e-14)


def test_the_threshold_accepts_95_percent_of_known_samples():
    known = np.arange(1000, dtype=float)
    t = openset.threshold_for(known, 0.95)
    assert np.mean(known <= t) == pytest.approx(0.95, abs=0.002)
    assert openset.rates(known, np.array([2000.0]), t) == {"tpr": 1.0, "fpr": pytest.approx(0.05, abs=0.002)}


def test_mahalanobis_separates_a_planted_unknown_cluster():
    rng = np.random.default_rng(0)
    means = rng.normal(0, 4, (3, 10))
    labels = rng.integers(0, 3, 600)
    features = means[labels] + rng.normal(0, 1, (600, 10))
    mu, precision = openset.fit_gaussians(features, labels, 3)
    known = openset.mahalanobis(means[labels[:200]] + rng.normal(0, 1, (200, 10)), mu, precision)
    unknown = openset.mahalanobis(rng.normal(0, 4, 10) + rng.normal(0, 1, (200, 10)), mu, precision)
    assert openset.auroc(known, unknown) > 0.95


# ---- a workspace -------------------------------------------------------------------------------------
def test_training_a_toy_workspace_learns_and_is_stored(toy_ws):
    ws = Workspace.open(toy_ws)
    table = train.accuracy_table(ws)
    model = table[table["head"] == "model"].set_index("kind")
    assert model.loc["rgb", "test"] >= 0.9, table  # the traces are plain in pixels
    # FREQ on 126 training samples is far weaker (a periodic trace is one bin among 256 noisy ones);
    # the product answers with the attributor of best validation accuracy
    assert train.product_kind(ws) == model["val"].idxmax()
    entry = train.stored(ws)["rgb"]
    assert sorted(p.name for p in (toy_ws / entry["dir"]).iterdir()) == [
        ".manifpt-entry", "config.json", "test.parquet", "weights.safetensors"]
    split = pd.read_parquet(toy_ws / ws.manifest["attribution"]["split"])
    assert set(split["part"]) == {"train", "val", "test"} and len(split) == sum(ws.n_images(m) for m in ws.model_names(include_real=True))
    assert "open_set" not in entry  # the verdict's thresholds are decision.py's, fitted from the workspace


def test_retraining_reuses_the_stored_attributor_and_commits_keep_it(toy_ws):
    ws = Workspace.open(toy_ws)
    before = train.stored(ws)
    logged = []
    train.train(toy_ws, kinds=["rgb", "freq"], epochs=8, device="cpu", log=logged.append)
    assert logged == ["rgb: up to date (trained before), reused", "freq: up to date (trained before), reused"]
    ws = Workspace.open(toy_ws)
    with ws.writing():
        ws.commit()  # another writer's commit must not collect the attributors as garbage
    assert train.stored(Workspace.open(toy_ws)) == before
    assert all((toy_ws / e["dir"] / "weights.safetensors").is_file() for e in before.values())


def test_fused_needs_all_four_spaces(toy_ws):
    with pytest.raises(ValueError, match="cannot train fused"):
        train.train(toy_ws, kinds=["fused"], device="cpu")


def test_a_planted_unknown_model_is_called_unknown(toy_ws):
    rng = np.random.default_rng(5)
    attributor = predict.attributor_for(toy_ws, device="cpu")
    assert attributor.kind in ("rgb", "freq")
    unknown = attributor.attribute_array(traced("toy_columns", 40, rng).transpose(0, 3, 1, 2))
    known = attributor.attribute_array(traced("toy_checker", 40, rng).transpose(0, 3, 1, 2))

    def scores(answers):
        return np.array([a["open_set_score"] for a in answers])

    assert openset.auroc(scores(known), scores(unknown)) > 0.9
    # the threshold accepts 95% of the (few) generated validation samples of known models: about half of
    # the planted model is called unknown (none of it known), and at most a few of a known one
    assert np.mean([a["verdict"] == "unknown" for a in unknown]) >= 0.4
    assert not any(a["verdict"] == "known" for a in unknown)
    assert np.mean([a["verdict"] == "known" for a in known]) >= 0.9
    assert all(a["top"][0]["model"] == "toy_checker" for a in known)


def test_the_attributor_is_built_once_per_workspace(toy_ws):
    assert predict.attributor_for(toy_ws, device="cpu") is predict.attributor_for(toy_ws, device="cpu")


def test_attributing_without_a_trained_attributor_names_the_command(gray_workspace_root):
    with pytest.raises(train.NotTrainedError, match="manifpt train"):
        predict.attributor_for(gray_workspace_root / "gm-gray", device="cpu")


def test_shipped_attributors_install_into_a_workspace_built_from_the_same_data(toy_ws, tmp_path):
    from fingerprint_core.attribution import ship
    from fingerprint_core.pipeline import fingerprint
    from fingerprint_core.workspace import Workspace

    shipped = tmp_path / "shipped"
    assert sorted(ship.export(Workspace.open(toy_ws), shipped)) == ["freq", "rgb"]
    assert not list(shipped.rglob("test.parquet"))  # weights and open-set rule only
    # a fresh workspace from the same dataset (the demo: built by every user from the shipped zoo)
    data = Path(Workspace.open(toy_ws).config["data_root"])
    fresh = tmp_path / "fresh"
    fingerprint(data, fresh, space_names=("rgb", "freq"), device="cpu")
    installed, why = ship.install(Workspace.open(fresh), shipped)
    assert sorted(installed) == ["freq", "rgb"] and not why
    ws_a, ws_b = Workspace.open(toy_ws), Workspace.open(fresh)
    assert train.stored(ws_b)["rgb"]["test"] == train.stored(ws_a)["rgb"]["test"]
    report = train.train(fresh, kinds=["rgb"], epochs=8, device="cpu")  # up to date: nothing retrained
    assert not report.empty and len(list((fresh / "attribution").iterdir())) == 2
    # a workspace with other data gets nothing, and is told why
    other = tmp_path / "other"
    fingerprint(toy_dataset(tmp_path / "other-data", seed=1), other, space_names=("rgb", "freq"), device="cpu")
    installed, why = ship.install(Workspace.open(other), shipped)
    assert installed == [] and "manifpt train" in why[0]
