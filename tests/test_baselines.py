"""The classic baselines: each learns a planted trace, round-trips through save/load, and the feature
extractors say what they should on images whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from fingerprint_core.attribution import baselines
from fingerprint_core.attribution.baselines.durall20 import azimuthal_spectrum
from fingerprint_core.attribution.baselines.dzanic20 import decay_features, reduced_spectrum
from fingerprint_core.attribution.baselines.frank20 import log_dct
from fingerprint_core.attribution.baselines.marra19 import normalise, residual
from fingerprint_core.attribution.baselines.wang20 import blur_jpeg, gaussian_blur, jpeg
from fingerprint_core.attribution.method import Inputs
from gmdata import blob_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny training steps: see conftest

SIZE = 16
TINY = {  # a few seconds each on one thread
    "Yu19": dict(width=8, epochs=6, patience=3, batch_size=16, lr=3e-3),
    "Wang20": dict(width=8, epochs=6, patience=3, batch_size=16, lr=3e-3),
}


def checkerboard(size: int = SIZE) -> np.ndarray:
    return (np.indices((size, size)).sum(0) % 2 * 2 - 1).astype(np.float32)


def planted(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x 1 x H x W blobs with one trace per class: a checkerboard, a blur, a fixed noise
    pattern; labels 0, 1, 2."""
    rng = np.random.default_rng(seed)
    pattern = np.random.default_rng(99).normal(0, 1, (SIZE, SIZE)).astype(np.float32)  # the same for every split
    out, labels = [], []
    for k in range(3):
        x = blob_images(n_per_class, SIZE, 1, rng)[..., 0].astype(np.float32)
        if k == 0:
            x += 10 * checkerboard()
        elif k == 1:
            x = (x + np.roll(x, 1, 1) + np.roll(x, -1, 1) + np.roll(x, 1, 2) + np.roll(x, -1, 2)) / 5
        else:
            x += 10 * pattern
        out.append(np.clip(x, 0, 255).round().astype(np.uint8)[:, None])
        labels.append(np.full(n_per_class, k))
    return np.concatenate(out), np.concatenate(labels)


CLASSES = {"model": ["checker", "blur", "pattern"], "upsampling": ["other", "transposed_conv"]}


def targets_of(y: np.ndarray) -> dict[str, np.ndarray]:
    return {"model": y.astype(np.int64), "upsampling": (y == 0).astype(np.int64)}


@pytest.fixture(scope="module")
def toy():
    (x, y), (xv, yv), (xt, yt) = planted(60, 1), planted(20, 2), planted(40, 3)
    return Inputs(x), targets_of(y), Inputs(xv), targets_of(yv), Inputs(xt), targets_of(yt)


def make(name: str, **kw):
    return baselines.create(name, **{**TINY.get(name, {}), **kw})


@pytest.mark.parametrize("name", baselines.names())
def test_each_baseline_learns_a_planted_trace_and_round_trips(name, toy, tmp_path):
    train, y, val, yv, test, yt = toy
    method = make(name).fit(train, y, val, yv, classes=CLASSES, seed=0, device="cpu")
    logits = method.logits(test)
    assert set(logits) == set(CLASSES)
    assert logits["model"].shape == (len(test), 3) and logits["model"].dtype == np.float32
    acc = np.mean(logits["model"].argmax(1) == yt["model"])
    assert acc > 0.6, f"{name}: accuracy {acc:.2f} on three planted traces (chance 0.33)"
    assert np.mean(logits["upsampling"].argmax(1) == yt["upsampling"]) > 0.6
    feats = method.features(test)
    assert feats.ndim == 2 and len(feats) == len(test) and np.isfinite(feats).all()

    method.save(tmp_path / name)
    assert not list(tmp_path.glob(f"{name}/*.pkl"))
    again = baselines.load(tmp_path / name)
    assert type(again) is type(method)
    for head, z in again.logits(test).items():
        np.testing.assert_array_equal(z, logits[head])
    np.testing.assert_array_equal(again.features(test), feats)


@pytest.mark.parametrize("name", ["Durall20", "Frank20", "Marra19", "Dzanic20"])
def test_the_deterministic_baselines_ignore_the_seed_and_say_so_by_equal_logits(name, toy):
    train, y, val, yv, test, _ = toy
    a = make(name).fit(train, y, val, yv, classes=CLASSES, seed=0).logits(test)["model"]
    b = make(name).fit(train, y, val, yv, classes=CLASSES, seed=1).logits(test)["model"]
    np.testing.assert_array_equal(a, b)


def test_the_cnn_seed_changes_the_training():
    (x, y), (xv, yv) = planted(12, 1), planted(6, 2)
    fits = [make("Yu19", epochs=1).fit(Inputs(x), targets_of(y), Inputs(xv), targets_of(yv), classes=CLASSES, seed=s)
            for s in (0, 0, 1)]
    z = [f.logits(Inputs(xv))["model"] for f in fits]
    np.testing.assert_array_equal(z[0], z[1])
    assert not np.array_equal(z[0], z[2])


def test_a_class_absent_from_training_is_never_predicted():
    (x, y), (xv, yv) = planted(20, 1), planted(8, 2)
    keep = y != 2  # "pattern" has no training sample
    for name in ("Durall20", "Marra19", "Dzanic20"):
        m = make(name).fit(Inputs(x[keep]), targets_of(y[keep]), Inputs(xv), targets_of(yv), classes=CLASSES)
        z = m.logits(Inputs(xv))["model"]
        assert np.isfinite(z).all() and (z.argmax(1) != 2).all(), name


def test_checkerboard_spectrum_peaks_at_the_highest_frequency():
    board = np.clip(128 + 20 * checkerboard(32), 0, 255).astype(np.uint8)[None, None]
    smooth = blob_images(1, 32, 1, np.random.default_rng(0)).transpose(0, 3, 1, 2)
    prof = azimuthal_spectrum(board)[0]
    assert len(prof) == 23  # floor radii 0..22: out to the corner of a 32 x 32 spectrum
    assert 1 + prof[1:].argmax() == len(prof) - 1  # beyond the DC term, the peak is the corner ring
    assert azimuthal_spectrum(smooth)[0][-1] < prof[-1]


def power_law_images(exponent: float, n_images: int, rng: np.random.Generator, n: int = 32) -> np.ndarray:
    """uint8 N x 1 x n x n images whose power spectrum is exactly k^-exponent (random phases)."""
    f = np.fft.fftfreq(n) * n
    k = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    amp = np.where(k > 0, np.maximum(k, 1e-9) ** (-exponent / 2), 0.0)
    out = []
    for _ in range(n_images):
        phase = np.angle(np.fft.fft2(rng.normal(size=(n, n))))  # the phases of a real image: the result is real
        img = np.real(np.fft.ifft2(amp * np.exp(1j * phase)))
        out.append(np.clip(128 + img / np.abs(img).max() * 100, 0, 255).round().astype(np.uint8))
    return np.stack(out)[:, None]


def test_decay_features_fit_a_planted_power_law():
    rng = np.random.default_rng(0)
    for exponent in (2.0, 3.0):
        feats = decay_features(power_law_images(exponent, 6, rng))
        assert feats.shape == (6, 2)
        np.testing.assert_allclose(feats[:, 0], -exponent, atol=0.15)
    assert reduced_spectrum(power_law_images(2.0, 2, rng)).shape == (2, 17)  # rings 0..16 of a 32 x 32 image
    with pytest.raises(ValueError, match="tail frequencies"):
        decay_features(np.zeros((1, 1, 2, 2), np.uint8))


def test_marra_recovers_a_planted_per_model_residual():
    rng = np.random.default_rng(0)
    patterns = rng.normal(0, 1, (2, SIZE, SIZE)).astype(np.float32)
    x, y = [], []
    for k in range(2):
        base = blob_images(80, SIZE, 1, rng)[..., 0].astype(np.float32)
        x.append(np.clip(base + 8 * patterns[k], 0, 255).round().astype(np.uint8)[:, None])
        y.append(np.full(80, k))
    x, y = np.concatenate(x), np.concatenate(y)
    cls = {"model": ["a", "b"]}
    m = baselines.create("Marra19").fit(Inputs(x), {"model": y}, Inputs(x[::4]), {"model": y[::4]}, classes=cls)
    truth = normalise(residual((128 + 8 * patterns[:, None]).clip(0, 255).round().astype(np.uint8)))
    corr = normalise(m.fingerprints_["model"]) @ truth.T  # fingerprint k vs planted residual j
    assert corr[0, 0] > 0.8 and corr[1, 1] > 0.8
    assert abs(corr[0, 1]) < 0.3 and abs(corr[1, 0]) < 0.3
    assert m.features(Inputs(x)).shape == (len(x), 2)


def test_residual_and_dct_on_known_images():
    flat = np.full((2, 3, 8, 8), 77, np.uint8)
    assert np.abs(residual(flat)).max() == 0  # a flat image has no noise residual
    spike = flat.copy()
    spike[0, 1, 4, 4] = 177
    r = residual(spike).reshape(2, 3, 8, 8)
    assert r[0, 1, 4, 4] == pytest.approx(100 / 255) and np.count_nonzero(r) == 1
    d = log_dct(flat).reshape(2, 3, 8, 8)
    assert d.shape == (2, 3, 8, 8)
    assert d[0, 0, 0, 0] == pytest.approx(np.log(77 / 255 * 8 + 1e-4), rel=1e-5)  # DC of an orthonormal DCT
    assert d[0, 0, 1:, :].max() == pytest.approx(np.log(1e-4), abs=1e-3)  # everything else is ~0


def test_wang_augmentation_blurs_and_compresses():
    rng = np.random.default_rng(0)
    board = np.clip(128 + 60 * checkerboard(32), 0, 255).astype(np.uint8)[None, None]
    assert np.array_equal(gaussian_blur(board, np.array([0.0])), board)
    blurred = gaussian_blur(board, np.array([1.0]))
    assert blurred.std() < board.std() / 5  # sigma 1 px nearly erases the finest pattern
    assert np.abs(jpeg(board[0], 30).astype(int) - board[0]).mean() > 1
    rgb = rng.integers(0, 255, (3, 16, 16), dtype=np.uint8)
    assert jpeg(rgb, 90).shape == (3, 16, 16)
    batch = np.repeat(board, 200, axis=0)
    out = blur_jpeg(batch, np.random.default_rng(1))
    changed = np.array([not np.array_equal(o, board[0]) for o in out])
    assert 0.6 < changed.mean() < 0.9  # 1 - 0.5 * 0.5 of the images get blur and/or JPEG
    assert out.dtype == np.uint8 and out.shape == batch.shape


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown baseline 'nope'.*Yu19"):
        baselines.create("nope")
    with pytest.raises(ValueError, match="works on images"):
        baselines.create("Durall20").features(Inputs(None, {"rgb": np.zeros((2, 4), np.float32)}))
    with pytest.raises(RuntimeError, match="not fitted"):
        baselines.create("Frank20").logits(Inputs(np.zeros((1, 1, 8, 8), np.uint8)))
    assert baselines.create("durall20").name == "Durall20"
