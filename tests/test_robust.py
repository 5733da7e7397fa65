"""Robust training: the perturbation recipe, the re-projected banks of perturbed images, `manifpt
train --robust`, `manifpt bench --robust` and bench/fresh.py, on a tiny synthetic workspace."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fingerprint_core.attribution import baselines, bench, robustness, train
from fingerprint_core.attribution import split as split_mod
from fingerprint_core.attribution.baselines.wang20 import gaussian_blur, jpeg
from fingerprint_core.attribution.manifpt import ManiFPT
from fingerprint_core.cli import main
from fingerprint_core.workspace import Workspace
from gmdata import TOY_MODELS, make_gm_dataset, model_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny training steps: see conftest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built_ws(tmp_path_factory) -> Path:
    """A fingerprinted 1 x 16 x 16 workspace (rgb, freq), two toy models and the held-out real images."""
    from fingerprint_core.pipeline import fingerprint

    data = make_gm_dataset(tmp_path_factory.mktemp("robust-data"), n_per_model=40, bad_file=False)
    path = tmp_path_factory.mktemp("robust-ws") / "ws"
    fingerprint(data, path, space_names=("rgb", "freq"), device="cpu")
    return path


@pytest.fixture
def ws(built_ws, tmp_path) -> Workspace:
    """A fresh copy of the workspace per test (training writes into it)."""
    shutil.copytree(built_ws, tmp_path / "ws")
    return Workspace.open(tmp_path / "ws")


def textured(n=6, c=1, size=16, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(30, 220, (n, c, size, size), dtype=np.uint8)


# ---- the recipe ----------------------------------------------------------------------------------

def test_augment_is_seeded_keeps_shape_and_dtype_and_chunks_like_the_whole():
    for c in (1, 3):
        x = textured(c=c)
        a = robustness.augment(x, 0)
        assert a.shape == x.shape and a.dtype == np.uint8
        assert np.array_equal(a, robustness.augment(x, 0))  # seeded
        assert not np.array_equal(a, robustness.augment(x, 1))  # another copy, other perturbations
        assert not np.array_equal(a, x)
        assert np.array_equal(x, textured(c=c))  # the input is left as it was
        # image i draws from (seed, ids[i]): a chunk of rows is perturbed as in the whole array
        assert np.array_equal(robustness.augment(x[2:], 0, ids=np.arange(2, len(x))), a[2:])
    x = textured(n=12)
    assert np.array_equal(robustness.augment(x, 3, p=0.0), x)  # nothing applied
    every = robustness.augment(x, 3, p=1.0)
    assert all(not np.array_equal(every[i], x[i]) for i in range(len(x)))
    with pytest.raises(ValueError, match="uint8 N x C x H x W"):
        robustness.augment(x.astype(np.float32), 0)


def test_each_operation_of_the_recipe_changes_images():
    x = textured(n=2)
    assert not np.array_equal(robustness.down_up(x, 0.5), x)
    assert not np.array_equal(robustness.down_up(x, 0.75, "bicubic"), x)
    flat = np.full((2, 1, 16, 16), 90, np.uint8)
    assert np.array_equal(robustness.down_up(flat, 0.6, "bicubic"), flat)  # resizing keeps a flat image
    assert not np.array_equal(gaussian_blur(x, np.array([1.0, 0.5])), x)
    noisy = robustness.add_noise(np.full((4, 1, 64, 64), 128, np.uint8), 3.0, np.random.default_rng(0))
    assert 2.6 < (noisy.astype(float) - 128).std() < 3.4
    assert not np.array_equal(jpeg(x[0], 50), x[0])
    assert robustness.recipe()["p"] == robustness.P == 0.5
    assert robustness.recipe(1.0) != robustness.recipe(0.5)


def test_the_bench_perturbations_keep_their_meaning():
    x = textured(n=3, c=3)
    assert list(robustness.PERTURBATIONS) == ["jpeg50", "jpeg75", "jpeg90", "down2", "noise2"]
    for k in ("jpeg50", "jpeg75", "jpeg90"):
        assert np.array_equal(robustness.perturb(x, k), np.stack([jpeg(i, robustness.JPEG_QUALITIES[k]) for i in x]))
    err = {k: np.abs(robustness.perturb(x, k).astype(int) - x).mean() for k in ("jpeg50", "jpeg90")}
    assert err["jpeg50"] > err["jpeg90"] > 0
    assert np.array_equal(robustness.perturb(x, "down2"), robustness.down_up(x, 0.5))


# ---- banks ---------------------------------------------------------------------------------------

def test_a_bank_holds_the_reprojected_artifacts_of_the_augmented_images(ws):
    table = split_mod.workspace_split(ws, seed=0)
    rows = np.flatnonzero(table["part"].isin(["train", "val"]).to_numpy())
    rp = robustness.Reprojector(ws, device="cpu")
    images = split_mod.load_inputs(ws, table.iloc[rows], ("images",)).images
    for space in ("rgb", "freq"):
        banks = robustness.banks(ws, table, rows, space, 2, reprojector=rp)
        assert len(banks) == 2 and not np.array_equal(banks[0], banks[1])
        for c, bank in enumerate(banks):
            aug = robustness.augment(images, c, ids=rows)
            np.testing.assert_array_equal(bank, rp.artifacts(aug, space))
    # exactly the nearest real image found again: float64 brute force over the reference set
    aug = robustness.augment(images, 0, ids=rows)
    q = aug.reshape(len(aug), -1).astype(np.float64) / 255
    ref = np.asarray(ws.reference_images()).reshape(-1, q.shape[1]).astype(np.float64) / 255
    nearest = ((q[:, None, :] - ref[None]) ** 2).sum(-1).argmin(1)
    expected = (q - ref[nearest]).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(robustness.banks(ws, table, rows, "rgb", 1, reprojector=rp)[0], expected)
    clean = split_mod.load_inputs(ws, table.iloc[rows], ("rgb",)).artifacts["rgb"]
    assert not np.array_equal(expected, clean)  # perturbed images have other artifacts
    # stored as float16 workspace entries, one per (space, model, copy), with their sample indices
    folders = sorted(p for p in (ws.path / robustness.BANKS / "rgb").iterdir())
    assert len(folders) == 2 * len(ws.model_names(include_real=True))
    for f in folders:
        assert ws.intact(f.relative_to(ws.path).as_posix())
        assert np.load(f / "artifacts.npy").dtype == np.float16


def test_a_robust_train_reuses_its_banks_and_a_killed_bank_resumes(ws, monkeypatch):
    monkeypatch.setattr(robustness, "BANK_CHUNK", 8)  # several chunks per bank
    logs: list[str] = []
    train.train(ws, kinds=["rgb"], epochs=1, device="cpu", robust=True, log=logs.append)
    made = [m for m in logs if m.startswith("re-projecting")]
    assert len(made) == len(ws.model_names(include_real=True))
    entry = Workspace.open(ws.path).manifest["attribution"]["attributors"]["rgb"]
    assert entry["robust"]["copies"] == 1 and entry["robust"]["recipe"] == robustness.recipe()
    table = split_mod.workspace_split(ws, seed=0)
    assert entry["robust"]["train_rows"] == 2 * int((table["part"] == "train").sum())  # clean + one copy
    assert entry["robust"]["val_rows"] == 2 * int((table["part"] == "val").sum())
    assert 0 <= entry["robust"]["val_perturbed"]["model"] <= 1
    folder = ws.path / robustness.BANKS / "rgb"
    stamps = {p.name: (p / "artifacts.npy").stat().st_mtime_ns for p in folder.iterdir()}
    assert len(stamps) == len(made)  # the final commit keeps the banks

    logs.clear()  # a forced retrain: the banks are read back, none recomputed
    train.train(ws, kinds=["rgb"], epochs=1, device="cpu", robust=True, force=True, log=logs.append)
    assert not [m for m in logs if m.startswith("re-projecting")]
    assert {p.name: (p / "artifacts.npy").stat().st_mtime_ns for p in folder.iterdir()} == stamps

    # a run killed while writing a bank: the finished banks stay, the broken one leaves nothing
    lost = sorted(folder.iterdir())[0]
    shutil.rmtree(lost)
    real = robustness.Reprojector.artifacts
    calls = {"n": 0}

    def dies(self, images, space):
        calls["n"] += 1
        if calls["n"] == 2:  # the second chunk of the missing bank
            raise KeyboardInterrupt
        return real(self, images, space)

    monkeypatch.setattr(robustness.Reprojector, "artifacts", dies)
    with pytest.raises(KeyboardInterrupt):
        train.train(ws, kinds=["rgb"], epochs=1, device="cpu", robust=True, force=True)
    assert not lost.exists() and len(list(folder.iterdir())) == len(stamps) - 1
    monkeypatch.setattr(robustness.Reprojector, "artifacts", real)
    logs.clear()
    train.train(ws, kinds=["rgb"], epochs=1, device="cpu", robust=True, force=True, log=logs.append)
    assert len([m for m in logs if m.startswith("re-projecting")]) == 1  # only the missing bank
    assert lost.is_dir() and ws.intact(lost.relative_to(ws.path).as_posix())


def test_robust_changes_the_attributor_key_and_the_command_trains_it(ws, capsys):
    assert main(["train", str(ws.path), "--spaces", "rgb", "--epochs", "1", "--device", "cpu", "-q"]) == 0
    plain = Workspace.open(ws.path).manifest["attribution"]["attributors"]["rgb"]
    assert "robust" not in plain
    assert main(["train", str(ws.path), "--spaces", "rgb", "--epochs", "1", "--device", "cpu", "-q", "--robust"]) == 0
    robust = Workspace.open(ws.path).manifest["attribution"]["attributors"]["rgb"]
    assert robust["key"] != plain["key"] and robust["robust"]["copies"] == 1
    assert robust["robust"]["train_rows"] == 2 * round(0.7 * 40) * 2 + 2 * round(0.7 * ws.n_images("real"))
    assert main(["train", str(ws.path), "--spaces", "rgb", "--epochs", "1", "--device", "cpu", "-q", "--robust",
                 "--robust-copies", "2"]) == 0
    two = Workspace.open(ws.path).manifest["attribution"]["attributors"]["rgb"]
    assert two["key"] not in (plain["key"], robust["key"]) and two["robust"]["copies"] == 2
    assert main(["train", str(ws.path), "--spaces", "rgb", "--epochs", "1", "--device", "cpu", "-q", "--robust",
                 "--robust-p", "1.0"]) == 0
    assert Workspace.open(ws.path).manifest["attribution"]["attributors"]["rgb"]["robust"]["recipe"]["p"] == 1.0
    capsys.readouterr()
    with pytest.raises(ValueError, match="robust_copies=0"):
        train.train(ws, kinds=["rgb"], epochs=1, device="cpu", robust=True, robust_copies=0)


# ---- bench --robust ------------------------------------------------------------------------------

def test_bench_robust_trains_every_method_on_clean_and_perturbed_inputs(ws, tmp_path, monkeypatch):
    seen = {}

    def spy(cls):
        fit = cls.fit

        def wrapped(self, train_x, targets, val_x, val_targets, **kw):
            seen.setdefault(self.name, (len(train_x), len(val_x), train_x))
            return fit(self, train_x, targets, val_x, val_targets, **kw)
        monkeypatch.setattr(cls, "fit", wrapped)

    dz = type(baselines.create("Dzanic20"))
    spy(dz)
    spy(ManiFPT)
    methods = {"Dzanic20": lambda: baselines.create("Dzanic20"),
               "manifpt-rgb": lambda: ManiFPT("rgb", epochs=1, batch_size=16)}
    plain = bench.Bench(ws, tmp_path / "plain", methods, settings=bench.Settings(seeds=(0,), lodo_folds=1, device="cpu"))
    robust = bench.Bench(ws, tmp_path / "robust", methods,
                         settings=bench.Settings(seeds=(0,), lodo_folds=1, device="cpu", robust=True))
    assert plain._key("Dzanic20", "closed", 0) != robust._key("Dzanic20", "closed", 0)
    res = robust.run()
    n_train, n_val = len(robust.part["train"]), len(robust.part["val"])
    assert seen["Dzanic20"][:2] == (2 * n_train, 2 * n_val)
    assert seen["manifpt-rgb"][:2] == (2 * n_train, 2 * n_val)
    x = seen["Dzanic20"][2].images  # the image-based baseline trains on the perturbed images
    assert np.array_equal(x[n_train:], robustness.augment(x[:n_train], 0, ids=robust.part["train"]))
    arts = seen["manifpt-rgb"][2].artifacts["rgb"]  # ManiFPT on the re-projected artifacts of the same images
    rp = robustness.Reprojector(ws, device="cpu")
    np.testing.assert_array_equal(arts[n_train:], rp.artifacts(x[n_train:], "rgb"))
    assert res["settings"]["robust_training"]["copies"] == 1
    assert set(robustness.PERTURBATIONS) <= set(res["parts"]["manifpt-rgb"]["robust"]["s0"])
    md = (tmp_path / "robust" / "results.md").read_text()
    for text in ("c JPEG 50", "c JPEG 75", "c JPEG 90", "c resize 0.5", "Training: robust", "CPU budget: 1 torch thread"):
        assert text in md, text
    assert res["budget"]["threads"] == 1 and res["budget"]["method_seconds"]["Dzanic20"] >= 0


def test_the_bench_command_takes_robust(ws, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["bench", str(ws.path), "--out", str(out), "--methods", "Dzanic20", "--seeds", "0", "--lodo-folds", "1",
            "--openset-groups", "3", "--device", "cpu", "-q", "--robust", "--robust-p", "1.0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "| Dzanic20 |" in captured.out and "c JPEG 50" in captured.out and "c resize 0.5" in captured.out
    assert "CPU budget:" in captured.err
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["robust_training"]["recipe"]["p"] == 1.0


# ---- bench/fresh.py ------------------------------------------------------------------------------

def _fresh():
    spec = importlib.util.spec_from_file_location("fresh", REPO / "bench" / "fresh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fresh_attributes_every_input_and_jpeg_answers_do_not_depend_on_the_format(ws, tmp_path):
    fresh = _fresh()
    train.train(ws, kinds=["rgb"], epochs=2, device="cpu")
    rng = np.random.default_rng(11)
    samples = {m: model_images(m, 6, 16, 1, rng)[..., 0] for m in TOY_MODELS}  # new samples, 16 x 16 grayscale
    res = fresh.run(ws.path, samples, kind="rgb", device="cpu", folder=tmp_path / "inputs")
    assert list(res["inputs"]) == list(fresh.INPUTS)
    for name, r in res["inputs"].items():
        assert r["n"] == 12 and r["errors"] == 0 and 0 <= r["accuracy"] <= 1, name
    assert res["same_answers"] and all(s["identical"] and s["n"] == 12 for s in res["same_answers"].values())
    assert sorted(p.suffix for p in (tmp_path / "inputs" / "jpeg75").iterdir()) == [".jpg"] * 12
    assert fresh.source_of("/x/toy_gan__0003.png") == "toy_gan"
    # the score itself: a difference between a JPEG and its PNG re-save is counted
    doc = {"results": [{"file": "a/toy_gan__0000.jpg", "status": "ok", "sha256": "1", "top": [{"model": "toy_gan", "p": 1.0}],
                        "verdict": "known"}], "errors": []}
    other = json.loads(json.dumps(doc))
    other["results"][0].update(file="b/toy_gan__0000.png", sha256="2")
    assert fresh.score({"jpeg50": doc, "jpeg50-as-png": other})["same_answers"][50]["identical"]
    other["results"][0]["verdict"] = "unknown"
    assert fresh.score({"jpeg50": doc, "jpeg50-as-png": other})["same_answers"][50] == {"identical": False, "differ": 1, "n": 1}
