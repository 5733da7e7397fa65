"""Exact nearest neighbour: every path agrees with float64 brute force, ties to the lowest index."""

import numpy as np
import pytest
import torch

from fingerprint_core.manifold import Manifold


def brute_force64(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference answer: float64 distances, argmin (numpy returns the first minimum)."""
    q, r = queries.astype(np.float64), reference.astype(np.float64)
    d = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d.min(1)


def check(m: Manifold, queries, q_values, r_values):
    idx, dist = m.nearest(queries)
    want_i, want_d = brute_force64(q_values, r_values)
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32
    np.testing.assert_array_equal(idx.numpy(), want_i)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-6, atol=1e-9)
    return m.last_stats


@pytest.mark.parametrize("dim", [1, 7, 64, 300])
@pytest.mark.parametrize("chunk", [37, 4096])
def test_float_embeddings_match_float64_brute_force(dim, chunk):
    rng = np.random.default_rng(dim)
    ref = rng.standard_normal((900, dim)).astype(np.float32)
    q = rng.standard_normal((250, dim)).astype(np.float32)
    stats = check(Manifold(ref, chunk_rows=chunk, query_tile=64), q, q, ref)
    assert stats.path == "float32"


def test_data_with_a_large_offset_still_exact():
    # |q||r| >> distances: the float32 bound is loose, the certificate must still hold
    rng = np.random.default_rng(1)
    ref = (1000 + rng.standard_normal((500, 16))).astype(np.float32)
    q = (1000 + rng.standard_normal((100, 16))).astype(np.float32)
    check(Manifold(ref, chunk_rows=128), q, q, ref)


@pytest.mark.parametrize("as_float", [False, True])
def test_pixel_codes_take_the_exact_integer_path(as_float):
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 256, (700, 3, 8, 8), dtype=np.uint8)
    q = rng.integers(0, 256, (120, 3, 8, 8), dtype=np.uint8)
    if as_float:  # what the RGB space's embed gives: code / 255 in float32
        ref_in, q_in = ref.reshape(700, -1).astype(np.float32) / 255, q.reshape(120, -1).astype(np.float32) / 255
        r_val, q_val = ref_in, q_in
    else:
        ref_in, q_in = ref, q
        r_val, q_val = ref.reshape(700, -1) / 255.0, q.reshape(120, -1) / 255.0
    m = Manifold(ref_in, chunk_rows=100, query_tile=32)
    assert m.pixels  # stored as uint8: 4x smaller, exact
    stats = check(m, q_in, q_val, r_val)
    assert stats.path == "int8"


def test_ties_go_to_the_lowest_reference_index():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (50, 20), dtype=np.uint8)
    ref = np.concatenate([base, base, base])  # every row three times
    q = np.concatenate([base[:10], rng.integers(0, 256, (30, 20), dtype=np.uint8)])
    for r_in, q_in in [(ref, q), (ref.astype(np.float32), q.astype(np.float32))]:
        idx, dist = Manifold(r_in, chunk_rows=40).nearest(q_in)
        assert (idx.numpy() < 50).all()
        np.testing.assert_array_equal(idx.numpy()[:10], np.arange(10))
        assert (dist.numpy()[:10] == 0).all()


def test_self_query_finds_itself_at_distance_zero():
    rng = np.random.default_rng(4)
    ref = rng.random((400, 33)).astype(np.float32)
    idx, dist = Manifold(ref).nearest(ref[::7])
    np.testing.assert_array_equal(idx.numpy(), np.arange(0, 400, 7))
    assert (dist.numpy() == 0).all()


def test_memory_mapped_reference_streams(tmp_path):
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((1000, 24)).astype(np.float32)
    np.save(tmp_path / "ref.npy", ref)
    mm = np.load(tmp_path / "ref.npy", mmap_mode="r")
    # a cache budget of 0 bytes: every call streams chunks from the memmap
    m = Manifold(mm, chunk_rows=128, cache_bytes=0)
    q = rng.standard_normal((60, 24)).astype(np.float32)
    check(m, q, q, ref)
    check(m, q, q, ref)  # again, still streaming
    assert m._prepared is None


def test_faiss_backend_is_certified_too():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((800, 16)).astype(np.float32)
    ref[400:] = ref[:400]  # duplicates: faiss's own tie order is not ours
    q = np.concatenate([ref[:50], rng.standard_normal((50, 16)).astype(np.float32)])
    stats = check(Manifold(ref, backend="faiss"), q, q, ref)
    assert stats.path == "faiss"


def test_wrong_dimension_and_empty_inputs():
    m = Manifold(np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="dimension 3"):
        m.nearest(np.zeros((2, 3), np.float32))
    idx, dist = m.nearest(np.zeros((0, 4), np.float32))
    assert idx.shape == (0,) and dist.shape == (0,)
    with pytest.raises(ValueError, match="at least one row"):
        Manifold(np.zeros((0, 4), np.float32))


def test_reference_rows_come_back_as_float32_values():
    codes = np.arange(24, dtype=np.uint8).reshape(6, 4)
    m = Manifold(codes)
    out = m.reference(torch.tensor([5, 0, 5]))
    assert out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), codes[[5, 0, 5]].astype(np.float32) / 255)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pixels", [False, True])
def test_cuda_paths_match_float64_brute_force(pixels):
    rng = np.random.default_rng(7)
    if pixels:
        ref = rng.integers(0, 256, (5000, 1024), dtype=np.uint8)
        q = rng.integers(0, 256, (700, 1024), dtype=np.uint8)
        r_val, q_val = ref / 255.0, q / 255.0
    else:
        ref = rng.standard_normal((5000, 256)).astype(np.float32)
        q = rng.standard_normal((700, 256)).astype(np.float32)
        r_val, q_val = ref, q
    m = Manifold(ref, device="cuda")
    idx, dist = m.nearest(q)
    assert idx.device.type == "cuda"
    want_i, _ = brute_force64(q_val, r_val)
    np.testing.assert_array_equal(idx.cpu().numpy(), want_i)
