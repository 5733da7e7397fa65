"""Three levels of fingerprint on a dataset with known structure: every upsampling level leaves a faint
trace under per-sample content. The learned and model levels find it (Holm p < 0.01) and the raw
level does not; with the design labels shuffled among designs no level claims anything. Also the
JSON contract of `manifpt analyze --json`, design-blindness, and the learned leave-one-design-out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fingerprint_core.analysis import learned
from fingerprint_core.analysis.run import Settings, analyze
from fingerprint_core.cli import main
from fingerprint_core.pipeline import fingerprint
from fingerprint_core.workspace import Workspace
from gmdata import make_design_dataset

pytestmark = pytest.mark.slow
SMALL = Settings(bootstrap=50)  # the interval's bootstrap; the nulls keep their 1,000 permutations


def build(root: Path, **kw) -> Path:
    data = make_design_dataset(root / "data", **kw)
    fingerprint(data, root / "ws", space_names=("rgb",), device="cpu")
    return root / "ws"


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    ws = build(tmp_path_factory.mktemp("levels"))
    torch.set_num_threads(1)
    return ws, analyze(Workspace.open(ws), settings=SMALL, device="cpu")


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    ws = build(tmp_path_factory.mktemp("levels-shuffled"), shuffle_designs=True)
    return ws, analyze(Workspace.open(ws), settings=SMALL, device="cpu")


def holm_p(metrics: dict, level: str, factor: str) -> float:
    if level == "model":
        return metrics["levels"]["model"]["clustering"]["rgb"][factor]["p_holm"]
    return metrics["levels"][level]["nmi"]["rgb"][factor]["p_holm"]


def test_learned_and_model_levels_find_the_upsampling_trace_and_raw_does_not(known):
    _, m = known
    assert holm_p(m, "learned", "upsampling") < 0.01
    assert holm_p(m, "model", "upsampling") < 0.01
    share = m["levels"]["model"]["tests"]["rgb"]["learned_means"]["upsampling"]
    assert share["p_holm"] < 0.01 and share["effect"] > 0 and share["p_without_twins"] < 0.01
    assert holm_p(m, "raw", "upsampling") >= 0.01  # the content of each sample hides the trace
    for level in ("raw", "learned", "model"):
        assert holm_p(m, level, "normalization") >= 0.01  # it leaves no trace
    learned_nmi = m["levels"]["learned"]["nmi"]["rgb"]["upsampling"]
    assert learned_nmi["value"] > learned_nmi["null_p95"] and learned_nmi["low"] <= learned_nmi["value"] <= learned_nmi["high"]
    purity = m["levels"]["learned"]["purity"]["rgb"]
    assert purity["value"] > purity["null_p95"]
    assert any("learned level, rgb: the clusters follow upsampling" in line for line in m["reading"])
    assert any("raw level, rgb: nothing beyond the design null" in line and "upsampling" in line for line in m["reading"])


def test_with_designs_shuffled_among_designs_no_level_claims_a_factor(shuffled):
    _, m = shuffled
    for level in ("raw", "learned", "model"):
        for factor in ("upsampling", "normalization"):
            assert holm_p(m, level, factor) >= 0.01, (level, factor)


def test_the_json_contract_and_the_raw_level_equals_the_top_level_keys(known, capsys):
    ws, _ = known
    assert main(["analyze", str(ws), "--json", "--quiet"]) == 0  # cached
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"nmi", "silhouette", "lomo", "levels"} and set(out["levels"]) == {"raw", "learned", "model"}
    for level in ("raw", "learned"):
        L = out["levels"][level]
        assert {"nmi", "lodo", "silhouette", "purity"} <= set(L)
        cell = L["nmi"]["rgb"]["upsampling"]
        assert {"value", "low", "high", "null_mean", "null_p95", "p"} <= set(cell)
        assert {"value", "null_p95"} <= set(L["silhouette"]["rgb"]["upsampling"])
        assert {"value", "null_p95"} <= set(L["purity"]["rgb"])
    raw = out["levels"]["raw"]
    for factor, v in out["nmi"]["rgb"].items():
        assert v == raw["nmi"]["rgb"][factor]["value"]
        assert out["silhouette"]["rgb"][factor] == raw["silhouette"]["rgb"][factor]["value"]
    for factor, v in out["lomo"]["rgb"].items():
        assert v["accuracy"] == raw["lodo"]["rgb"][factor]["accuracy"] and v["chance"] == raw["lodo"]["rgb"][factor]["chance"]
    M = out["levels"]["model"]
    assert len(M["models"]) == 24 and {"learned_means", "energy"} <= set(M["distance"]["rgb"])
    assert np.asarray(M["distance"]["rgb"]["energy"]).shape == (24, 24)
    assert {"effect", "p", "p_without_twins"} <= set(M["tests"]["rgb"]["energy"]["upsampling"])
    assert {"value", "null_p95", "p"} <= set(M["clustering"]["rgb"]["upsampling"])


def test_the_design_blind_attributor_never_reads_the_design_table(known, tmp_path):
    ws_path, _ = known
    copy = tmp_path / "relabelled"
    shutil.copytree(ws_path, copy)
    ws = Workspace.open(copy)
    table = ws.design()
    table["upsampling"] = table["upsampling"].sample(frac=1, random_state=3).to_numpy()
    table["family"] = "vae"
    with ws.writing():
        ws.manifest["design"] = ws.write_table("design", table)
        ws.commit()
    s = learned.LearnedSettings(epochs=2)
    a, _ = learned.train_design_blind(Workspace.open(ws_path), "rgb", s, device="cpu")
    b, _ = learned.train_design_blind(Workspace.open(copy), "rgb", s, device="cpu")
    wa, wb = a.net_.state_dict(), b.net_.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_learned_leave_one_design_out_predicts_the_upsampling_of_unseen_designs(known, tmp_path, capsys):
    ws_path, _ = known
    copy = tmp_path / "lodo"
    shutil.copytree(ws_path, copy)
    assert main(["analyze", str(copy), "--lodo-learned", "--json", "--quiet", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    lodo = out["levels"]["learned"]["lodo"]["rgb"]["upsampling"]
    assert len(lodo["folds"]) == 12  # every design, all its seeds held out together
    assert lodo["vote_accuracy"] >= 10 / 12 and lodo["accuracy"] > lodo["chance"] + 0.3
    assert all(set(f["models"]) == {f"{f['models'][0][:-1]}0", f"{f['models'][0][:-1]}1"} for f in lodo["folds"])
    ws = Workspace.open(copy)
    folds = ws.manifest["lodo_learned"]["rgb"]["folds"]
    assert len(folds) == 12 and all(ws.intact(rel) for rel in folds.values())
    # resumable: a rerun trains nothing
    before = {rel: (copy / rel / "fold.json").stat().st_mtime_ns for rel in folds.values()}
    learned.lodo(ws, "rgb", device="cpu")
    assert {rel: (copy / rel / "fold.json").stat().st_mtime_ns for rel in folds.values()} == before
    assert pd.notna(lodo["chance"])
    # shipped with a dataset: the folds install into a workspace made from the same data, no training
    shipped = tmp_path / "shipped-lodo"
    assert learned.export_lodo(ws, shipped) == 12
    fresh = tmp_path / "fresh-lodo"
    shutil.copytree(copy, fresh)
    f = Workspace.open(fresh)
    with f.writing():
        f.manifest.pop("lodo_learned")
        f.commit(collect=("lodo",))
    assert learned.install_lodo(Workspace.open(fresh), shipped) == (12, [])
    assert learned.lodo_summary(Workspace.open(fresh)) == learned.lodo_summary(Workspace.open(copy))


def test_shipped_learned_attributors_install_without_training(known, tmp_path, monkeypatch):
    ws_path, _ = known
    shipped = tmp_path / "shipped"
    assert learned.export(Workspace.open(ws_path), shipped) == ["rgb"]
    fresh = tmp_path / "fresh"
    shutil.copytree(ws_path, fresh)
    ws = Workspace.open(fresh)
    with ws.writing():
        ws.manifest.pop("learned")
        ws.commit(collect=("learned",))
    assert not (fresh / "learned").exists() or not any((fresh / "learned").iterdir())

    def no_training(*a, **kw):
        raise AssertionError("installing shipped attributors must not train")

    monkeypatch.setattr(learned, "train_design_blind", no_training)
    installed, why = learned.install(Workspace.open(fresh), shipped)
    assert installed == ["rgb"] and why == []
    a, b = Workspace.open(ws_path), Workspace.open(fresh)
    fa, ra = learned.load(a, a.manifest["learned"]["rgb"])
    fb, rb = learned.load(b, b.manifest["learned"]["rgb"])
    assert ra.equals(rb) and b.manifest["learned"]["rgb"]["key"] == a.manifest["learned"]["rgb"]["key"]
    assert np.abs(fa - fb).max() < 0.05 * np.abs(fa).max()  # float16 weights: the same features to rounding
    assert learned.current(b, "rgb", learned.LearnedSettings()) is not None
