"""A colour 64 x 64 GM dataset end to end: every CLI command, then every app page on its workspace.

The demo is 32 x 32 grayscale; users bring colour images. This dataset (blobs in three colour
channels, four toy models with their own traces) goes through encoders, fingerprint (all four
spaces), analyze, train, attribute and check, and the app opens each page on the result.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from app_util import charts, open_page
from fingerprint_core.cli import main
from gmdata import add_model, make_gm_dataset, model_images

pytestmark = pytest.mark.slow
SIZE = 64
PAGES = ["page_models.py", "page_map.py", "page_spectra.py", "page_design.py", "page_similarity.py",
         "page_attribute.py", "page_benchmark.py"]


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """(data root, workspace root, workspace) after every CLI command ran once on the colour dataset."""
    base = tmp_path_factory.mktemp("colour")
    root = make_gm_dataset(base / "data", channels=3, size=SIZE, n_real=160, n_per_model=24, bad_file=False)
    rng = np.random.default_rng(5)
    add_model(root, "toy_gan_b", ("gan", "nearest_conv", "hinge", "spectral"),
              model_images("toy_gan", 24, SIZE, 3, rng)[..., ::-1])  # another colour order: another trace
    add_model(root, "toy_vae_b", ("vae", "bilinear_conv", "elbo", "batch"), model_images("toy_vae", 24, SIZE, 3, rng))
    labels = pd.DataFrame({"file": [f"real.npz[{i}]" for i in range(160)], "label": [i % 2 for i in range(160)]})
    labels.to_csv(root / "real" / "labels.csv", index=False)
    encoders = base / "encoders"
    assert main(["encoders", "train", str(root), "--out", str(encoders), "--epochs", "sl=1,ssl=1",
                 "--max-steps", "3", "--device", "cpu", "--quiet"]) == 0
    ws_root = base / "workspaces"
    ws = ws_root / "colour"
    assert main(["fingerprint", str(root), "-w", str(ws), "--spaces", "rgb,freq,sl,ssl", "--device", "cpu", "-q",
                 "--weights", f"sl={encoders / 'sl.safetensors'}", "--weights", f"ssl={encoders / 'ssl.safetensors'}"]) == 0
    return root, ws_root, ws


def test_every_cli_command_runs_on_colour_images(colour, capsys, monkeypatch):
    root, _, ws = colour
    config = json.loads((ws / "workspace.json").read_text())["config"]
    assert config["image_shape"] == [3, SIZE, SIZE] and config["spaces"] == ["rgb", "freq", "sl", "ssl"]
    assert set(config["preprocessing"]) == {"rgb", "freq", "sl", "ssl"}
    assert config["preprocessing"]["sl"]["network"] == "small CNN encoder"
    capsys.readouterr()
    assert main(["info", str(ws)]) == 0
    info = capsys.readouterr().out
    assert "toy_gan_b" in info and "rgb, freq, sl, ssl" in info
    assert main(["analyze", str(ws), "--json", "--levels", "raw,model", "--device", "cpu", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics["levels"]) >= {"raw", "model"}
    assert main(["train", str(ws), "--spaces", "fused", "--epochs", "2", "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    upload = root.parent / "upload.png"
    Image.open(root / "models" / "toy_gan" / "000.png").save(upload)
    # the fused attributor finds the workspace's SL / SSL encoders by the paths the workspace recorded
    monkeypatch.setenv("MANIFPT_ENCODERS", str(root.parent / "nowhere"))
    assert main(["attribute", str(ws), str(upload), "--json", "--device", "cpu"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert not answer["errors"] and len(answer["results"]) == 1
    assert set(answer["results"][0]["nearest_real"]) == {"rgb", "freq", "sl", "ssl"}
    assert main(["check", str(ws)]) == 0


def test_the_spectra_of_colour_artifacts_are_kept_per_channel(colour):
    from fingerprint_core.analysis.run import Analysis
    from fingerprint_core.workspace import Workspace

    _, _, ws = colour
    analysis = Analysis.load(Workspace.open(ws))
    assert analysis is not None, "the analysis is missing or stale"
    spectra = analysis.spectra("toy_gan")
    assert spectra.artifact.shape == (SIZE, SIZE)
    assert spectra.artifact_channels.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(spectra.artifact_channels.mean(0), spectra.artifact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_on_the_colour_workspace(colour, page, monkeypatch):
    _, ws_root, ws = colour
    at = open_page(monkeypatch, ws_root, page, {"workspace": str(ws)})
    assert not at.exception
    assert not [e.value for e in at.error], (page, [e.value for e in at.error])
    if page == "page_models.py":  # the sample grid draws 64 x 64 colour samples and signed-RGB artifacts
        at.segmented_control(key="models_colour").set_value("signed").run()
        assert not at.exception
        grid = [c for c in charts(at) if any(t.get("type") == "image" for t in c["data"])]
        assert grid, "no sample grid"
        titles = [a["text"] for a in grid[0]["layout"]["annotations"]]
        assert any("signed RGB" in t for t in titles)


def test_standard_backbones_from_their_weight_files_are_the_learned_spaces(tmp_path, capsys):
    """ResNet-50 (SL) and a DINOv2-layout ViT-S/14 (SSL) from local files, random weights in the official layouts."""
    import torch
    from safetensors.torch import save_file

    from fingerprint_core import backbones

    torch.manual_seed(0)
    resnet, vit = tmp_path / "resnet50.safetensors", tmp_path / "dinov2_vits14.pth"
    save_file({k: v.contiguous() for k, v in backbones.build("resnet50").state_dict().items()}, resnet)
    torch.save(backbones.build("vit_s14").state_dict(), vit)
    root = make_gm_dataset(tmp_path / "data", channels=3, size=SIZE, n_real=12, n_per_model=4, bad_file=False)
    ws = tmp_path / "ws"
    assert main(["fingerprint", str(root), "-w", str(ws), "--spaces", "rgb,sl,ssl", "--device", "cpu", "-q",
                 "--weights", f"sl={resnet}", "--weights", f"ssl={vit}"]) == 0
    manifest = json.loads((ws / "workspace.json").read_text())
    prep = manifest["config"]["preprocessing"]
    assert prep["sl"]["network"] == "resnet50" and prep["sl"]["crop"] == 224
    assert prep["ssl"]["network"] == "vit_s14" and prep["ssl"]["mean"] == [0.485, 0.456, 0.406]
    assert manifest["spaces"]["sl"]["weights"] == str(resnet.resolve())
    sl = next((ws / "models" / "toy_gan").glob("sl-*"))
    assert np.load(sl / "artifacts.npy").shape == (4, 2048)
    assert np.load(next((ws / "models" / "toy_gan").glob("ssl-*")) / "artifacts.npy").shape == (4, 384)
    assert main(["fingerprint", str(root), "-w", str(ws), "--spaces", "rgb,sl", "--weights", f"sl={tmp_path / 'x.bin'}"]) == 1
    assert "x.bin" in capsys.readouterr().err
