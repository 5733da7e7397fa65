"""The approximate index: recall@1 against the exact Manifold, exact distances where it is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fingerprint_core import approx
from fingerprint_core.manifold import Manifold

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install faiss-cpu)")


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    """float32 rows around 64 centres in an 8-dimensional subspace, plus noise (structured, not uniform)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, 8)))[0].T
    centres = rng.normal(0, 4, (64, 8))
    z = centres[rng.integers(0, 64, n)] + rng.normal(0, 1, (n, 8))
    return (z @ basis + rng.normal(0, 0.05, (n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def pixels():
    """Fashion-MNIST (60,000 x 1024 uint8 references, 500 test queries), or structured codes."""
    try:
        from fingerprint_core.datasets import load_fashion_mnist

        ref, _ = load_fashion_mnist("train")
        q, _ = load_fashion_mnist("test")
        return ref, q[:500], "fashion-mnist"
    except Exception:  # noqa: BLE001 - no copy here: structured synthetic codes of the same kind
        x = _clustered(20_500, 256, 0)
        codes = np.clip(np.rint((x - x.min()) / (x.max() - x.min()) * 255), 0, 255).astype(np.uint8)
        return codes[:20_000], codes[20_000:], "synthetic"


@pytest.mark.slow
def test_recall_on_pixels_and_exact_distances_where_right(pixels):
    ref, q, _ = pixels
    exact = Manifold(ref, device="cpu")
    index = approx.ApproxManifold(ref, nlist=128, nprobe=8, k=16)
    ia, da = index.nearest(q)
    ie, de = exact.nearest(q)
    assert ia.dtype == torch.int64 and da.dtype == torch.float32 and len(ia) == len(q)
    recall = approx.recall_at_1(ia, ie)
    assert recall >= 0.99
    hit = ia == ie
    assert torch.equal(da[hit], de[hit])  # the float64 re-rank is the exact one, bit for bit
    assert (da[~hit] >= de[~hit]).all()  # a miss is a farther reference, never a nearer one
    assert index.measure_recall(q, exact) == recall
    rec = index.config()
    assert rec["search"] == "approximate" and rec["index"] == "ivf" and rec["recall_at_1"] == recall
    assert (rec["nlist"], rec["nprobe"], rec["k"], rec["recall_queries"]) == (128, 8, 16, len(q))
    assert torch.equal(index.reference(ia[:7]), exact.reference(ia[:7]))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_float_rows_rerank_is_float64_brute_force(kind):
    rows = _clustered(6300, 32, 1)  # queries from the same distribution as the references
    ref, q = rows[:6000], rows[6000:]
    index = approx.ApproxManifold(ref, index=kind, nlist=32, nprobe=4, k=8)
    ia, da = index.nearest(q)
    d64 = ((q.astype(np.float64)[:, None, :] - ref.astype(np.float64)[None]) ** 2).sum(-1)
    true = d64.argmin(1)
    hit = ia.numpy() == true
    assert hit.mean() >= 0.95
    assert np.array_equal(da.numpy()[hit], d64[hit, true[hit]].astype(np.float32))
    ie, de = Manifold(ref, device="cpu").nearest(q)
    assert torch.equal(ie[torch.from_numpy(hit)], ia[torch.from_numpy(hit)])
    assert torch.equal(de[torch.from_numpy(hit)], da[torch.from_numpy(hit)])
    assert index.config()["index"] == kind


def test_ties_go_to_the_lowest_index_and_empty_cells_fall_back_to_exact():
    ref = _clustered(2000, 16, 3)
    ref[1500] = ref[40]  # a duplicate: the lower index must win
    index = approx.ApproxManifold(ref, nlist=8, nprobe=8, k=4)
    i, d = index.nearest(ref[[40, 1500]])
    assert i.tolist() == [40, 40] and d.tolist() == [0.0, 0.0]
    index.index.reset()  # no candidate for anything: the exact search answers
    i2, d2 = index.nearest(ref[:5])
    assert i2.tolist() == list(range(5)) and index.last_stats.fallback == 5


def test_recall_at_1_counts_index_matches():
    assert approx.recall_at_1(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
    with pytest.raises(ValueError):
        approx.recall_at_1(np.array([1]), np.array([1, 2]))
    assert approx.exact_config()["search"] == "exact"


def test_an_approximate_workspace_says_so(tmp_path):
    """`--engine approximate`: the config records the index and its measured recall@1, and the entries are
    keyed apart from exact ones (never reused as exact)."""
    import json

    from fingerprint_core.cli import main
    from gmdata import make_gm_dataset

    data = make_gm_dataset(tmp_path / "data", n_real=400, n_per_model=16, bad_file=False)
    ws = tmp_path / "ws"
    assert main(["fingerprint", str(data), "-w", str(ws), "--device", "cpu", "-q", "--engine", "approximate"]) == 0
    config = json.loads((ws / "workspace.json").read_text())["config"]
    assert config["engine"] == "approximate"
    for space in ("rgb", "freq"):
        record = config["search"][space]
        assert record["search"] == "approximate" and record["index"] == "ivf" and 0 <= record["recall_at_1"] <= 1
    approx_dirs = {e["dir"] for e in json.loads((ws / "workspace.json").read_text())["models"]["toy_gan"]["spaces"].values()}
    assert main(["fingerprint", str(data), "-w", str(ws), "--device", "cpu", "-q"]) == 0
    manifest = json.loads((ws / "workspace.json").read_text())
    assert "search" not in manifest["config"] and manifest["config"]["engine"] == "local"
    assert not approx_dirs & {e["dir"] for e in manifest["models"]["toy_gan"]["spaces"].values()}
