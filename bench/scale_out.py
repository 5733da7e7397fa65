"""Scale-out figures: the local engine against Ray (1 and 2 workers), cost growth with the number of
references, and the approximate index against the exact search.

Every search answers the same queries exactly (the approximate rows excepted) over memory-mapped
synthetic references: float32 rows near a few hundred centres in an 8-dimensional subspace of
D=32, plus noise (structured like embeddings, not uniform noise). Per row: wall time, throughput
(queries/s), and the peak RssAnon of this process and every descendant (Ray's raylet, GCS and
workers included; the object store's shared memory and the memory-mapped file's page cache are
not anonymous memory and are not counted).

    python bench/scale_out.py                  # 100k, 1M and 10M references (about 6 minutes here)
    python bench/scale_out.py --quick          # at most 1M references, fewer queries (about 2 minutes)
    python bench/scale_out.py --max-refs 1M --no-ray

Ray rows need the extra: MANIFPT_EXTRAS=ray bash scripts/setup.sh.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP, as the CLI does

import numpy as np  # noqa: E402
import torch  # noqa: E402
from proc_memory import PeakMemory  # noqa: E402

from fingerprint_core import devices  # noqa: E402
from fingerprint_core.manifold import Manifold  # noqa: E402

D = 32
CENTRES = 256


# ---- data -----------------------------------------------------------------------------------------
def _model(seed: int = 0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(D, 8)))[0].T
    centres = rng.normal(0, 4, (CENTRES, 8))
    return basis, centres


def _rows(n: int, rng: np.random.Generator, model) -> np.ndarray:
    basis, centres = model
    z = centres[rng.integers(0, CENTRES, n)] + rng.normal(0, 1, (n, 8))
    return (z @ basis + rng.normal(0, 0.1, (n, D))).astype(np.float32)


def references(n: int, folder: Path, model) -> np.ndarray | None:
    """A memory-mapped .npy of n x D float32 rows, written in chunks; None when the disk is short."""
    need = n * D * 4
    free = shutil.disk_usage(folder).free
    if free < 1.5 * need + 2**30:
        print(f"  skipping {n:,} references: {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free in {folder}")
        return None
    path = folder / f"ref-{n}.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, D))
    rng = np.random.default_rng(n)
    step = 1 << 20
    for a in range(0, n, step):
        out[a : a + step] = _rows(min(step, n - a), rng, model)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


# ---- rows of the table ----------------------------------------------------------------------------
ROWS: list[dict] = []


def record(label: str, n_ref: int, n_q: int, seconds: float, mem: PeakMemory, setup: float | None = None,
           note: str = "") -> None:
    row = {"row": label, "refs": n_ref, "queries": n_q, "setup_s": setup, "search_s": seconds,
           "qps": n_q / seconds if seconds > 0 else float("inf"), "peak_anon_mib": mem.peak / 2**20, "note": note}
    ROWS.append(row)
    setup_s = f"{setup:7.1f}" if setup is not None else "      -"
    print(f"  {label:<34} refs {n_ref:>11,}  queries {n_q:>6,}  setup {setup_s} s  search {seconds:7.2f} s  "
          f"{row['qps']:9.1f} q/s  peak RssAnon {row['peak_anon_mib']:7.0f} MiB  {note}", flush=True)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def local_row(label, ref, q, mem, *, warm=True):
    mem.reset()
    m, setup = timed(lambda: Manifold(ref, device="cpu"))
    (idx, _), cold = timed(lambda: m.nearest(q))
    record(f"{label} (1st call)", len(ref), len(q), cold, mem, setup, f"path {m.last_stats.path}")
    if warm:
        warm_row(label, m, q, mem)
    return m, idx


def warm_row(label, m, q, mem):
    mem.reset()
    t = min(timed(lambda: m.nearest(q))[1] for _ in range(2))
    record(f"{label} (again, best of 2)", m.size, len(q), t, mem)


def engine_rows(kept: Manifold, ref, q, exact_idx, mem, rounds: int = 3) -> None:
    """Local against Ray with 1 and 2 workers, in alternating rounds (the load of a shared machine
    moves within minutes): per engine its first call, then the best and the median of `rounds`."""
    from fingerprint_core import ray_engine

    engines: list[tuple[str, object]] = [("local engine", kept)]
    for shards in (1, 2):
        mem.reset()
        sm, setup = timed(lambda shards=shards: ray_engine.ShardedManifold(ref, shards=shards, device="cpu", by_path=True))
        (idx, _), cold = timed(lambda sm=sm: sm.nearest(q))
        same = torch.equal(idx, exact_idx)
        label = f"Ray, {shards} worker{'s' if shards > 1 else ''}"
        record(f"{label} (1st call)", len(ref), len(q), cold, mem, setup,
               f"{shards} actor(s) x {sm._threads} thread(s); {'same answer' if same else 'ANSWER DIFFERS'}")
        engines.append((label, sm))
    times: dict[str, list[float]] = {name: [] for name, _ in engines}
    peaks: dict[str, int] = dict.fromkeys(times, 0)
    for _ in range(rounds):
        for name, m in engines:
            mem.reset()
            times[name].append(timed(lambda m=m: m.nearest(q))[1])
            peaks[name] = max(peaks[name], mem.peak)
    for name, _ in engines:
        mem.peak = peaks[name]
        t = sorted(times[name])
        record(f"{name} (best of {rounds})", len(ref), len(q), t[0], mem, None,
               f"median {t[len(t) // 2]:.2f} s, rounds alternate between engines")
    for _, m in engines[1:]:
        m.close()


def embed_rows(mem, n_images: int):
    """FREQ embedding of n 1 x 32 x 32 images: local against Ray Data (2 CPU actors)."""
    from fingerprint_core import ray_engine, spaces

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n_images, 1, 32, 32), dtype=np.uint8)
    space = spaces.get("freq", device="cpu", batch_size=2048)
    mem.reset()
    local, t = timed(lambda: space.embed(images))
    record("embed FREQ, local", 0, n_images, t, mem, None, "images/s")
    mem.reset()
    remote, t = timed(lambda: ray_engine.ray_embed("freq", {}, images, 2048, concurrency=2))
    record("embed FREQ, Ray Data x2", 0, n_images, t, mem, None,
           "images/s, actor start included; " + ("same numbers" if torch.equal(local, remote) else "NUMBERS DIFFER"))


def approx_rows(ref, q, exact_idx, mem, nprobe_list, k, nlist=None, label=""):
    from fingerprint_core.approx import ApproxManifold, recall_at_1

    mem.reset()
    index, setup = timed(lambda: ApproxManifold(ref, index="ivf", nlist=nlist, nprobe=nprobe_list[0], k=k))
    for nprobe in nprobe_list:
        index.nprobe = nprobe
        mem.reset()
        (idx, _), t = timed(lambda: index.nearest(q))
        r = recall_at_1(idx, exact_idx)
        record(f"{label}approx IVF nprobe={nprobe} k={k}", len(ref), len(q), t, mem, setup,
               f"nlist {index.nlist}; recall@1 {r:.4f}")
        setup = None


def fashion_rows(mem, n_q):
    """The same comparison on real pixels (Fashion-MNIST, 60,000 x 1024 uint8), where the exact search
    runs on int8 codes: the case where an index saves least."""
    try:
        from fingerprint_core.datasets import load_fashion_mnist

        ref, _ = load_fashion_mnist("train")
        q, _ = load_fashion_mnist("test")
    except Exception as err:  # noqa: BLE001 - not on this machine
        print(f"  no Fashion-MNIST rows: {err}")
        return
    q = q[:n_q]
    m, exact = local_row("Fashion-MNIST exact", ref, q, mem, warm=False)
    approx_rows(ref, q, exact, mem, [8], k=16, nlist=128, label="Fashion-MNIST ")


def parse_count(text: str) -> int:
    t = text.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="at most 1M references and 500 queries (about 2 minutes)")
    ap.add_argument("--max-refs", type=parse_count, default=None, help="largest reference set (default 10M, --quick 1M)")
    ap.add_argument("--queries", type=int, default=None, help="queries per search (default 1000, --quick 500)")
    ap.add_argument("--engine-refs", type=parse_count, default=1_000_000, help="references for the engine rows (default 1M)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the engine rows (default 3)")
    ap.add_argument("--embed-images", type=int, default=20_000, help="images for the embedding rows (0: skip)")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the memory-mapped references (default: a temp dir)")
    args = ap.parse_args(argv)
    max_refs = args.max_refs or (1_000_000 if args.quick else 10_000_000)
    n_q = args.queries or (500 if args.quick else 1000)
    threads = torch.get_num_threads()
    print(f"CPU: {devices.cpu_name()}; {os.cpu_count()} logical CPU(s); torch threads {threads}; "
          f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    mem = PeakMemory()
    model = _model()
    q = _rows(n_q, np.random.default_rng(12345), model)
    use_ray = not args.no_ray
    if use_ray:
        from fingerprint_core import ray_engine

        if not ray_engine.available():
            print(f"  no Ray rows: {ray_engine.INSTALL_HINT}")
            use_ray = False
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        sizes = sorted({n for n in (100_000, 1_000_000, 10_000_000) if n <= max_refs} | {min(args.engine_refs, max_refs)})
        n_engine = min(args.engine_refs, max_refs)
        exact: dict[int, torch.Tensor] = {}
        kept: Manifold | None = None
        print(f"\n[1] growth: local exact search over N x {D} memory-mapped float32 references "
              f"({n_q:,} queries; a quarter of them past 1M)")
        for n in sizes:
            ref_n = references(n, folder, model)
            if ref_n is None:
                continue
            q_n = q if n <= 1_000_000 else q[: max(100, len(q) // 4)]  # keeps the default run within 10 minutes
            m, exact[n] = local_row("local exact", ref_n, q_n, mem, warm=n <= 1_000_000)
            if n == n_engine:
                kept = m
            del m, ref_n
        n_a = 1_000_000 if 1_000_000 in exact else max(exact, default=0)
        if n_a:
            print(f"\n[2] approximate index (faiss IVF, float64 re-rank) at {n_a:,} references; exact answers from [1]")
            approx_rows(np.load(folder / f"ref-{n_a}.npy", mmap_mode="r"), q, exact[n_a], mem, [8, 32], k=16)
            fashion_rows(mem, n_q)
        if kept is not None:
            print(f"\n[3] engines: the same search of {n_q:,} queries over {n_engine:,} references")
            if use_ray:
                ray_engine.connect(num_cpus=os.cpu_count() or 2, object_store_memory=1 << 30)
                ref = np.load(folder / f"ref-{n_engine}.npy", mmap_mode="r")
                engine_rows(kept, ref, q, exact[n_engine], mem, rounds=args.rounds)
                if args.embed_images:
                    embed_rows(mem, args.embed_images)
            else:
                warm_row("local engine", kept, q, mem)
            del kept
    mem.stop()
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"total {time.perf_counter() - t_start:.0f} s")
    if use_ray:
        ray_engine.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
