"""The demo zoo: generator families, design layers, the plan, quality figures, and resumable builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from fingerprint_core import encoders
from fingerprint_core.cli import main
from fingerprint_core.zoo import build, cards, evaluate, layers, plan, quality, registry

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "assets" / "zoo" / "plan.csv"
LOSS_OF = {"gan": "hinge", "vae": "elbo", "diffusion": "denoising"}
NORMS_OF = {"gan": ("batch", "none", "spectral", "instance"), "vae": ("batch", "none", "group"), "diffusion": ("group",)}
NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny training steps: see conftest


def tiny(family: str, upsampling: str = "transposed_conv", normalization: str | None = None, **kw) -> dict:
    """A design row with a tiny width (and a 2-step sampler for diffusion), fast on the CPU."""
    design = {"family": family, "upsampling": upsampling, "loss": LOSS_OF[family],
              "normalization": normalization or NORMS_OF[family][0], "width": 8, **kw}
    if family == "diffusion":
        design.setdefault("sampling_steps", 2)
    return design


def module_types(model: nn.Module) -> set[type]:
    return {type(m) for m in model.modules()}


# ---------------------------------------------------------------------------------------------
# Generators and design layers


@pytest.mark.parametrize("family", list(registry.FAMILIES))
@pytest.mark.parametrize("upsampling", layers.UPSAMPLING)
def test_every_generator_maps_noise_to_images_in_range(family, upsampling):
    torch.manual_seed(0)
    g = registry.build_generator(tiny(family, upsampling)).eval()
    x = g(torch.randn(3, *g.latent_shape) * 3)  # large noise: the range must hold anyway
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0
    codes = registry.to_uint8(x)
    assert codes.dtype == torch.uint8
    assert torch.equal(codes, ((x + 1) * 127.5).round().to(torch.uint8))


UPSAMPLING_LAYER = {
    "transposed_conv": lambda t, m: nn.ConvTranspose2d in t,
    "pixel_shuffle": lambda t, m: nn.PixelShuffle in t,
    "nearest_conv": lambda t, m: any(isinstance(x, nn.Upsample) and x.mode == "nearest" for x in m.modules()),
    "bilinear_conv": lambda t, m: any(isinstance(x, nn.Upsample) and x.mode == "bilinear" for x in m.modules()),
}


@pytest.mark.parametrize("family", list(registry.FAMILIES))
@pytest.mark.parametrize("upsampling", layers.UPSAMPLING)
def test_upsampling_builds_the_layer_it_names_and_none_of_the_others(family, upsampling):
    g = registry.build_generator(tiny(family, upsampling))
    types = module_types(g)
    for kind, present in UPSAMPLING_LAYER.items():
        assert present(types, g) == (kind == upsampling), f"{family} {upsampling}: {kind} layer present={present(types, g)}"


@pytest.mark.parametrize("family,normalization", [(f, n) for f, norms in NORMS_OF.items() for n in norms])
def test_normalization_builds_the_layer_it_names_and_none_of_the_others(family, normalization):
    g = registry.build_generator(tiny(family, normalization=normalization))
    types = module_types(g)
    norms = {t for t in types if issubclass(t, NORM_TYPES)}
    spectral = any(nn.utils.parametrize.is_parametrized(m) for m in g.modules())
    expected = {"batch": {nn.BatchNorm2d}, "group": {nn.GroupNorm}, "instance": {nn.InstanceNorm2d},
                "none": set(), "spectral": set()}[normalization]
    assert norms == expected
    assert spectral == (normalization == "spectral")


def test_unknown_design_values_fail_with_the_valid_ones():
    with pytest.raises(ValueError, match="family='flow' is not one of gan, vae, diffusion"):
        registry.build_generator({**tiny("gan"), "family": "flow"})
    with pytest.raises(ValueError, match="upsampling='deconv' is not one of transposed_conv, nearest_conv, bilinear_conv, pixel_shuffle"):
        registry.build_generator(tiny("gan", "deconv"))
    with pytest.raises(ValueError, match="normalization='batch' is not one of group for family diffusion"):
        registry.build_generator(tiny("diffusion", normalization="batch"))
    with pytest.raises(ValueError, match="loss='elbo' is not one of non_saturating, hinge, least_squares, wasserstein_gp"):
        registry.build_generator({**tiny("gan"), "loss": "elbo"})


@pytest.mark.parametrize("loss", ["non_saturating", "hinge", "least_squares", "wasserstein_gp"])
def test_every_gan_loss_trains_both_players(loss):
    torch.manual_seed(0)
    trainer = registry.build_trainer({**tiny("gan"), "loss": loss})
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in trainer.modules.items()}
    losses = trainer.step(torch.rand(8, 1, 32, 32) * 2 - 1, torch.Generator().manual_seed(0))
    assert set(losses) == {"d", "g"} and all(torch.isfinite(v) for v in losses.values())
    for key in ("generator", "discriminator", "average"):
        moved = [not torch.equal(a, b) for a, b in zip(before[key], trainer.modules[key].parameters(), strict=True)]
        assert any(moved), f"{loss}: the {key} did not change"


def test_gan_losses_reward_the_right_side():
    good, bad = torch.full((4,), 3.0), torch.full((4,), -3.0)  # logits: confident "real" / "fake"
    for loss in ("non_saturating", "hinge", "least_squares", "wasserstein_gp"):
        assert gan_d(loss, good, bad) < gan_d(loss, bad, good)
        assert gan_g(loss, good) < gan_g(loss, bad)


def gan_d(loss, real, fake):
    from fingerprint_core.zoo import gan

    return float(gan.discriminator_loss(loss, real, fake))


def gan_g(loss, fake):
    from fingerprint_core.zoo import gan

    return float(gan.generator_loss(loss, fake))


def test_diffusion_stays_well_under_a_million_parameters_and_samples_deterministically():
    for upsampling in layers.UPSAMPLING:
        g = registry.build_generator({"family": "diffusion", "upsampling": upsampling, "loss": "denoising",
                                      "normalization": "group"})
        assert sum(p.numel() for p in g.parameters()) < 900_000
    g = registry.build_generator(tiny("diffusion", sampling_steps=3))
    a, b = registry.sample(g, 5, seed=1), registry.sample(g, 5, seed=1)
    assert a.shape == (5, 32, 32) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, registry.sample(g, 5, seed=2))


# ---------------------------------------------------------------------------------------------
# The plan


def test_the_shipped_plan_passes_validation_and_coverage():
    table = plan.load(PLAN)
    assert len(table) >= 24 and table["name"].is_unique
    assert plan.coverage_problems(table) == []
    assert 0 < plan.estimated_minutes(table) <= 6.5 * 60  # the CPU budget, with the sampling included
    for row in table.to_dict("records"):
        registry.build_generator(row)  # every row builds


def _broken(mutate) -> pd.DataFrame:
    table = plan.load(PLAN)
    return mutate(table.copy())


BREAKS = {
    "models": lambda t: t.iloc[:23],
    "upsampling": lambda t: t.assign(upsampling=t["upsampling"].replace("pixel_shuffle", "nearest_conv")),
    "gan_loss": lambda t: t.assign(loss=t["loss"].replace("least_squares", "hinge")),
    "normalization": lambda t: t.assign(normalization=t["normalization"].replace("none", "batch")),
    "families": lambda t: t[t["family"] == "gan"],
    "seeds": lambda t: t.assign(seed=0),
}


@pytest.mark.parametrize("rule", list(BREAKS))
def test_each_coverage_rule_broken_on_purpose_fails_by_name(rule, tmp_path):
    table = _broken(BREAKS[rule])
    problems = plan.coverage_problems(table)
    assert any(p.startswith(f"rule '{rule}'") for p in problems), problems
    path = tmp_path / "plan.csv"
    table.to_csv(path, index=False)
    with pytest.raises(plan.PlanError, match=f"rule '{rule}'"):
        plan.load(path)
    plan.load(path, coverage=False)  # the rows themselves are still valid


def test_coverage_errors_give_the_counts():
    table = _broken(BREAKS["upsampling"])
    [problem] = [p for p in plan.coverage_problems(table) if "'upsampling'" in p]
    assert "pixel_shuffle: 0" in problem


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.drop(columns=["batch_size"]), "missing column(s) batch_size"),
    (lambda t: t.assign(name=[t["name"].iloc[0]] * len(t)), "repeats row 1"),
    (lambda t: t.assign(upsampling="deconv"), "upsampling='deconv' is not one of"),
    (lambda t: t.assign(normalization="layer"), "normalization='layer' is not one of"),
    (lambda t: t.assign(iterations="many"), "iterations='many' must be an integer >= 1"),
    (lambda t: t.assign(seed=-1), "row 1 (gan-tconv-ns-bn-s0): seed='-1' must be an integer >= 0"),
    (lambda t: t.assign(width="8.5"), "(and 20 more)"),
    (lambda t: t.assign(normalization=["none"] + list(t["normalization"].iloc[1:])),
     "row 1 (gan-tconv-ns-bn-s0): a GAN generator without normalization collapsed with loss non_saturating"),
    (lambda t: t.assign(name=["../x"] + list(t["name"].iloc[1:])), "name '../x' must be"),
])
def test_bad_rows_fail_validation_with_the_row_and_reason(mutate, message, tmp_path):
    path = tmp_path / "plan.csv"
    mutate(plan.load(PLAN).astype(str)).to_csv(path, index=False)
    with pytest.raises(plan.PlanError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        plan.load(path, coverage=False)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# Quality figures


def test_identical_feature_sets_are_perfect():
    x = np.random.default_rng(0).normal(size=(300, 16))
    assert abs(quality.frechet_distance(x, x)) < 1e-6
    assert quality.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_disjoint_far_sets_have_no_precision_or_recall():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(200, 8)), rng.normal(size=(150, 8)) + 100
    assert quality.precision_recall(fake, real, k=3) == (0.0, 0.0)
    assert quality.frechet_distance(fake, real) == pytest.approx(8 * 100**2, rel=0.02)


def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 3))  # N(0, I)
    b = rng.normal(size=(20000, 3)) * 2 + 1  # N(1, 4 I): FD = 3 * 1 + 3 * (1 + 4 - 2 * 2) = 6
    assert quality.frechet_distance(a, b) == pytest.approx(6.0, rel=0.03)
    assert quality.frechet_distance(a, b) == pytest.approx(quality.frechet_distance(b, a), rel=1e-9)
    assert quality.frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(6.0, rel=0.03)


def test_precision_and_recall_separate_a_collapsed_model():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(500, 4))
    collapsed = real[:5].repeat(60, axis=0) + rng.normal(scale=1e-3, size=(300, 4))  # 5 modes only
    precision, recall = quality.precision_recall(collapsed, real, k=3)
    assert precision > 0.9 and recall < 0.1


# ---------------------------------------------------------------------------------------------
# Building a zoo


@pytest.fixture(scope="module")
def train_images() -> np.ndarray:
    """256 Fashion-MNIST training images (synthetic blobs where the data set is not installed)."""
    from fingerprint_core.datasets import DatasetError, load_fashion_mnist

    try:
        return load_fashion_mnist("train")[0][:256]
    except DatasetError:
        from gmdata import blob_images

        return blob_images(256, 32, 1, np.random.default_rng(0)).transpose(0, 3, 1, 2).copy()


def two_models(iterations: int = 6) -> pd.DataFrame:
    return pd.DataFrame([
        {"name": "gan-ps-wgan-bn-s0", "family": "gan", "upsampling": "pixel_shuffle", "loss": "wasserstein_gp",
         "normalization": "batch", "seed": 0, "iterations": iterations, "width": 8, "batch_size": 16},
        {"name": "vae-bilinear-none-s1", "family": "vae", "upsampling": "bilinear_conv", "loss": "elbo",
         "normalization": "none", "seed": 1, "iterations": iterations, "width": 8, "batch_size": 16},
    ])


def run_build(out: Path, images: np.ndarray, **kw) -> build.BuildReport:
    return build.build(two_models(kw.pop("iterations", 6)), out, images=images, coverage=False, n_samples=80,
                       progress=False, **kw)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_a_two_model_zoo_builds_end_to_end(tmp_path, train_images):
    out = tmp_path / "zoo"
    report = run_build(out, train_images)
    assert report.finished == ["gan-ps-wgan-bn-s0", "vae-bilinear-none-s1"] and not report.stopped
    table = pd.read_csv(out / "models.csv")
    assert list(table.columns) == ["model", "family", "upsampling", "loss", "normalization", "seed"]
    assert table.values.tolist() == [["gan-ps-wgan-bn-s0", "gan", "pixel_shuffle", "wasserstein_gp", "batch", 0],
                                     ["vae-bilinear-none-s1", "vae", "bilinear_conv", "elbo", "none", 1]]
    for name in table["model"]:
        folder = out / "models" / name
        with np.load(folder / "samples.npz") as npz:
            samples = npz["images"]
        assert samples.shape == (80, 32, 32) and samples.dtype == np.uint8
        # the weights file alone (no pickle) rebuilds the generator and redraws the same samples
        model, meta = registry.load_generator(folder / "generator.safetensors")
        shipped = weights(folder / "generator.safetensors")
        assert {str(t.dtype) for k, t in shipped.items() if "weight" in k} == {"torch.float16"}
        assert meta["config"]["upsampling"] in name.replace("ps", "pixel_shuffle").replace("bilinear", "bilinear_conv")
        assert np.array_equal(registry.sample(model, 80, seed=build.SAMPLE_SEED), samples)
        assert not list(folder.glob("*.png"))  # the output folder is itself a GM dataset
        grid = np.asarray(Image.open(out / "grids" / f"{name}.png"))
        assert grid.shape == (2 * (8 * 34 + 2),) * 2
        card = (folder / "card.md").read_text()
        for text in (name, "| upsampling |", "seed", "6 iterations", "wall time", f"grids/{name}.png",
                     "quality: pending (needs the SL encoder)"):
            assert text in card
    log = (out / "build.log").read_text().splitlines()
    assert [line.split()[2] for line in log] == ["start", "checkpoint", "finish"] * 2
    assert not list((out / "checkpoints").iterdir())  # removed once a model is finished
    again = run_build(out, train_images)
    assert again.skipped == list(table["model"]) and not again.finished


def test_a_model_shipped_with_float32_weights_is_brought_to_float16(tmp_path, train_images):
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "zoo"
    run_build(out, train_images)
    name = "vae-bilinear-none-s1"
    path = out / "models" / name / "generator.safetensors"
    with safe_open(str(path), framework="pt") as f:  # rewrite it the way builds before float16 did
        meta = {k: v for k, v in f.metadata().items() if k != "dtype"}
    save_file({k: v.float() if v.is_floating_point() else v for k, v in weights(path).items()}, str(path), metadata=meta)
    assert registry.shipped_dtype(path) == "float32"
    report = run_build(out, train_images)
    assert report.skipped == ["gan-ps-wgan-bn-s0", name] and not report.finished
    assert registry.shipped_dtype(path) == "float16"
    with np.load(out / "models" / name / "samples.npz") as npz:
        samples = npz["images"]
    model, _ = registry.load_generator(path)
    assert np.array_equal(registry.sample(model, 80, seed=build.SAMPLE_SEED), samples)
    assert "reshipped-float16" in (out / "build.log").read_text()


def test_a_stopped_build_resumes_to_the_same_weights(tmp_path, train_images):
    whole = tmp_path / "whole"
    run_build(whole, train_images, iterations=7)
    parts = tmp_path / "parts"
    first = run_build(parts, train_images, iterations=7, stop_after=3)
    assert first.stopped == ["gan-ps-wgan-bn-s0", "vae-bilinear-none-s1"]
    assert not (parts / "models.csv").exists() or pd.read_csv(parts / "models.csv").empty
    info = json.loads((parts / "checkpoints" / "gan-ps-wgan-bn-s0.json").read_text())
    assert info["iteration"] == 3
    run_build(parts, train_images, iterations=7, stop_after=3)  # 3 more, then the last one
    second = run_build(parts, train_images, iterations=7)
    assert second.finished == first.stopped
    for name in first.stopped:
        a, b = weights(whole / "models" / name / "generator.safetensors"), weights(parts / "models" / name / "generator.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    events = [line.split()[1:3] for line in (parts / "build.log").read_text().splitlines()]
    assert ["gan-ps-wgan-bn-s0", "resume"] in events


def test_a_changed_plan_does_not_resume_a_stale_checkpoint(tmp_path, train_images):
    run_build(tmp_path, train_images, stop_after=2)
    changed = two_models().assign(width=12)
    with pytest.raises(build.BuildError, match="plan changed since its checkpoint.*width 8 -> 12"):
        build.build(changed, tmp_path, images=train_images, coverage=False, n_samples=8, progress=False)


KILLED_RUN = textwrap.dedent("""
    import sys, numpy as np, pandas as pd, torch
    from fingerprint_core.zoo import build
    torch.set_num_threads(int(sys.argv[4]))  # the parent's: float sums depend on the thread count
    plan = pd.read_csv(sys.argv[2])
    build.build(plan, sys.argv[1], images=np.load(sys.argv[3]), coverage=False, n_samples=16,
                progress=False, checkpoint_every_s=0)
""")


def test_a_build_killed_at_any_moment_resumes_exactly(tmp_path, train_images):
    table = two_models(iterations=30).iloc[:1].assign(width=4, batch_size=8)
    table.to_csv(tmp_path / "plan.csv", index=False)
    np.save(tmp_path / "images.npy", train_images)
    out = tmp_path / "killed"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(out), str(tmp_path / "plan.csv"),
                             str(tmp_path / "images.npy"), str(torch.get_num_threads())], env=env,
                            stderr=subprocess.PIPE)
    sidecar = out / "checkpoints" / f"{table['name'].iloc[0]}.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if sidecar.exists() and json.loads(sidecar.read_text() or "{}").get("iteration", 0) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()  # still training: kill it mid-flight
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "models.csv").exists()
    build.build(table, out, images=train_images, coverage=False, n_samples=16, progress=False)
    clean = tmp_path / "clean"
    build.build(table, clean, images=train_images, coverage=False, n_samples=16, progress=False)
    name = table["name"].iloc[0]
    a, b = weights(out / "models" / name / "generator.safetensors"), weights(clean / "models" / name / "generator.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_writes_quality_into_cards_and_quality_csv(tmp_path, train_images):
    out = tmp_path / "zoo"
    run_build(out, train_images)
    torch.manual_seed(0)
    enc = encoders.ConvEncoder(encoders.EncoderConfig(widths=(8, 16), feature_dim=16))
    encoders.save(enc, tmp_path / "sl.safetensors")
    table = evaluate.evaluate(out, encoder=tmp_path / "sl.safetensors", real_images=train_images[:64], device="cpu")
    assert list(table["model"]) == list(two_models()["name"])
    assert table[["fid", "precision", "recall"]].notna().all().all()
    assert ((table["precision"] >= 0) & (table["precision"] <= 1)).all() and (table["k"] == 3).all()
    assert pd.read_csv(out / "quality.csv").shape == table.shape
    card = (out / "models" / table["model"].iloc[0] / "card.md").read_text()
    assert "FID (SL features)" in card and "pending" not in card and "precision (k=3)" in card


def test_status_reports_finished_training_and_pending_models(tmp_path, train_images):
    table = two_models().assign(est_minutes=[1.5, 2.5])
    build.build(table, tmp_path, images=train_images, coverage=False, n_samples=8, progress=False,
                only=["gan-ps-wgan-bn-s0"])
    build.build(table, tmp_path, images=train_images, coverage=False, n_samples=8, progress=False,
                only=["vae-bilinear-none-s1"], stop_after=2)
    s = build.status(tmp_path).set_index("name")
    assert s.loc["gan-ps-wgan-bn-s0", "state"] == "finished"
    assert s.loc["vae-bilinear-none-s1", "state"] == "training" and s.loc["vae-bilinear-none-s1", "iteration"] == 2
    assert s["est_minutes"].tolist() == [1.5, 2.5]


def test_the_zoo_commands(tmp_path, train_images, capsys):
    table = two_models().assign(est_minutes=[1.0, 2.0])
    build.build(table, tmp_path, images=train_images, coverage=False, n_samples=8, progress=False,
                only=["gan-ps-wgan-bn-s0"])
    assert main(["zoo", "status", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gan-ps-wgan-bn-s0" in out and "finished" in out and "pending" in out and "1 finished" in out
    bad = tmp_path / "bad.csv"
    plan.load(PLAN).assign(seed=0).to_csv(bad, index=False)
    assert main(["zoo", "build", "--plan", str(bad), "--out", str(tmp_path / "z")]) == 1
    assert "rule 'seeds'" in capsys.readouterr().err
    assert main(["zoo", "build", "--plan", str(PLAN), "--out", str(tmp_path / "z"), "--only", "nope"]) == 1
    assert "unknown model(s) nope" in capsys.readouterr().err
    assert main(["zoo", "status", "--out", str(tmp_path / "empty")]) == 1
    assert "not a zoo build folder" in capsys.readouterr().err


def test_grid_places_the_first_64_samples():
    images = np.arange(70, dtype=np.uint8)[:, None, None].repeat(32, 1).repeat(32, 2)  # sample i is all i
    g = cards.grid(images, scale=1)
    assert g.shape == (8 * 34 + 2, 8 * 34 + 2)
    assert g[2, 2] == 0 and g[2 + 34, 2 + 34 * 2] == 10 and g[-3, -3] == 63
