"""`manifpt demo`: a GM dataset without real/, fingerprinted against a fixed real split."""

import numpy as np
import pytest

from fingerprint_core import demo, pipeline
from fingerprint_core.cli import main
from fingerprint_core.datasets import DatasetError
from fingerprint_core.workspace import REAL, Workspace
from gmdata import blob_images, make_gm_dataset


@pytest.fixture
def small_demo(tmp_path, monkeypatch):
    """A demo-shaped assets folder (no real/) and a small stand-in for Fashion-MNIST."""
    assets = make_gm_dataset(tmp_path / "assets", bad_file=False)
    import shutil

    shutil.rmtree(assets / "real")
    rng = np.random.default_rng(1)
    ref = blob_images(200, 16, 1, rng).transpose(0, 3, 1, 2).copy()
    held = blob_images(40, 16, 1, rng).transpose(0, 3, 1, 2).copy()
    monkeypatch.setattr(demo, "fashion_mnist_real", lambda: pipeline.fixed_real(ref, held, key="fm-test", origin="fashion-mnist"))
    monkeypatch.setattr(demo, "DEMO_ASSETS", assets)
    return assets


def test_demo_builds_against_the_fixed_split_and_prints_its_path(small_demo, tmp_path, capsys, monkeypatch):
    ws_path = tmp_path / "ws"
    report = demo.build(ws_path, assets=small_demo, device="cpu")
    ws = Workspace.open(ws_path)
    assert ws.config["real_origin"] == "fashion-mnist"
    assert ws.manifest["real"]["n_reference"] == 200 and len(ws.images(REAL)) == 40
    assert set(ws.model_names()) == {"toy_gan", "toy_vae"}
    # the learned spaces are used when their weights exist, and said to be skipped when not
    names, warnings = demo.available_spaces()
    assert ws.space_names() == names
    assert len(warnings) == 4 - len(names) and all("skipped" in w for w in warnings)
    assert report.computed
    assert main(["demo", "--workspace", str(ws_path), "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(ws_path) and "computed 0 fingerprint(s)" in out[0]


def test_demo_default_workspace_lives_under_the_workspace_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MANIFPT_WORKSPACE", str(tmp_path / "root"))
    assert demo.default_workspace() == tmp_path / "root" / "demo"


def test_missing_demo_assets_say_how_they_are_made(tmp_path):
    with pytest.raises(DatasetError, match="manifpt zoo build"):
        demo.build(tmp_path / "ws", assets=tmp_path / "nothing")


def test_demo_installs_the_attributors_shipped_with_the_zoo(small_demo, tmp_path, one_thread):
    from fingerprint_core.attribution import ship, train

    first = tmp_path / "first"
    demo.build(first, assets=small_demo, space_names=("rgb",), device="cpu")
    train.train(first, kinds=["rgb"], epochs=2, device="cpu")
    ship.export(Workspace.open(first), small_demo / "attribution")  # what `manifpt train --export` ships
    report = demo.build(tmp_path / "user", assets=small_demo, space_names=("rgb",), device="cpu")
    assert not [w for w in report.warnings if "attributor" in w]
    user = Workspace.open(tmp_path / "user")
    assert train.stored(user)["rgb"]["test"] == train.stored(Workspace.open(first))["rgb"]["test"]
    # a demo built in other spaces than the shipped attributors' gets a warning naming the command
    report = demo.build(tmp_path / "other", assets=small_demo, space_names=("freq",), device="cpu")
    assert any("manifpt train" in w for w in report.warnings)
