"""The open-world verdict: temperature scaling and ECE, the three decisions in order, sets of one
source (MMD against each known class), the report (JSON schema 2, CSV with SHA-256), and that no
calibration step reads the foreign set."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fingerprint_core.attribution import calibration, decision, predict, report, sets
from fingerprint_core.attribution import train as train_mod
from fingerprint_core.cli import main
from fingerprint_core.workspace import Workspace
from test_attribution import traced, trained_workspace

RNG = np.random.default_rng(11)


# ---- calibration ---------------------------------------------------------------------------------------
def test_temperature_scaling_recovers_the_temperature_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (6000, 5))
    p = calibration.calibrated(z, 2.5)
    y = np.array([rng.choice(5, p=row) for row in p])
    t = calibration.fit_temperature(z, y)
    assert 2.2 < t < 2.8
    assert calibration.nll(z, y, t) <= calibration.nll(z, y, 1.0)
    assert calibration.ece(calibration.calibrated(z, t), y) < calibration.ece(calibration.calibrated(z, 1.0), y)


def test_ece_and_the_reliability_diagram():
    probs = np.array([[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10)
    y = np.array([0] * 9 + [1] + [0] * 3 + [1] * 7)  # 90% right at 0.9 confidence, 30% right at 0.6
    r = calibration.reliability(probs, y)
    assert len(r) == calibration.BINS and r["count"].sum() == 20
    assert calibration.ece(probs, y) == pytest.approx(0.5 * 0.0 + 0.5 * 0.3)
    assert np.isnan(calibration.ece(np.zeros((0, 2)), np.zeros(0, int)))


# ---- sets ----------------------------------------------------------------------------------------------
def gaussians(n_per: int, centres: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([rng.normal(c, 1.0, (n_per, centres.shape[1])) for c in centres])
    return x, np.repeat(np.arange(len(centres)), n_per)


@pytest.mark.parametrize("kind", sets.STATISTICS)
def test_known_sets_are_rarely_rejected_and_a_new_source_always(kind):
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 2.0, (4, 8))
    f_tr, y_tr = gaussians(300, centres, rng)
    f_va, y_va = gaussians(400, centres, rng)  # the demo's validation images per model
    rule = sets.fit(["a", "b", "c", "d"], f_tr, y_tr, f_va, y_va, kind=kind, n_sets=300)
    assert rule.kind == kind and rule.thresholds.shape == (3, 4) and np.isfinite(rule.thresholds).all()
    fresh, y_fresh = gaussians(200, centres, rng)
    new = rng.normal(0, 2.0, (200, 8)) + 3.0
    for n in (5, 20, 50):
        i = rule.size_index(n)
        rejected_known, accepted_new = [], []
        for _ in range(100):
            k = rng.integers(4)
            own = fresh[y_fresh == k][rng.choice(200, n, replace=False)]
            rejected_known.append(rule.statistics(own)[k] > rule.thresholds[i, k])
            accepted_new.append((rule.statistics(new[rng.choice(200, n, replace=False)]) <= rule.thresholds[i]).any())
        assert np.mean(rejected_known) <= 0.05  # calibrated at 1% on validation sets; fresh draws stay near it
        if n >= 20:
            assert not any(accepted_new)
    assert rule.size_index(4) is None and rule.size_index(19) == 0 and rule.size_index(1000) == 2


def test_thresholds_come_from_the_validation_null_at_the_share_rejected():
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 2.0, (3, 6))
    f_tr, y_tr = gaussians(200, centres, rng)
    f_va, y_va = gaussians(90, centres[:2], rng)  # class c has no validation images; 90 < 2 x 50 for a and b
    rule = sets.fit(["a", "b", "c"], f_tr, y_tr, f_va, y_va, n_sets=200, reject=0.05)
    assert rule.reject == 0.05 and rule.config()["reject"] == 0.05
    np.testing.assert_array_equal(rule.thresholds, sets.thresholds_at(rule.null, 0.05))
    assert np.isinf(rule.thresholds[:, 2]).all()  # no validation sets: accepts any set
    assert rule.thresholds[2, 0] == rule.thresholds[1, 0]  # too few images for sets of 50: the size-20 threshold
    for i in range(3):  # each threshold rejects at most the share asked of its own null, and a smaller share rejects less
        for k in range(2):
            assert np.mean(rule.null[i, k] > rule.thresholds[i, k]) <= 0.05
    stricter = sets.thresholds_at(rule.null, 0.005)
    assert (stricter[:, :2] >= rule.thresholds[:, :2]).all() and (stricter[:, :2] > rule.thresholds[:, :2]).any()


def test_hotelling_t2_of_a_set_mean_and_its_use_in_each_statistic():
    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0, 0], [3.0, 0, 0]])
    f_tr, y_tr = gaussians(300, centres, rng)
    f_va, y_va = gaussians(300, centres, rng)
    rule = sets.fit(["a", "b"], f_tr, y_tr, f_va, y_va, kind="joint", n_sets=200)
    x = rng.normal([0.4, 0, 0], 1.0, (20, 3))  # a small shift of class a's mean
    z = rule.standardise(x).mean(0)
    by_hand = [20 * (z - mu) @ rule.precision @ (z - mu) for mu in rule.means]
    np.testing.assert_allclose(sets.hotelling(z[None], 20, rule.means, rule.precision)[0], by_hand, rtol=1e-10)
    i = rule.size_index(20)
    joint = np.maximum(rule.mmd2(rule.standardise(x)) / rule.scales[i, :, 0], np.array(by_hand) / rule.scales[i, :, 1])
    np.testing.assert_allclose(rule.statistics(x), joint, rtol=1e-10)
    with pytest.raises(ValueError, match="set statistic 'median'"):
        sets.fit(["a", "b"], f_tr, y_tr, f_va, y_va, kind="median")


def test_the_naive_bayes_set_posterior():
    logp = np.log(np.array([[0.6, 0.4]] * 5))
    post = sets.naive_bayes(logp, np.log([0.5, 0.5]))
    assert post[0] == pytest.approx(0.6**5 / (0.6**5 + 0.4**5))


# ---- the decisions, in order ------------------------------------------------------------------------------
def synthetic_decision(rng, set_statistic: str = sets.STATISTIC) -> tuple[decision.Decision, np.ndarray]:
    """Classes a, b and real (index 2): features are Gaussians, logits read them linearly."""
    centres = np.array([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    w = centres.T / 2

    def part(n):
        f, y = gaussians(n, centres, rng)
        return f, f @ w, y

    return decision.fit(["a", "b", "real"], part(300), part(200), part(200), set_statistic=set_statistic), w


def test_real_is_decided_first_and_needs_the_real_region():
    rng = np.random.default_rng(2)
    d, w = synthetic_decision(rng)
    assert d.real == 2 and 0.9 <= d.measured["val_real_kept"] <= 1.0
    real_like = rng.normal([0, 0, 4.0, 0], 1.0, (200, 4))
    far_but_real_most_probable = rng.normal([0, 0, 12.0, 0], 1.0, (200, 4))  # p(real) ~ 1, far outside the region
    v_real = d.verdicts(real_like, real_like @ w)
    v_far = d.verdicts(far_but_real_most_probable, far_but_real_most_probable @ w)
    assert np.mean(v_real["verdict"] == "real") >= 0.9
    assert (v_far["p_real"] > 0.99).all() and not (v_far["verdict"] == "real").any()
    assert np.mean(v_far["verdict"] == "unknown") >= 0.9  # the ensemble's energy part trusts extrapolated logits a little
    known = rng.normal([4.0, 0, 0, 0], 1.0, (200, 4))
    v = d.verdicts(known, known @ w)
    assert np.mean(v["verdict"] == "known") >= 0.85 and (v["model"][v["verdict"] == "known"] == 0).all()
    assert "test_ece" in d.measured and len(d.measured["reliability"]) == calibration.BINS


def test_the_share_of_real_validation_images_kept_sets_the_p_real_threshold():
    rng = np.random.default_rng(5)
    centres = np.array([[1.5, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 1.5, 0]])  # overlapping: p(real) spreads out
    w = centres.T / 2

    def part(n):
        f, y = gaussians(n, centres, rng)
        return f, f @ w, y

    val = part(400)
    d = decision.fit(["a", "b", "real"], part(300), val)
    is_real = val[2] == 2
    kept = {}
    for keep in (0.97, 0.9, 0.8):
        dk = decision.with_real_keep(d, val, keep)
        kept[keep] = np.mean(dk.verdicts(*val[:2])["verdict"][is_real] == "real")
        assert keep - 0.01 <= kept[keep] <= keep + 0.01  # ties in p(real) aside, exactly the share asked
    assert decision.with_real_keep(d, val, decision.REAL_KEEP).real_threshold == d.real_threshold
    assert decision.p_real_threshold(np.array([0.9, 0.2, 0.7]), 4, 0.5) == 0.7 and np.isinf(decision.p_real_threshold(np.zeros(0), 4, 0.5))


@pytest.mark.parametrize("kind", sets.STATISTICS)
def test_set_verdicts_real_known_and_unknown_with_by_n(tmp_path, kind):
    rng = np.random.default_rng(3)
    d, w = synthetic_decision(rng, kind)
    for centre, verdict, model in (([0, 0, 4.0, 0], "real", None), ([0, 4.0, 0, 0], "known", 1),
                                   ([3.0, 3.0, 0, 3.0], "unknown", None)):
        x = rng.normal(centre, 1.0, (50, 4))
        s = d.set_verdict(x, x @ w)
        assert (s["verdict"], s["model"]) == (verdict, model)
        assert 0.5 < s["p"] <= 1 and s["n"] == 50 and [b["n"] for b in s["by_n"]] == [5, 20, 50]
        assert s["by_n"][-1]["verdict"] == verdict
    with pytest.raises(ValueError, match="at least 5 images"):
        d.set_verdict(x[:4], x[:4] @ w)
    d.save(tmp_path)  # and back, bit for bit on the verdicts
    back = decision.Decision.load(tmp_path)
    x = rng.normal([0, 4.0, 0, 0], 1.0, (20, 4))
    assert back.set_rule.kind == kind
    np.testing.assert_allclose(back.set_rule.statistics(x), d.set_rule.statistics(x), rtol=1e-6)
    assert back.set_verdict(x, x @ w)["verdict"] == d.set_verdict(x, x @ w)["verdict"]
    np.testing.assert_array_equal(back.verdicts(x, x @ w)["verdict"], d.verdicts(x, x @ w)["verdict"])


# ---- the CLI: --as-set, the schema, the CSV report --------------------------------------------------------
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    return trained_workspace(tmp_path_factory, kinds=("rgb",))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    rng = np.random.default_rng(4)
    out = {}
    for kind in ("toy_checker", "toy_columns"):
        d = tmp_path_factory.mktemp(kind)
        for i, img in enumerate(traced(kind, 20, rng)):
            buf = io.BytesIO()
            Image.fromarray(img[..., 0]).save(buf, "PNG")
            (d / f"{i:02d}.png").write_bytes(buf.getvalue())
        out[kind] = d
    return out


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_as_set_adds_the_set_verdict_beside_the_per_image_answers(ws, folders, capsys):
    code, out, _ = run(capsys, "attribute", ws, folders["toy_checker"], "--json", "--as-set")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == predict.SCHEMA and len(doc["results"]) == 20 and doc["errors"] == []
    s = doc["set"]
    assert {"verdict", "model", "p", "n", "design", "by_n"} <= set(s)
    assert (s["verdict"], s["model"], s["n"]) == ("known", "toy_checker", 20)
    assert s["design"]["upsampling"]["value"] == "transposed_conv" and 0 < s["design"]["upsampling"]["p"] <= 1
    assert [b["n"] for b in s["by_n"]] == [5, 20] and all(set(b) >= {"n", "verdict", "p"} for b in s["by_n"])
    code, out, _ = run(capsys, "attribute", ws, folders["toy_columns"], "--json", "--as-set")
    assert json.loads(out)["set"]["verdict"] in ("unknown", "real")  # a planted model the workspace never saw
    assert json.loads(out)["set"]["model"] is None
    code, out, _ = run(capsys, "attribute", ws, folders["toy_checker"], "--json")
    assert "set" not in json.loads(out)


def test_a_set_of_fewer_than_five_images_is_refused_by_name(ws, folders, capsys):
    few = sorted(folders["toy_checker"].iterdir())[:3]
    code, out, _ = run(capsys, "attribute", ws, *few, "--json", "--as-set")
    doc = json.loads(out)
    assert code == 0 and len(doc["results"]) == 3 and "set" not in doc
    assert doc["errors"] == [{"file": "(set)", "reason": "a set verdict needs at least 5 images; got 3"}]


def test_the_csv_report_names_every_file_with_its_sha256_and_the_thresholds(ws, folders, capsys, tmp_path):
    csv = tmp_path / "report.csv"
    code, out, _ = run(capsys, "attribute", ws, folders["toy_checker"], "--as-set", "--csv", csv)
    assert code == 0 and "as one source (20 images" in out
    lines = csv.read_text().splitlines()
    head = [x for x in lines if x.startswith("# ")]
    assert head[0] == f"# schema: {predict.SCHEMA}" and any(x.startswith("# real: p(real) >=") for x in head)
    assert any("set to accept 95% of known generated validation images" in x for x in head)
    assert any(x.startswith("# set: ") and '"verdict": "known"' in x for x in head)
    table = pd.read_csv(csv, skiprows=len(head))
    files = sorted(folders["toy_checker"].iterdir())
    assert list(table["file"]) == [str(f) for f in files]
    assert list(table["sha256"]) == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert set(table["verdict"]) <= {"known", "unknown", "real"}
    assert report.COLUMNS == tuple(table.columns[: len(report.COLUMNS)])


# ---- calibration never reads the foreign set -------------------------------------------------------------
_OPENED: list[str] = []
_AUDIT = {"on": False}


def _audit(event: str, args: tuple) -> None:
    if _AUDIT["on"] and event == "open" and args and isinstance(args[0], str | bytes | Path):
        _OPENED.append(str(args[0]))


def test_no_calibration_step_reads_the_foreign_set(ws, tmp_path):
    """Training, the open-set rule, the temperature, the real and unknown thresholds and the set thresholds
    of a fresh copy of a workspace: every file they open is recorded, and none is under assets/foreign."""
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    shutil.rmtree(copy / "decision", ignore_errors=True)
    if not hasattr(sys, "_manifpt_audit"):
        sys.addaudithook(_audit)  # audit hooks cannot be removed: one, switched on only here
        sys._manifpt_audit = True
    _OPENED.clear()
    _AUDIT["on"] = True
    try:
        train_mod.train(copy, kinds=["rgb"], epochs=2, device="cpu", force=True)
        w = Workspace.open(copy)
        method, entry = train_mod.load(w, "rgb")
        decision.ensure(w, "rgb", method, entry)
    finally:
        _AUDIT["on"] = False
    assert any("decision" in p for p in _OPENED) or (copy / "decision").is_dir()
    assert _OPENED, "the audit hook saw no file opened"
    foreign = (Path(__file__).resolve().parents[1] / "assets" / "foreign").as_posix()
    assert not [p for p in _OPENED if "assets/foreign" in p or p.startswith(foreign)]
