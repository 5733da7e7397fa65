"""Exact nearest neighbour: every path agrees with float64 brute force, ties to the lowest index."""

import numpy as np
import pytest
import torch

from fingerprint_core import devices
from fingerprint_core.manifold import Manifold

# pixel codes take the exact integer pass on every CPU (native int8 matmul or its float32 emulation)
PIXEL_PATH = "int8" if devices.exact_int8(torch.device("cpu")) else "float32"


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
@pytest.mark.parametrize("precision", ["auto", "float32", "bf16"])
def test_float_embeddings_match_float64_brute_force(dim, chunk, precision):
    rng = np.random.default_rng(dim)
    ref = rng.standard_normal((900, dim)).astype(np.float32)
    q = rng.standard_normal((250, dim)).astype(np.float32)
    stats = check(Manifold(ref, chunk_rows=chunk, query_tile=64, precision=precision), q, q, ref)
    assert stats.path in (("bf16", "float32") if precision == "auto" else (precision, "float32", "float64"))


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
    # the integer pass where int8 matmul is fast (VNNI / AMX); float32 otherwise (AVX2-only CPUs)
    assert stats.path == PIXEL_PATH


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


# ---- centring, tight bounds, pruning and bounded memory ----------------------------------------
def exact_nearest(q: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 brute force for large D without an N x M x D array: the expanded form narrows each
    query to the references within a wide margin of its best, direct sums of squares decide."""
    q64, r64 = q.astype(np.float64), r.astype(np.float64)
    mu = r64.mean(0)
    qc, rc = q64 - mu, r64 - mu
    approx = (qc**2).sum(1)[:, None] + (rc**2).sum(1)[None, :] - 2 * qc @ rc.T
    idx, dist = np.empty(len(q), np.int64), np.empty(len(q))
    for i in range(len(q)):
        near = np.flatnonzero(approx[i] <= approx[i].min() * (1 + 1e-6) + 1e-6)
        d = ((r64[near] - q64[i]) ** 2).sum(1)
        j = np.argmin(d)  # the first minimum: the lowest index among exact ties
        idx[i], dist[i] = near[j], d[j]
    return idx, dist


def check_large(m: Manifold, queries, q_values, r_values):
    idx, dist = m.nearest(queries)
    want_i, want_d = exact_nearest(q_values, r_values)
    np.testing.assert_array_equal(idx.numpy(), want_i)
    np.testing.assert_allclose(dist.numpy(), want_d, rtol=1e-6)
    return m.last_stats


def low_rank(rng, n, dim, rank=6, noise=0.05, offset=0.0):
    basis = rng.standard_normal((rank, dim))
    return (offset + rng.standard_normal((n, rank)) @ basis + noise * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_float_search_with_and_without_pruning(prune, offset):
    rng = np.random.default_rng(10)
    ref = low_rank(rng, 1500, 96, offset=offset)
    q = low_rank(rng, 200, 96, offset=offset)
    q[:20] = ref[100:120]  # self-queries: distance 0
    stats = check(Manifold(ref, prune=prune, prune_dims=16, chunk_rows=500), q, q, ref)
    assert stats.pruned is prune
    if prune:
        assert stats.prune_dims == 16
        assert 0 < stats.verified_share < 0.5  # the bound rules most references out
        assert stats.evaluated_share >= stats.verified_share
    else:
        assert stats.verified_share == 1.0


def test_freq_like_offset_keeps_the_band_narrow():
    # log spectra: a big common offset, small differences. Centred, the float32 bound is tight,
    # so the re-rank sees a handful of candidates per query, not the whole set.
    rng = np.random.default_rng(11)
    ref = (20 + 0.3 * rng.standard_normal((800, 512))).astype(np.float32)
    q = (20 + 0.3 * rng.standard_normal((100, 512))).astype(np.float32)
    stats = check(Manifold(ref, precision="float32", prune=False), q, q, ref)
    assert stats.path == "float32" and stats.candidates <= 3 * len(q)


@pytest.mark.parametrize("prune", [False, True])
def test_pixel_codes_with_and_without_pruning(prune):
    rng = np.random.default_rng(12)
    base = rng.integers(0, 256, (40, 3 * 8 * 8))
    ref = np.clip(base[rng.integers(0, 40, 1200)] + rng.integers(-20, 21, (1200, 192)), 0, 255).astype(np.uint8)
    q = np.clip(base[rng.integers(0, 40, 150)] + rng.integers(-20, 21, (150, 192)), 0, 255).astype(np.uint8)
    q[:10] = ref[500:510]
    ref[700] = ref[600]  # a duplicate: ties go to the lowest index
    q[10] = ref[600]
    m = Manifold(ref, prune=prune, prune_dims=32, chunk_rows=300)
    stats = check(m, q, q / 255.0, ref / 255.0)
    assert stats.path == PIXEL_PATH and stats.pruned is prune
    idx, _ = m.nearest(q[10:11])
    assert idx.item() == 600
    # float32 values on the code lattice: the same search with the rounding margin
    stats = check(m, q.astype(np.float32) / 255, q.astype(np.float32) / 255, ref.astype(np.float64) / 255)
    assert stats.pruned is prune


@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("precision", ["bf16", "float32", "float64"])
def test_near_ties_one_ulp_apart_and_exact_ties(prune, precision):
    rng = np.random.default_rng(13)
    dim = 64
    ref = (300 + rng.standard_normal((600, dim))).astype(np.float32)
    q = (300 + rng.standard_normal((30, dim))).astype(np.float32)
    step = np.float32(0.25)  # exact in float32 around 300
    for i in range(30):
        e = np.zeros(dim, np.float32)
        e[i % dim] = step
        lo, hi = 2 * i, 2 * i + 301
        ref[lo], ref[hi] = q[i] + e, q[i] - e  # exactly equidistant: the lower index wins
        if i % 2:  # one ulp nearer on the other side: now the higher index wins
            k = (i + 7) % dim
            ref[hi, k] = np.nextafter(q[i, k], np.float32(np.inf)) if ref[hi, k] > q[i, k] else q[i, k]
            ref[hi, k] = q[i, k]
            ref[lo, k] = np.nextafter(q[i, k], np.float32(np.inf))
    want_i, _ = brute_force64(q, ref)
    for i in range(30):
        assert want_i[i] == (2 * i + 301 if i % 2 else 2 * i)
    check(Manifold(ref, prune=prune, prune_dims=16, precision=precision, chunk_rows=128), q, q, ref)


@pytest.mark.parametrize("prune", [False, True])
def test_duplicates_with_pruning_go_to_the_lowest_index(prune):
    rng = np.random.default_rng(14)
    base = low_rank(rng, 200, 40)
    ref = np.concatenate([base, base, base])
    q = np.concatenate([base[:30], low_rank(rng, 30, 40)])
    idx, dist = Manifold(ref, prune=prune, prune_dims=8).nearest(q)
    assert (idx.numpy() < 200).all()
    np.testing.assert_array_equal(idx.numpy()[:30], np.arange(30))
    check(Manifold(ref, prune=prune, prune_dims=8), q, q, ref)


def test_tiny_working_set_chunks_everything(monkeypatch):
    monkeypatch.setenv("MANIFPT_WORKING_SET_MB", "64")
    rng = np.random.default_rng(15)
    dim = 20_000
    ref = (5 + rng.standard_normal((120, dim))).astype(np.float32)
    q = (5 + rng.standard_normal((25, dim))).astype(np.float32)
    q[:5] = ref[[3, 50, 51, 100, 119]]
    m = Manifold(ref, prune=True)
    assert m.working_bytes == 64 * 2**20
    stats = check_large(m, q, q, ref)
    assert stats.chunk_rows * dim * 28 <= m.working_bytes // 2
    assert stats.chunk_rows < 120  # the store streams in several chunks
    np.testing.assert_array_equal(m.nearest(q[:5])[0].numpy(), [3, 50, 51, 100, 119])


HUGE = 256 * 256 * 3


@pytest.fixture(scope="module")
def huge_freq(tmp_path_factory):
    """300 FREQ-like references at D = 196,608 (a big offset, log-spectrum-like), memory-mapped."""
    rng = np.random.default_rng(16)
    ref = np.empty((300, HUGE), np.float32)
    trend = np.log1p(np.arange(HUGE, dtype=np.float32) % 256)
    for a in range(0, 300, 50):
        ref[a : a + 50] = 8 + trend + rng.standard_normal((50, HUGE), dtype=np.float32)
    path = tmp_path_factory.mktemp("huge") / "ref.npy"
    np.save(path, ref)
    q = 8 + trend + rng.standard_normal((50, HUGE), dtype=np.float32)
    q[:3] = ref[[0, 150, 299]]
    q[3] = 0.5 * (ref[10] + ref[11])  # equidistant up to rounding
    return np.load(path, mmap_mode="r"), q, ref


@pytest.mark.parametrize("prune", [False, True])
def test_huge_dimension_memory_mapped_is_exact(huge_freq, prune):
    mm, q, ref = huge_freq
    m = Manifold(mm, prune=prune, prune_dims=8, cache_bytes=0)
    assert isinstance(m._store, np.memmap)
    check_large(m, q[:8], q[:8], ref)


def test_huge_dimension_peak_memory_is_bounded(huge_freq):
    """The search of 50 queries over 300 references at D = 196,608 holds a bounded working set.
    (The old float32 band admitted every pair and re-ranked 15,000 x 196,608 float64 at once.)"""
    import tracemalloc

    mm, q, _ = huge_freq
    wb = 64 * 2**20
    m = Manifold(mm, working_bytes=wb, cache_bytes=0)
    tracemalloc.start()
    idx, _ = m.nearest(q)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(idx.numpy()[:3], [0, 150, 299])
    assert peak < 3 * wb, f"numpy peak {peak / 2**20:.0f} MiB with a {wb / 2**20:.0f} MiB working set"
    assert m.last_stats.chunk_rows * HUGE * 28 <= wb // 2


def test_huge_dimension_pixels_memory_mapped(tmp_path):
    rng = np.random.default_rng(17)
    ref = rng.integers(0, 256, (80, HUGE), dtype=np.uint8)
    np.save(tmp_path / "px.npy", ref)
    mm = np.load(tmp_path / "px.npy", mmap_mode="r")
    q = rng.integers(0, 256, (6, HUGE), dtype=np.uint8)
    q[:2] = ref[[7, 70]]
    for prune in (False, True):
        m = Manifold(mm, prune=prune, working_bytes=256 * 2**20)
        stats = check_large(m, q, q / 255.0, ref / 255.0)
        assert stats.path == PIXEL_PATH and stats.pruned is prune


@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("native", [False, True])
def test_the_integer_path_is_exact_with_either_kernel(monkeypatch, prune, native):
    """Native int8 matmul (VNNI / AMX CPUs) and its float32 emulation (AVX2 CPUs), each forced, so
    every CPU tests both."""
    monkeypatch.setattr(devices, "fast_int8", lambda device: native)
    rng = np.random.default_rng(21)
    base = rng.integers(0, 256, (30, 192))
    ref = np.clip(base[rng.integers(0, 30, 900)] + rng.integers(-15, 16, (900, 192)), 0, 255).astype(np.uint8)
    q = np.clip(base[rng.integers(0, 30, 120)] + rng.integers(-15, 16, (120, 192)), 0, 255).astype(np.uint8)
    ref[400] = ref[300]  # a duplicate: ties go to the lowest index
    q[0] = ref[300]
    m = Manifold(ref, prune=prune, prune_dims=32, chunk_rows=250)
    stats = check(m, q, q / 255.0, ref / 255.0)
    assert stats.path == "int8" and stats.pruned is prune
    assert m.nearest(q[:1])[0].item() == 300


def test_the_float32_emulation_of_int8_matmul_is_exact_at_the_extremes():
    from fingerprint_core.manifold import _int_mm_float

    for k in (8, 1024, 1032, 40_000):
        a = torch.full((3, k), -128, dtype=torch.int8)
        b = torch.full((k, 2), -128, dtype=torch.int8)
        b[:, 1] = 127
        want = torch.tensor([[k * 16384, -k * 16256]] * 3, dtype=torch.int64)
        assert torch.equal(_int_mm_float(a, b).to(torch.int64), want)
    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.integers(-128, 128, (17, 3000), dtype=np.int8))
    b = torch.from_numpy(rng.integers(-128, 128, (3000, 9), dtype=np.int8))
    assert torch.equal(_int_mm_float(a, b).to(torch.int64), a.to(torch.int64) @ b.to(torch.int64))


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_a_store_too_large_for_the_cache_is_prepared_once_and_read_back_exactly(precision):
    rng = np.random.default_rng(22)
    ref = (5 + rng.standard_normal((700, 96))).astype(np.float32)
    q = (5 + rng.standard_normal((60, 96))).astype(np.float32)
    m = Manifold(ref, precision=precision, prune=False, chunk_rows=128, cache_bytes=4096)
    first = check(m, q, q, ref)
    assert m._spilled is not None and m._spilled[0] == precision  # written by the first pass
    calls = []
    original = m._prepare
    m._prepare = lambda rows, kind: calls.append(kind) or original(rows, kind)
    second = check(m, q, q, ref)  # the second reads the spilled form: no row centred again
    assert calls == [] and (first.path, second.path) == (precision, precision)


@pytest.mark.parametrize("precision", ["auto", "float32", "bf16", "float64"])
@pytest.mark.parametrize("chunk", [37, 4096])
def test_equal_reference_columns_are_folded_and_the_answer_stays_exact(precision, chunk):
    """FREQ spectra of real images repeat about half their coordinates (|F(k)| = |F(-k)|): the
    candidate pass merges them. Queries need not repeat them; a column that differs in one
    reference row outside the detection sample is not merged."""
    from fingerprint_core import spaces

    rng = np.random.default_rng(23)
    freq = spaces.get("freq", device="cpu")
    ref = freq.embed(rng.integers(0, 256, (900, 1, 8, 8), dtype=np.uint8)).numpy()
    q_sym = freq.embed(rng.integers(0, 256, (120, 1, 8, 8), dtype=np.uint8)).numpy()
    q_any = (q_sym + rng.standard_normal(q_sym.shape).astype(np.float32)).astype(np.float32)
    m = Manifold(ref, chunk_rows=chunk, query_tile=64, precision=precision, prune=False)
    for q in (q_sym, q_any, ref[:50]):
        stats = check(m, q, q, ref)
        assert 64 // 2 <= stats.columns < 40  # 8 x 8 spectrum: 36 distinct coordinates
    spoiled = ref.copy()
    col = 9  # frequency (1, 1) of the 8 x 8 spectrum equals (7, 7): column 63
    assert np.array_equal(spoiled[:, col], spoiled[:, 63])
    spoiled[5, col] += 1.0  # row 5 is not among the 64 sampled rows of 900
    m2 = Manifold(spoiled, chunk_rows=chunk, query_tile=64, precision=precision, prune=False)
    stats = check(m2, q_any, q_any, spoiled)
    assert stats.columns == m.last_stats.columns + 1
