"""The foreign set (assets/foreign/): generators the demo zoo does not contain, only for measuring
open-world attribution. Its plan, its samples' layout, its distance from the zoo, its quality, and a
tiny build of each generator architecture the zoo lacks."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fingerprint_core.zoo import build, gan, plan, registry

REPO = Path(__file__).resolve().parents[1]
FOREIGN = REPO / "assets" / "foreign"
DEMO = REPO / "assets" / "demo"
ZOO_PLAN = REPO / "assets" / "zoo" / "plan.csv"
N_SAMPLES = 1000
# DESIGN.md section 4, the design-choice vocabulary
VOCABULARY = {
    "family": {"gan", "vae", "diffusion", "flow", "real"},
    "upsampling": {"transposed_conv", "nearest_conv", "bilinear_conv", "pixel_shuffle", "none"},
    "loss": {"non_saturating", "hinge", "least_squares", "wasserstein_gp", "elbo", "denoising", "likelihood"},
    "normalization": {"batch", "instance", "group", "spectral", "none"},
}
# the zoo's weakest figures (assets/demo/quality.csv): the bar every foreign model must reach
PRECISION_BAR, RECALL_BAR = 0.6035, 0.173

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def foreign_plan() -> pd.DataFrame:
    return plan.load(FOREIGN / "plan.csv", coverage=False)


@pytest.fixture(scope="module")
def zoo_plan() -> pd.DataFrame:
    return plan.load(ZOO_PLAN)


def recipe(row: dict) -> tuple:
    """Design + architecture + recipe: the generator config (family, upsampling, loss, normalization,
    architecture, width, z_dim, ...) with the batch size and iteration count."""
    return (*sorted(registry.generator_config(row).items()), ("batch_size", int(row["batch_size"])),
            ("iterations", int(row["iterations"])))


def lineage(row: dict) -> tuple[str, str]:
    """(family, generator architecture); the families with a single architecture have ""."""
    return row["family"], registry.generator_config(row).get("architecture", "")


def test_the_foreign_plan_validates_in_the_design_vocabulary(foreign_plan):
    assert len(foreign_plan) >= 4
    for row in foreign_plan.to_dict("records"):
        assert registry.check_design(row) == []
        for key, values in VOCABULARY.items():
            assert row[key] in values, f"{row['name']}: {key}={row[key]!r} is not in the vocabulary"
        assert str(row["note"]).strip(), f"{row['name']}: the plan's note says how it differs from the zoo"


def test_no_foreign_model_repeats_a_zoo_name_or_recipe(foreign_plan, zoo_plan):
    assert not set(foreign_plan["name"]) & set(zoo_plan["name"])
    zoo = {recipe(r) for r in zoo_plan.to_dict("records")}
    zoo_configs = [registry.generator_config(r) for r in zoo_plan.to_dict("records")]
    zoo_seeds = set(zoo_plan["seed"])
    for row in foreign_plan.to_dict("records"):
        assert recipe(row) not in zoo, row["name"]
        # not even the generator alone (the recipe may differ by more than the training length)
        assert registry.generator_config(row) not in zoo_configs, row["name"]
        assert row["seed"] not in zoo_seeds, f"{row['name']}: seeds of its own"


def test_at_least_two_foreign_generators_have_an_architecture_outside_the_zoo(foreign_plan, zoo_plan):
    zoo = {lineage(r) for r in zoo_plan.to_dict("records")}
    outside = [r["name"] for r in foreign_plan.to_dict("records") if lineage(r) not in zoo]
    assert len(outside) >= 2, outside
    # and the others are zoo families trained with another recipe
    assert len(outside) < len(foreign_plan)


def test_the_folder_has_the_zoo_layout_and_no_weights_checkpoints_or_grids(foreign_plan):
    names = list(foreign_plan["name"])
    assert sorted(p.name for p in (FOREIGN / "models").iterdir()) == sorted(names)
    for name in names:
        files = {p.name for p in (FOREIGN / "models" / name).iterdir()}
        assert files == {"samples.npz", "card.md", "result.json"}, f"{name}: {files}"
    assert not (FOREIGN / "checkpoints").exists() and not (FOREIGN / "grids").exists()
    assert not list(FOREIGN.rglob("*.safetensors")) and not list(FOREIGN.rglob("*.pt"))
    assert (FOREIGN / "build.log").read_text().strip()
    table = pd.read_csv(FOREIGN / "models.csv")
    assert list(table.columns) == list(build.MODELS_CSV_COLUMNS)
    expected = foreign_plan[["name", *build.MODELS_CSV_COLUMNS[1:]]].rename(columns={"name": "model"})
    assert table.values.tolist() == expected.values.tolist()


def test_every_foreign_model_has_1000_samples_in_the_zoos_layout(foreign_plan):
    with np.load(DEMO / "models" / "gan-tconv-ns-bn-s0" / "samples.npz") as npz:
        assert npz.files == ["images"]
        zoo = npz["images"]
    for name in foreign_plan["name"]:
        path = FOREIGN / "models" / name / "samples.npz"
        with zipfile.ZipFile(path) as zf:
            assert [(i.filename, i.compress_type) for i in zf.infolist()] == [("images.npy", zipfile.ZIP_LZMA)]
        with np.load(path) as npz:
            assert npz.files == ["images"]
            images = npz["images"]
        assert images.shape == (N_SAMPLES, *zoo.shape[1:]) and images.dtype == zoo.dtype == np.uint8
        assert images.std() > 10, f"{name}: flat samples"
        result = json.loads((FOREIGN / "models" / name / "result.json").read_text())
        row = foreign_plan.set_index("name").loc[name]
        assert result["n_samples"] == N_SAMPLES and result["sample_seed"] == build.SAMPLE_SEED
        assert result["iterations_done"] == int(row["iterations"])
        card = (FOREIGN / "models" / name / "card.md").read_text()
        for text in (f"| family | {row['family']} |", f"| upsampling | {row['upsampling']} |",
                     f"| loss | {row['loss']} |", f"| normalization | {row['normalization']} |",
                     f"- note: {row['note']}", f"{int(row['iterations']):,} iterations", "## Quality"):
            assert text in card, f"{name}: {text!r} not in the card"


def test_every_foreign_model_is_at_least_as_good_as_the_zoos_weakest(foreign_plan):
    demo = pd.read_csv(DEMO / "quality.csv")
    assert demo["precision"].min() == PRECISION_BAR and demo["recall"].min() == RECALL_BAR
    table = pd.read_csv(FOREIGN / "quality.csv").set_index("model")
    assert sorted(table.index) == sorted(foreign_plan["name"])
    for name, q in table.iterrows():
        assert q["precision"] >= PRECISION_BAR, f"{name}: precision {q['precision']}"
        assert q["recall"] >= RECALL_BAR, f"{name}: recall {q['recall']}"
        assert q["n_samples"] == N_SAMPLES and q["n_real"] == demo["n_real"].iloc[0] and q["k"] == demo["k"].iloc[0]
    # measured as the zoo's were: the same SL encoder and real test images
    zoo_q = json.loads((DEMO / "models" / "gan-tconv-ns-bn-s0" / "result.json").read_text())["quality"]
    for name in table.index:
        q = json.loads((FOREIGN / "models" / name / "result.json").read_text())["quality"]
        assert (q["encoder_sha256"], q["real_seed"]) == (zoo_q["encoder_sha256"], zoo_q["real_seed"])


def test_samples_npz_is_lzma_and_round_trips_bit_exactly():
    images = np.random.default_rng(0).integers(0, 256, (37, 32, 32), dtype=np.uint8)
    data = build.samples_npz_bytes(images)
    assert data == build.samples_npz_bytes(images)  # reproducible bytes
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert [i.compress_type for i in zf.infolist()] == [zipfile.ZIP_LZMA]
    with np.load(io.BytesIO(data)) as npz:
        back = npz["images"]
    assert back.dtype == np.uint8 and back.shape == images.shape and np.array_equal(back, images)


def test_architectures_accept_only_the_upsampling_they_build():
    base = {"family": "gan", "loss": "hinge", "normalization": "batch"}
    assert registry.check_design({**base, "upsampling": "none", "architecture": "mlp"}) == []
    assert "for gan architecture dcgan" in registry.check_design({**base, "upsampling": "none"})[0]
    assert "for gan architecture mlp" in registry.check_design({**base, "upsampling": "pixel_shuffle", "architecture": "mlp"})[0]
    assert "for gan architecture resnet" in registry.check_design({**base, "upsampling": "transposed_conv", "architecture": "resnet"})[0]
    unknown = registry.check_design({**base, "upsampling": "none", "architecture": "stylegan"})
    assert "architecture='stylegan' is not one of dcgan, resnet, mlp" in unknown[0]
    with pytest.raises(plan.PlanError, match="upsampling='none'"):
        plan.validate(pd.DataFrame([{"name": "x", **base, "upsampling": "none", "seed": 0, "iterations": 1,
                                     "width": 8, "batch_size": 4}]))
    assert registry.generator_config({**base, "upsampling": "nearest_conv"})["architecture"] == "dcgan"


@pytest.fixture(scope="module")
def train_images() -> np.ndarray:
    """64 Fashion-MNIST training images (synthetic blobs where the data set is not installed)."""
    from fingerprint_core.datasets import DatasetError, load_fashion_mnist

    try:
        return load_fashion_mnist("train")[0][:64]
    except DatasetError:
        from gmdata import blob_images

        return blob_images(64, 32, 1, np.random.default_rng(0)).transpose(0, 3, 1, 2).copy()


def test_each_new_architecture_builds_through_the_zoo_build(tmp_path, foreign_plan, zoo_plan, train_images):
    zoo = {lineage(r) for r in zoo_plan.to_dict("records")}
    new = foreign_plan[[lineage(r) not in zoo for r in foreign_plan.to_dict("records")]].copy()
    new["width"], new["iterations"], new["batch_size"] = 8, 2, 8
    out = tmp_path / "foreign"
    report = build.build(new, out, images=train_images, coverage=False, n_samples=12, progress=False)
    assert report.finished == list(new["name"])
    for row in new.to_dict("records"):
        folder = out / "models" / row["name"]
        with zipfile.ZipFile(folder / "samples.npz") as zf:
            assert [i.compress_type for i in zf.infolist()] == [zipfile.ZIP_LZMA]
        with np.load(folder / "samples.npz") as npz:
            samples = npz["images"]
        assert samples.shape == (12, 32, 32) and samples.dtype == np.uint8
        model, meta = registry.load_generator(folder / "generator.safetensors")
        assert meta["config"]["architecture"] == row["architecture"]
        assert isinstance(model, {"mlp": gan.MLPGenerator, "resnet": gan.ResNetGenerator}[row["architecture"]])
        assert np.array_equal(registry.sample(model, 12, seed=build.SAMPLE_SEED), samples)
        card = (folder / "card.md").read_text()
        assert f"- generator ({row['architecture']}): {gan.ARCHITECTURE_TEXT[row['architecture']]}" in card
