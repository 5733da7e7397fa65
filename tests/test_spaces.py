"""Spaces: RGB and FREQ exactly as defined; the encoder interface the learned spaces use."""

import numpy as np
import pytest
import torch

from fingerprint_core import artifacts, encoders, spaces
from fingerprint_core.manifold import Manifold


def images(n=20, c=1, h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def test_rgb_is_pixels_in_unit_range_flattened():
    x = images(c=3)
    e = spaces.get("rgb").embed(x)
    assert e.dtype == torch.float32 and e.shape == (20, 3 * 64)
    np.testing.assert_array_equal(e.numpy(), x.reshape(20, -1).astype(np.float32) / 255)


def test_freq_matches_its_definition_per_channel():
    x = images(n=5, c=3, h=8, w=6)
    e = spaces.get("freq").embed(x).numpy()
    for i in range(5):
        for c in range(3):
            f = np.fft.fftshift(np.fft.fft2(x[i, c] / 255.0))
            want = np.log(np.abs(f) + 1e-12)
            got = e[i].reshape(3, 8, 6)[c]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the DC term (sum of pixels) sits at the centre after fftshift
    np.testing.assert_allclose(e[0].reshape(3, 8, 6)[0, 4, 3], np.log(x[0, 0].sum() / 255.0), rtol=1e-6)


def test_freq_embedding_does_not_depend_on_the_batch():
    x = images(n=50)
    whole = spaces.get("freq", batch_size=50).embed(x)
    pieces = spaces.get("freq", batch_size=7).embed(x)
    assert torch.equal(whole, pieces)


@pytest.mark.parametrize("name", ["rgb", "freq"])
def test_artifact_of_a_reference_image_is_exactly_zero(name):
    real = images(n=200, c=3, seed=1)
    gen = np.concatenate([real[[3, 77, 150]], images(n=10, c=3, seed=2)])
    space = spaces.get(name)
    m = Manifold(real if name == "rgb" else space.embed(real))
    proj = artifacts.project(space, gen, m)
    np.testing.assert_array_equal(proj.nearest.numpy()[:3], [3, 77, 150])
    assert (proj.artifacts[:3] == 0).all() and (proj.distance[:3] == 0).all()
    assert (proj.artifacts[3:].abs().sum(1) > 0).all()
    np.testing.assert_array_equal(artifacts.compute(space, gen, m).numpy(), proj.artifacts.numpy())


def test_artifact_is_embedding_minus_nearest_reference():
    real, gen = images(n=100, seed=3), images(n=15, seed=4)
    space = spaces.get("freq")
    ref_emb = space.embed(real)
    m = Manifold(ref_emb)
    idx, _ = m.nearest(space.embed(gen))
    a = artifacts.compute(space, gen, m)
    np.testing.assert_array_equal(a.numpy(), (space.embed(gen) - ref_emb[idx]).numpy())


def test_unknown_space_lists_the_valid_names():
    with pytest.raises(ValueError, match="rgb, freq, sl, ssl"):
        spaces.get("clip")


def test_images_must_be_uint8_nchw():
    with pytest.raises(TypeError, match="uint8"):
        spaces.get("rgb").embed(np.zeros((2, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="N x C x H x W"):
        spaces.get("rgb").embed(np.zeros((2, 4, 4), np.uint8))


def test_encoder_space_loads_safetensors_weights(tmp_path):
    torch.manual_seed(0)
    cfg = encoders.EncoderConfig(in_channels=1, widths=(8, 16), feature_dim=12, num_outputs=10, image_size=16)
    model = encoders.ConvEncoder(cfg).eval()
    path = tmp_path / "sl.safetensors"
    encoders.save(model, path, accuracy="0.5")
    space = spaces.get("sl", weights=path)
    x = images(n=9, h=16, w=16)
    e = space.embed(x)
    assert e.shape == (9, 12) and e.dtype == torch.float32
    with torch.no_grad():
        np.testing.assert_allclose(e.numpy(), model.features(torch.from_numpy(x)).numpy(), rtol=1e-6)
    assert space.identity()["name"] == "sl" and len(space.identity()["weights_sha256"]) == 64
    assert space.meta["accuracy"] == "0.5"


def test_missing_encoder_weights_name_the_file_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifpt encoders train"):
        spaces.get("ssl", weights=tmp_path / "nope.safetensors")
