"""Exact nearest-neighbour throughput: the Manifold against faiss-cpu IndexFlatL2 and numpy.

Cases (same data for every method; median wall time of --runs runs; building each index is timed):

* Fashion-MNIST (train = references, test = queries) as pixel codes padded to 32 x 32 (D = 1,024)
  and pooled to 16 x 16 (D = 256), and the FREQ space of the same images;
* D = 12,288: the same images upsampled to 64 x 64 and colourised with a random tint per image;
* D = 196,608: 256 x 256 x 3 procedural 1/f-noise images (not low-rank), memory-mapped from a
  temporary .npy (faiss and numpy read it in chunks too);
* random uniform floats (D = 256 and 1,024), where no structure helps.

Each case also checks exactness against float64 brute force on sampled queries plus the queries
whose best and second-best distances (by faiss, or the float32 BLAS) are closest.

    python bench/knn.py [--runs 3] [--quick] [--cases 1024,freq1024,...] [--no-faiss] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from functools import partial

import numpy as np
import torch

from fingerprint_core import devices, spaces
from fingerprint_core.manifold import Manifold

CASES = ("1024", "freq1024", "256", "freq256", "12288", "196608", "uniform256", "uniform1024")


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


def tinted64(x: np.ndarray, seed: int) -> np.ndarray:
    """uint8 N x 1 x 32 x 32 -> N x 3 x 64 x 64: bilinear upsampling, a random RGB tint per image."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(x), 3, 64, 64), np.uint8)
    for a in range(0, len(x), 4096):
        up = torch.nn.functional.interpolate(torch.from_numpy(x[a : a + 4096]).float(), size=64, mode="bilinear",
                                             align_corners=False)
        tint = torch.from_numpy(rng.uniform(0.3, 1.0, (len(up), 3, 1, 1)).astype(np.float32))
        out[a : a + len(up)] = (up * tint).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def noise_images(path: str, n: int, seed: int, size: int = 256) -> np.memmap:
    """n procedural 1/f-noise colour images (amplitude ~ 1/f, correlated channels), uint8, in a .npy."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3 * size * size))
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(size)
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).clamp_min(1.0 / size)
    for a in range(0, n, 256):
        b = min(n, a + 256)
        spec = torch.randn((b - a, 3, size, size), generator=g, dtype=torch.complex64) / radius
        spec[:, 1:] = 0.6 * spec[:, :1] + 0.4 * spec[:, 1:]  # colour channels share structure
        img = torch.fft.ifft2(spec).real
        img = (img - img.mean((1, 2, 3), keepdim=True)) / img.std((1, 2, 3), keepdim=True)
        out[a:b] = (128 + 40 * img).round().clamp(0, 255).to(torch.uint8).reshape(b - a, -1).numpy()
    out.flush()
    return np.load(path, mmap_mode="r")


def as_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else np.asarray(x, np.float32)


def row_chunks(ref, step: int):
    for a in range(0, len(ref), step):
        yield a, as_float(np.asarray(ref[a : a + step]))


def numpy_nn(ref, q: np.ndarray, block: int = 1024) -> np.ndarray:
    """The obvious alternative: float32 BLAS distances in blocks, argmin."""
    qf = as_float(q)
    best = np.full(len(q), np.inf, np.float32)
    out = np.zeros(len(q), dtype=np.int64)
    step = max(1, (1 << 28) // (4 * ref.shape[1]))
    for a, r in row_chunks(ref, step):
        rn = np.einsum("ij,ij->i", r, r)
        for b in range(0, len(q), block):
            d = rn[None, :] - 2 * qf[b : b + block] @ r.T
            j = d.argmin(1)
            v = d[np.arange(len(j)), j]
            better = v < best[b : b + block]
            best[b : b + block][better] = v[better]
            out[b : b + block][better] = j[better] + a
    return out


def faiss_nn(ref, q: np.ndarray, k: int = 1):
    import faiss

    index = faiss.IndexFlatL2(ref.shape[1])
    for _, r in row_chunks(ref, max(1, (1 << 28) // (4 * ref.shape[1]))):
        index.add(r)
    d, i = index.search(as_float(q), k)
    return (i[:, 0].astype(np.int64), d) if k > 1 else i[:, 0].astype(np.int64)


def values64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255 if x.dtype == np.uint8 else x.astype(np.float64)


def d64(ref, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Float64 squared distance of each query to the neighbour a method returned."""
    out = np.empty(len(q))
    order = np.argsort(idx, kind="stable")
    for a in range(0, len(q), 256):
        sel = order[a : a + 256]
        diff = values64(np.asarray(ref[idx[sel]])) - values64(q[sel])
        out[sel] = np.einsum("ij,ij->i", diff, diff)
    return out


def exact_f64(ref, q: np.ndarray) -> np.ndarray:
    """Float64 brute force for a few queries: float64 BLAS distances narrow each query to the
    references within a wide margin of its best, direct sums of squares (first minimum) decide."""
    q64 = values64(q)
    qn = np.einsum("ij,ij->i", q64, q64)
    approx = np.empty((len(q), len(ref)))
    rmax = 0.0
    step = max(1, (1 << 27) // (8 * ref.shape[1]))
    for a in range(0, len(ref), step):
        r = values64(np.asarray(ref[a : a + step]))
        rn = np.einsum("ij,ij->i", r, r)
        rmax = max(rmax, float(rn.max()))
        approx[:, a : a + len(r)] = qn[:, None] + rn[None, :] - 2 * q64 @ r.T
    out = np.zeros(len(q), np.int64)
    for i in range(len(q)):
        near = np.flatnonzero(approx[i] <= approx[i].min() + 1e-9 * (qn[i] + rmax) + 1e-12)
        d = ((values64(np.asarray(ref[near])) - q64[i]) ** 2).sum(1)
        out[i] = near[int(np.argmin(d))]
    return out


def manifold_nn(ref, q: np.ndarray, device: str, **kw) -> tuple[np.ndarray, object]:
    """The Manifold's answer and its search stats; building it is timed too."""
    m = Manifold(ref, device=device, **kw)
    return m.nearest(q)[0].cpu().numpy(), m.last_stats


def timed(fn, runs: int):
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def build_cases(args, tmp: str):
    n_ref, n_q = args.references, args.queries
    ref_img, q_img, source = fashion_mnist_or_synthetic(n_ref, n_q)
    freq = spaces.get("freq", device="cpu")
    want = set(args.cases.split(",")) if args.cases else set(CASES)
    rng = np.random.default_rng(1)
    for name in CASES:
        if name not in want:
            continue
        if name in ("1024", "256"):
            r, q = (ref_img, q_img) if name == "1024" else (pool2(ref_img), pool2(q_img))
            yield f"{source} pixels D={name}", r.reshape(len(r), -1), q.reshape(len(q), -1)
        elif name in ("freq1024", "freq256"):
            r, q = (ref_img, q_img) if name == "freq1024" else (pool2(ref_img), pool2(q_img))
            yield f"{source} FREQ D={name[4:]}", freq.embed(r).numpy(), freq.embed(q).numpy()
        elif name == "12288":
            nr, nq = (args.big_references or n_ref), (args.big_queries or n_q)
            r, q = tinted64(ref_img[:nr], 2), tinted64(q_img[:nq], 3)
            yield f"{source} 64x64 tinted D=12288", r.reshape(len(r), -1), q.reshape(len(q), -1)
        elif name == "196608":
            nr = args.huge_references
            nq = args.huge_queries
            need = (nr + nq) * 196_608 * 1.1
            free = shutil.disk_usage(tmp).free
            if free < need + 4 * 2**30:
                print(f"skipping D=196608: {free / 2**30:.1f} GiB free in {tmp}, need {need / 2**30:.1f} GiB")
                continue
            r = noise_images(os.path.join(tmp, "ref.npy"), nr, 4)
            q = np.asarray(noise_images(os.path.join(tmp, "q.npy"), nq, 5))
            yield "1/f noise 256x256x3 D=196608 (memmap)", r, q
        elif name.startswith("uniform"):
            dim = int(name[7:])
            yield f"uniform random D={dim}", rng.random((n_ref, dim), dtype=np.float32), rng.random((n_q, dim), dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--references", type=int, default=60_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--big-references", type=int, default=None, help="D=12288 references (default --references)")
    ap.add_argument("--big-queries", type=int, default=None, help="D=12288 queries (default --queries)")
    ap.add_argument("--huge-references", type=int, default=10_000)
    ap.add_argument("--huge-queries", type=int, default=1_000)
    ap.add_argument("--quick", action="store_true", help="smaller sizes: 20,000 x 2,000; 12288: 10,000 x 1,000; "
                    "196608: 2,000 x 200; one run")
    ap.add_argument("--cases", default=None, help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--no-faiss", action="store_true", help="skip faiss (e.g. on a GPU machine without it)")
    ap.add_argument("--no-numpy", action="store_true", help="skip the numpy baseline")
    ap.add_argument("--check", type=int, default=200, help="sampled queries checked against float64 brute force")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.quick:
        args.references, args.queries, args.runs = min(args.references, 20_000), min(args.queries, 2_000), 1
        args.big_references, args.big_queries = args.big_references or 10_000, args.big_queries or 1_000
        args.huge_references, args.huge_queries = min(args.huge_references, 2_000), min(args.huge_queries, 200)
    use_faiss = not args.no_faiss
    if use_faiss:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print("faiss is not installed: skipping it (pip install faiss-cpu)")
            use_faiss = False

    print(f"cpu: {devices.cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"device {args.device}; median of {args.runs} run(s)")
    print(f"load average at start: {load()}\n")
    header = (f"{'data':40} {'N x M':>13} {'method':26} {'seconds':>8} {'queries/s':>10} {'x faiss':>8} "
              f"{'verified':>9} {'exact (f64)':>12}")
    print(header)
    print("-" * len(header))
    tmp = tempfile.mkdtemp(prefix="knn-bench-")
    try:
        for label, ref, q in build_cases(args, tmp):
            size = f"{len(ref)}x{len(q)}"
            rows = []
            t_f = i_f = None
            if use_faiss:
                t_f, i_f = timed(partial(faiss_nn, ref, q), args.runs)
                rows.append(("faiss IndexFlatL2", t_f, i_f, ""))
            t_m, (i_m, stats) = timed(partial(manifold_nn, ref, q, args.device), args.runs)
            share = f"{stats.verified_share:.3%}" if stats.pruned else "no prune"
            rows.append((f"Manifold ({stats.path}{', pruned' if stats.pruned else ''})", t_m, i_m, share))
            # the other pruning choice, once, for comparison
            t_o, (i_o, st_o) = timed(partial(manifold_nn, ref, q, args.device, prune=not stats.pruned), 1)
            share_o = f"{st_o.verified_share:.3%}" if st_o.pruned else "no prune"
            rows.append((f"Manifold prune={'on' if st_o.pruned else 'off'} (1 run)", t_o, i_o, share_o))
            if not args.no_numpy:
                t_n, i_n = timed(partial(numpy_nn, ref, q), 1 if len(ref) * ref.shape[1] > 2e9 else args.runs)
                rows.append(("numpy float32 BLAS", t_n, i_n, ""))
            # exactness: sampled queries plus the closest calls between best and second best
            rng = np.random.default_rng(0)
            sample = rng.choice(len(q), min(args.check, len(q)), replace=False)
            if use_faiss:
                _, d2 = faiss_nn(ref, q[: min(len(q), 20_000)], k=2)
                gap = d2[:, 1] - d2[:, 0]
                sample = np.union1d(sample, np.argsort(gap)[:20])
            want = exact_f64(ref, q[sample])
            d_want = d64(ref, q[sample], want)
            for method, t, idx, share in rows:
                ok = d64(ref, q[sample], idx[sample]) <= d_want
                same = idx[sample] == want
                note = f"{ok.mean():.2%}" + ("" if "Manifold" not in method or same.all() else " (index!)")
                speed = f"{t_f / t:8.2f}" if t_f else f"{'-':>8}"
                print(f"{label:40} {size:>13} {method:26} {t:8.2f} {len(q) / t:10.0f} {speed} {share:>9} {note:>12}")
            print(flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {load()}")
    print("x faiss: faiss time / method time (higher is faster). verified: share of (query, reference) pairs")
    print("the Manifold's lower bound could not rule out. exact: share of checked queries (a sample plus the")
    print("closest calls) whose neighbour is as near as float64 brute force; the Manifold must also return")
    print("the brute-force index (ties to the lowest index), else '(index!)'.")


if __name__ == "__main__":
    main()
