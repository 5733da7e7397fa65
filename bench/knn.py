"""Exact nearest-neighbour throughput: the Manifold against faiss-cpu IndexFlatL2 and numpy.

Same data for every method: 60,000 references x 10,000 queries at D=1024 and D=256, as pixel
codes (Fashion-MNIST train/test padded to 32 x 32, or pooled to 16 x 16) and as float embeddings
(the FREQ space of the same images). Median wall time of 3 runs; float64 decides which neighbour
is nearer where float32 rounding differs.

    python bench/knn.py [--runs 3] [--queries 10000] [--references 60000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
import torch

from fingerprint_core import spaces
from fingerprint_core.manifold import Manifold


def fashion_mnist_or_synthetic(n_ref: int, n_q: int) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 N x 1 x 32 x 32 reference and query images."""
    try:
        from fingerprint_core.datasets import load_fashion_mnist

        ref, _ = load_fashion_mnist("train")
        q, _ = load_fashion_mnist("test")
        return ref[:n_ref], q[:n_q], "Fashion-MNIST"
    except Exception:  # no copy on this machine: smooth random images of the same shape
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (n_ref + n_q, 1, 8, 8)).astype(np.float32)
        img = torch.nn.functional.interpolate(torch.from_numpy(base), size=32, mode="bilinear").numpy()
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        return img[:n_ref], img[n_ref:], "synthetic"


def pool2(x: np.ndarray) -> np.ndarray:
    """2 x 2 mean pooling of uint8 images, rounded back to uint8 (32 x 32 -> 16 x 16)."""
    n, c, h, w = x.shape
    return np.rint(x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))).astype(np.uint8)


def numpy_nn(ref: np.ndarray, q: np.ndarray, block: int = 1024) -> np.ndarray:
    """The obvious alternative: float32 BLAS distances in query blocks, argmin."""
    rn = np.einsum("ij,ij->i", ref, ref)
    out = np.empty(len(q), dtype=np.int64)
    for a in range(0, len(q), block):
        d = rn[None, :] - 2 * q[a : a + block] @ ref.T
        out[a : a + block] = d.argmin(1)
    return out


def faiss_nn(ref: np.ndarray, q: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(ref.shape[1])
    index.add(ref)
    return index.search(q, 1)[1][:, 0].astype(np.int64)


def d64(ref: np.ndarray, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Float64 squared distance of each query to the neighbour a method returned."""
    out = np.empty(len(q))
    for a in range(0, len(q), 2048):
        diff = ref[idx[a : a + 2048]].astype(np.float64) - q[a : a + 2048].astype(np.float64)
        out[a : a + 2048] = np.einsum("ij,ij->i", diff, diff)
    return out


def manifold_nn(ref: np.ndarray, q: np.ndarray, device: str) -> tuple[np.ndarray, object]:
    """The Manifold's answer and its search stats; building it (norms, int8 copy) is timed too."""
    m = Manifold(ref, device=device)
    return m.nearest(q)[0].cpu().numpy(), m.last_stats


def timed(fn, runs: int):
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--references", type=int, default=60_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    ref_img, q_img, source = fashion_mnist_or_synthetic(args.references, args.queries)
    freq = spaces.get("freq")
    cases = []
    for name, r, q in [("1024", ref_img, q_img), ("256", pool2(ref_img), pool2(q_img))]:
        n_r, n_q = len(r), len(q)
        cases.append((f"pixels D={name}", r.reshape(n_r, -1), q.reshape(n_q, -1)))
        cases.append((f"FREQ   D={name}", freq.embed(r).numpy(), freq.embed(q).numpy()))

    print(f"data: {source}, {args.references} references x {args.queries} queries; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.runs} runs\n")
    header = f"{'data':16} {'method':24} {'seconds':>8} {'queries/s':>10} {'x faiss':>8} {'as near as faiss':>17} {'exact (f64)':>12}"
    print(header)
    print("-" * len(header))
    for label, r_codes, q_codes in cases:
        pixels = r_codes.dtype == np.uint8
        r32 = r_codes.astype(np.float32) / 255 if pixels else r_codes
        q32 = q_codes.astype(np.float32) / 255 if pixels else q_codes
        r64_src, q64_src = (r_codes / 255.0, q_codes / 255.0) if pixels else (r_codes, q_codes)

        t_f, i_f = timed(partial(faiss_nn, r32, q32), args.runs)
        t_m, (i_m, stats) = timed(partial(manifold_nn, r_codes, q_codes, args.device), args.runs)
        t_n, i_n = timed(partial(numpy_nn, r32, q32), args.runs)
        exact = Manifold(r_codes).nearest(q_codes)[0].numpy()
        d_exact = d64(r64_src, q64_src, exact)
        d_faiss = d64(r64_src, q64_src, i_f)
        for method, t, idx in [("faiss IndexFlatL2", t_f, i_f), (f"Manifold ({stats.path})", t_m, i_m), ("numpy float32 BLAS", t_n, i_n)]:
            d = d64(r64_src, q64_src, idx)
            print(f"{label:16} {method:24} {t:8.2f} {len(q_codes) / t:10.0f} {t_f / t:8.2f} "
                  f"{np.mean(d <= d_faiss):17.4%} {np.mean(d <= d_exact):12.4%}")
        print()
    print("x faiss: faiss time / method time (higher is faster). as near as faiss: share of queries whose")
    print("neighbour is at most as far as faiss's, in float64. exact: share whose neighbour is as near as")
    print("the float64 optimum (the Manifold's answer is certified exact, ties to the lowest index).")


if __name__ == "__main__":
    main()
