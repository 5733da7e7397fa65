"""The benchmark: a tiny run over every protocol, its files, its resumption, the pieces it is made of,
and the `manifpt bench` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fingerprint_core.attribution import baselines, bench
from fingerprint_core.attribution.manifpt import ManiFPT
from fingerprint_core.cli import main
from fingerprint_core.workspace import Workspace
from gmdata import TOY_MODELS, add_model, blob_images, make_gm_dataset, model_images, write_foreign_set

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny training steps: see conftest


@pytest.fixture(scope="module")
def bench_ws(tmp_path_factory) -> Workspace:
    """A 1 x 16 x 16 workspace (rgb, freq) with four models: toy_gan and its twin toy_gan_b (same
    design), toy_vae, and toy_rows (a third design with a row pattern)."""
    from fingerprint_core.pipeline import fingerprint

    root = make_gm_dataset(tmp_path_factory.mktemp("bench-data"), n_per_model=40, bad_file=False)
    rng = np.random.default_rng(5)
    add_model(root, "toy_gan_b", TOY_MODELS["toy_gan"], model_images("toy_gan", 40, 16, 1, rng))
    rows = blob_images(40, 16, 1, rng).astype(np.float32)
    rows[:, ::2] += 15
    add_model(root, "toy_rows", ("gan", "pixel_shuffle", "hinge", "none"), np.clip(rows, 0, 255).round().astype(np.uint8))
    path = tmp_path_factory.mktemp("bench-ws") / "ws"
    fingerprint(root, path, space_names=("rgb", "freq"), device="cpu")
    return Workspace.open(path)


@pytest.fixture(scope="module")
def foreign_dir(tmp_path_factory):
    """A foreign set of two toy generators the workspace lacks (column stripes; a coarse grid), 40 samples
    each in the zoo's samples.npz layout (grayscale N x H x W)."""
    return write_foreign_set(tmp_path_factory.mktemp("foreign"), 40, 16)


def tiny_methods() -> dict:
    return {"Durall20": lambda: baselines.create("Durall20", Cs=(0.1, 1.0)),
            "manifpt-rgb": lambda: ManiFPT("rgb", epochs=2, batch_size=16)}


def run_tiny(ws, out, seeds=(0,), foreign=None) -> bench.Bench:
    settings = bench.Settings(seeds=seeds, lodo_folds=0, device="cpu", foreign=None if foreign is None else str(foreign),
                              foreign_sets=10)
    b = bench.Bench(ws, out, tiny_methods(), settings=settings)
    b.results_ = b.run()
    return b


def test_a_tiny_bench_runs_every_protocol_writes_three_files_and_resumes(bench_ws, foreign_dir, tmp_path):
    out = tmp_path / "bench"
    first = run_tiny(bench_ws, out, foreign=foreign_dir)
    res = first.results_
    assert first.reused == 0 and first.computed > 0
    for name in ("Durall20", "manifpt-rgb"):
        parts = res["parts"][name]
        assert set(parts) == set(bench.PROTOCOLS)
        for proto, by_seed in parts.items():
            assert by_seed, proto
            assert not any("skipped" in r for r in by_seed.values()), (name, proto)
        assert set(parts["closed"]) == {"s0"} and set(parts["lodo"]) == {"s0"}
        for r in parts["robust"].values():
            assert set(bench.PERTURBATIONS) <= set(r) and all(0 <= r[p] <= 1 for p in bench.PERTURBATIONS)
        assert len(parts["lodo"]["s0"]["folds"]) == 3  # every design: gan (with its twin), vae, rows
        assert {"toy_gan", "toy_gan_b"} == set(parts["lodo"]["s0"]["folds"][0]["models"])
        assert len(parts["openset"]["s0"]["folds"]) == 4  # one fold per model: four groups of one
        assert parts["twins"]["s0"]["groups"] == [["toy_gan", "toy_gan_b"]]
        assert parts["twins"]["s0"]["chance"] == pytest.approx(0.5)
        g = parts["foreign"]["s0"]
        assert g["models"] == ["toy_cols", "toy_grid"] and 0 <= g["auroc"] <= 1
        assert 0 <= g["called_real"] <= 1 and 0 <= g["real_kept"] <= 1 and g["right_model_chance"] == pytest.approx(1 / 4)
        assert set(g["per_model_auroc"]) == {"toy_cols", "toy_grid"}
        assert "5" in g["sets"] and 0 <= g["sets"]["5"]["auroc"] <= 1  # 8 test images per model: sets of 5 only
        assert [r["source"] for r in g["per_image"]] == ["known (test)", "real (test)", "foreign:toy_cols", "foreign:toy_grid"]
        assert [r["n"] for r in g["per_image"]][2:] == [40, 40]
    durall = res["parts"]["Durall20"]["closed"]["s0"]
    assert durall["accuracy"] > 2 * durall["chance"]  # the toy traces are easy for a spectrum

    for f in ("results.json", "results.csv", "results.md"):
        assert (out / f).is_file()
    assert json.loads((out / "results.json").read_text())["summary"] == json.loads(json.dumps(res["summary"]))
    csv = pd.read_csv(out / "results.csv")
    assert {"method", "protocol", "metric", "mean", "std", "n"} <= set(csv.columns)
    assert set(csv["protocol"]) == set(bench.PROTOCOLS)
    md = (out / "results.md").read_text()
    for text in ("| Durall20 |", "| manifpt-rgb |", "| chance |", "a closed acc", "b twins acc", "c JPEG 75",
                 "d LODO upsampling", "e AUROC", "f FDR", "g foreign AUROC", "g sets AUROC n=5", "Split fixed at seed 0"):
        assert text in md, text

    again = run_tiny(bench_ws, out, foreign=foreign_dir)  # nothing changed: every part comes from its file
    assert again.computed == 0 and again.reused == first.computed
    assert again.results_["summary"] == res["summary"]

    (out / "parts" / "Durall20" / "fisher-s0.json").unlink()  # a lost part is computed again, alone
    third = run_tiny(bench_ws, out, seeds=(0, 1), foreign=foreign_dir)  # and a new seed adds only its own parts
    assert third.computed == 1 + 2 * 4  # that part, then closed, robust, fisher, twins at seed 1 per method
    assert set(third.results_["parts"]["manifpt-rgb"]["closed"]) == {"s0", "s1"}
    summary = {(r["method"], r["protocol"], r["metric"]): r for r in third.results_["summary"]}
    assert summary[("manifpt-rgb", "closed", "accuracy")]["n"] == 2
    # the deterministic baseline gives the same number at every seed: std 0, and the table says ±
    assert summary[("Durall20", "closed", "accuracy")]["std"] == 0
    assert "±" in (out / "results.md").read_text()


def test_robustness_reprojects_perturbed_images_onto_the_manifold(bench_ws):
    from fingerprint_core.attribution import split

    b = bench.Bench(bench_ws, "/nonexistent", tiny_methods(), settings=bench.Settings(device="cpu"))
    test = b.part["test"]
    clean = b.inputs(("images", "rgb", "freq"), test)
    rp = bench.Reprojector(bench_ws, device="cpu")
    for space in ("rgb", "freq"):  # the clean images give back exactly the stored artifacts
        np.testing.assert_array_equal(rp.artifacts(clean.images, space), clean.artifacts[space])
    noisy = b.perturbed("noise2", ("images", "rgb"))
    assert not np.array_equal(noisy.images, clean.images)
    # an independent recomputation: pixels in [0, 1] minus the float64 brute-force nearest reference
    q = noisy.images.reshape(len(test), -1).astype(np.float64) / 255
    ref = np.asarray(bench_ws.reference_images()).reshape(-1, q.shape[1]).astype(np.float64) / 255
    nearest = ((q[:, None, :] - ref[None]) ** 2).sum(-1).argmin(1)
    expected = (q - ref[nearest]).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(noisy.artifacts["rgb"], expected)
    assert not np.array_equal(noisy.artifacts["rgb"], clean.artifacts["rgb"])
    assert split.FRACTIONS["test"] == 0.2  # the robustness set is the test split


def test_fisher_ratio_on_known_clusters():
    x = np.array([[0.0], [2.0], [10.0], [12.0]])
    y = np.array([0, 0, 1, 1])
    # means 1 and 11 around 6: between = 2 * 25 * 2 = 100; within = 4 * 1 = 4
    assert bench.fisher_ratio(x, y) == pytest.approx(25.0)
    assert bench.fisher_ratio(np.vstack([x, x + 100]), np.r_[y, y]) < 25  # the same clusters twice, far apart: mixed
    assert bench.fisher_ratio(x, np.array([0, 1, 0, 1])) < 1


def test_perturbations_do_what_they_say():
    rng = np.random.default_rng(0)
    flat = np.full((3, 1, 8, 8), 100, np.uint8)
    board = (np.indices((8, 8)).sum(0) % 2 * 100 + 50).astype(np.uint8)[None, None]
    assert np.array_equal(bench.perturb(flat, "down2"), flat)
    assert np.abs(bench.perturb(board, "down2").astype(int) - 100).max() <= 1  # 2 x 2 averages of 50 and 150
    noisy = bench.perturb(np.full((4, 1, 64, 64), 128, np.uint8), "noise2")
    assert 1.7 < (noisy.astype(float) - 128).std() < 2.3
    assert np.array_equal(noisy, bench.perturb(np.full((4, 1, 64, 64), 128, np.uint8), "noise2"))  # seeded
    img = rng.integers(0, 255, (2, 3, 16, 16), dtype=np.uint8)
    squeezed = bench.perturb(img, "jpeg75")
    assert squeezed.shape == img.shape and not np.array_equal(squeezed, img)
    with pytest.raises(ValueError, match="unknown perturbation 'blur'"):
        bench.perturb(img, "blur")


def test_method_names_groups_and_workspaces_without_learned_spaces(bench_ws):
    factories, skipped = bench.method_factories(bench_ws)
    assert list(factories)[:6] == baselines.names()
    assert {"manifpt-rgb", "manifpt-freq"} <= set(factories)
    assert set(skipped) == {"manifpt-sl", "manifpt-ssl", "manifpt-fused"}
    assert "no sl artifacts" in skipped["manifpt-sl"]
    assert list(bench.method_factories(bench_ws, ["baselines"])[0]) == baselines.names()
    assert list(bench.method_factories(bench_ws, ["MANIFPT-RGB", "durall20"])[0]) == ["manifpt-rgb", "Durall20"]
    with pytest.raises(ValueError, match="unknown method 'clip'"):
        bench.method_factories(bench_ws, ["clip"])
    with pytest.raises(ValueError, match="openset_groups=2 must be >= 3"):
        bench.Bench(bench_ws, "/nonexistent", tiny_methods(), settings=bench.Settings(openset_groups=2))


def test_the_bench_command(bench_ws, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["bench", str(bench_ws.path), "--out", str(out), "--methods", "Dzanic20", "--seeds", "0",
            "--lodo-folds", "1", "--openset-groups", "3", "--device", "cpu", "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Dzanic20 |" in printed and "| chance |" in printed and "results.md" in printed
    assert len(json.loads((out / "results.json").read_text())["parts"]["Dzanic20"]["lodo"]["s0"]["folds"]) == 1
    assert main(argv) == 0  # a rerun: the same table from the saved parts
    assert capsys.readouterr().out == printed
    assert main(["bench", str(bench_ws.path), "--out", str(out), "--methods", "clip"]) == 1
    assert "unknown method 'clip'" in capsys.readouterr().err
    small = write_foreign_set(tmp_path / "foreign-8px", 10, 8)  # another image size: refused by file, before training
    assert main(["bench", str(bench_ws.path), "--out", str(out), "--foreign", str(small), "--seeds", "0"]) == 1
    err = capsys.readouterr().err
    assert str(small / "toy_cols" / "samples.npz") in err and "needs uint8 (1, 16, 16)" in err
    assert main(["bench", str(bench_ws.path), "--out", str(out), "--foreign", str(tmp_path / "none"), "--seeds", "0"]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert main(["bench", str(bench_ws.path), "--out", str(out), "--seeds", "a,b"]) == 1
    assert "--seeds" in capsys.readouterr().err
    assert main(["bench", str(bench_ws.path), "--out", str(bench_ws.path / "results"), "--seeds", "0"]) == 1
    assert "inside the workspace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    helps = " ".join(capsys.readouterr().out.split())  # the defaults the help states are the module's
    assert f"0 = all (default {bench.LODO_FOLDS})" in helps and f"one fold each (default {bench.OPENSET_GROUPS})" in helps
    assert "default " + ",".join(map(str, bench.SEEDS)) in helps


def test_budget_knobs_subsample_training_rows_and_cap_epochs_for_every_method(bench_ws):
    table = bench.subsample_train(bench.split_mod.workspace_split(bench_ws, seed=bench.SPLIT_SEED), 10)
    full = bench.split_mod.workspace_split(bench_ws, seed=bench.SPLIT_SEED)
    counts = table.groupby(["model", "part"]).size().unstack(fill_value=0)
    n_train = full[full["part"] == "train"].groupby("model").size()
    assert (counts["train"] == 10).all() and counts["unused"].equals(n_train - 10)
    for part in ("val", "test"):  # untouched
        assert (table["part"] == part).equals(full["part"] == part)
    assert bench.subsample_train(full, 0).equals(full)
    factories, _ = bench.method_factories(bench_ws, ["Yu19", "manifpt-rgb", "Durall20"], max_epochs=3)
    assert factories["Yu19"]().params["epochs"] == 3 and factories["manifpt-rgb"]().epochs == 3
    assert "epochs" not in bench.identity(factories["Durall20"]())  # not trained in epochs: unchanged
    b = bench.Bench(bench_ws, "/nonexistent", tiny_methods(), settings=bench.Settings(train_per_model=10, device="cpu"))
    assert len(b.part["train"]) == 10 * len(bench_ws.model_names(include_real=True))
    assert b._key("Durall20", "closed", 0) != bench.Bench(bench_ws, "/nonexistent", tiny_methods(),
                                                           settings=bench.Settings(device="cpu"))._key("Durall20", "closed", 0)


def test_the_robustness_columns_and_the_robust_setting_in_the_keys(bench_ws):
    from fingerprint_core.attribution import bench_report

    summary = [{"method": "Durall20", "protocol": "robust", "metric": p, "mean": 0.5, "std": 0.0, "n": 1, "over": "seeds"}
               for p in bench.PERTURBATIONS]
    header = bench_report.markdown(summary).splitlines()[0]
    assert header == "| method | c JPEG 50 | c JPEG 75 | c JPEG 90 | c resize 0.5 | c noise 2/255 |"
    clean = bench.Bench(bench_ws, "/nonexistent", tiny_methods(), settings=bench.Settings(device="cpu"))
    robust = bench.Bench(bench_ws, "/nonexistent", tiny_methods(), settings=bench.Settings(device="cpu", robust=True))
    assert clean.settings.robust_training() is None
    assert robust.settings.robust_training()["copies"] == 1
    for proto in ("closed", "robust", "lodo"):
        assert clean._key("Durall20", proto, 0) != robust._key("Durall20", proto, 0)
    with pytest.raises(ValueError, match="robust_copies=0"):
        bench.Bench(bench_ws, "/nonexistent", tiny_methods(), settings=bench.Settings(robust=True, robust_copies=0))
