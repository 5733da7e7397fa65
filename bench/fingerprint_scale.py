"""`manifpt fingerprint` at scale: time and peak anonymous memory per step, and an exactness check.

Writes (outside the timing, after checking free disk) a procedural 256 x 256 colour GM dataset: real
images are dead leaves (overlapping discs of random colours, radii with a 1/r^3 density, so the
spectrum falls off like a power law, plus mild noise); each of the models draws its own dead
leaves and leaves a trace of its own, seeded per model: a periodic tile (an upsampling-like
pattern of period 2, 4 or 8), a Gaussian blur and a colour shift and gain. Images are stored as
uncompressed .npz shards (the fastest format the dataset reader accepts).

Then, for each size, a fresh process runs `pipeline.fingerprint` (spaces rgb and freq, holdout 0.1)
on a dataset whose real set gives exactly that many references (hard links to the shards), while a
thread samples the anonymous memory of the process tree (RssAnon of the process and its children,
every 0.2 s; mapped file pages are not counted). It prints per step the time and the peak: reading
(and storing the images), embedding the reference set, preparing each space's search, searching and
writing the artifacts per space. Afterwards ~20 sampled artifacts per space are checked against a
float64 brute-force nearest neighbour.

    python bench/fingerprint_scale.py [--sizes 2500,5000,10000] [--models 10] [--samples 500]
                                      [--side 256] [--out /tmp/manifpt-fpscale] [--keep | --keep-data]

Goals on a 2-core CPU machine: no error, peak < 8 GB, 10,000 references in <= 20 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HOLDOUT = 0.1
SHARD = 500  # images per .npz file (about 100 MB at 256 x 256 x 3)
SPACES = ("rgb", "freq")
GB = 1e9


# ---- the dataset -------------------------------------------------------------------------------------------


def dead_leaves(n: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 N x H x W x 3 dead-leaves images: discs painted back to front, radii with density ~ r^-3."""
    scale = side / 256
    r_min, r_max = max(1.0, 4 * scale), max(2.0, 100 * scale)
    n_discs = max(20, int(400 * scale * scale))
    grid = np.arange(side, dtype=np.float32)
    out = np.empty((n, side, side, 3), np.uint8)
    for i in range(n):
        img = np.empty((side, side, 3), np.float32)
        img[:] = rng.uniform(0, 255, 3)
        u = rng.uniform(0, 1, n_discs)
        radii = r_min / np.sqrt(1 - u * (1 - (r_min / r_max) ** 2))  # inverse CDF of r^-3 on [r_min, r_max]
        cy = rng.uniform(-radii, side + radii)
        cx = rng.uniform(-radii, side + radii)
        colours = rng.uniform(0, 255, (n_discs, 3)).astype(np.float32)
        for r, y, x, c in zip(radii, cy, cx, colours, strict=True):
            y0, y1 = max(0, int(y - r)), min(side, int(y + r) + 1)
            x0, x1 = max(0, int(x - r)), min(side, int(x + r) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            mask = (grid[y0:y1, None] - y) ** 2 + (grid[None, x0:x1] - x) ** 2 <= r * r
            img[y0:y1, x0:x1][mask] = c
        img += 2.0 * rng.standard_normal(img.shape, dtype=np.float32)
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def model_trace(m: int, seed: int) -> dict:
    """A model's own trace: periodic tile, blur, colour shift and gain (seeded per model)."""
    rng = np.random.default_rng([seed, 1000 + m])
    period = int(rng.choice([2, 4, 8]))
    tile = rng.normal(0, 1, (period, period, 3)).astype(np.float32)
    tile = (tile - tile.mean()) / (tile.std() + 1e-6) * float(rng.uniform(2, 6))
    return {"period": period, "tile": tile, "sigma": float(rng.uniform(0.3, 1.2)),
            "shift": rng.uniform(-6, 6, 3).astype(np.float32), "gain": rng.uniform(0.97, 1.03, 3).astype(np.float32)}


def apply_trace(x: np.ndarray, trace: dict, rng: np.random.Generator) -> np.ndarray:
    """uint8 N x H x W x 3 images with the model's trace."""
    import torch

    sigma = trace["sigma"]
    radius = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, -1)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float().reshape(-1, 1, x.shape[1], x.shape[2])
    t = torch.nn.functional.pad(t, (radius, radius, radius, radius), mode="reflect")
    t = torch.nn.functional.conv2d(t, k.view(1, 1, 1, -1))
    t = torch.nn.functional.conv2d(t, k.view(1, 1, -1, 1))
    y = t.reshape(len(x), 3, x.shape[1], x.shape[2]).permute(0, 2, 3, 1).numpy()
    reps = (x.shape[1] // trace["period"] + 1, x.shape[2] // trace["period"] + 1, 1)
    y = y * trace["gain"] + trace["shift"] + np.tile(trace["tile"], reps)[: x.shape[1], : x.shape[2]]
    y += 1.5 * rng.standard_normal(y.shape, dtype=np.float32)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def real_count(refs: int, holdout: float = HOLDOUT) -> int:
    """The smallest real set whose seeded split (pipeline.split_real's rule) leaves `refs` references."""
    n = refs
    while n - max(1, int(round(n * holdout))) < refs:
        n += 1
    return n


def dataset_bytes(n_real: int, models: int, samples: int, side: int) -> int:
    return (n_real + models * samples) * 3 * side * side


def workspace_bytes(refs: int, models: int, samples: int, side: int) -> int:
    d = 3 * side * side
    n_real = real_count(refs)
    queries = models * samples + (n_real - refs)
    return n_real * d + models * samples * d + refs * d * 4 + len(SPACES) * queries * (d * 2 + 12)


MARK = ".manifpt-fpscale"  # in --out: the folder is this benchmark's, so its data/set-*/ws-* may be replaced


def claim(out: Path) -> None:
    """Make --out this benchmark's folder: a new or empty one, or one it marked before (never other files)."""
    out.mkdir(parents=True, exist_ok=True)
    mark = out / MARK
    if not mark.is_file() and any(out.iterdir()):
        raise SystemExit(f"{out} holds files this benchmark did not write; choose a new or empty --out")
    mark.write_text("written by bench/fingerprint_scale.py: its data/, set-*/ and ws-* folders are replaced on reruns\n")


def remove(path: Path) -> None:
    """Remove one of the benchmark's own folders inside a claimed --out (never through a link)."""
    if path.is_symlink():
        raise SystemExit(f"{path} is a symbolic link; this benchmark only removes folders it wrote")
    if path.exists():
        shutil.rmtree(path)


def write_dataset(out: Path, sizes: list[int], models: int, samples: int, side: int, seed: int) -> Path:
    """The full dataset under out/data (reused when its parameters match); returns it."""
    data = out / "data"
    params = {"sizes": sizes, "models": models, "samples": samples, "side": side, "seed": seed, "format": 1}
    stamp = data / "params.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        print(f"dataset: reusing {data}", flush=True)
        return data
    remove(data)
    (data / "real").mkdir(parents=True)
    t0 = time.perf_counter()
    bounds = sorted({real_count(s) for s in sizes})
    rng = np.random.default_rng([seed, 0])
    start = 0
    for bound in bounds:  # shards never straddle a subset's end, so each subset is a set of whole files
        while start < bound:
            n = min(SHARD, bound - start)
            np.savez(data / "real" / f"real-{start:06d}.npz", images=dead_leaves(n, side, rng))
            start += n
    print(f"dataset: {start} real images in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    families = ["transposed_conv", "nearest_conv", "bilinear_conv", "pixel_shuffle"]
    for m in range(models):
        name = f"m{m:02d}"
        trace = model_trace(m, seed)
        mrng = np.random.default_rng([seed, 1 + m])
        (data / "models" / name).mkdir(parents=True)
        for a in range(0, samples, SHARD):
            n = min(SHARD, samples - a)
            x = apply_trace(dead_leaves(n, side, mrng), trace, mrng)
            np.savez(data / "models" / name / f"samples-{a:06d}.npz", images=x)
        rows.append(f"{name},gan,{families[m % len(families)]},hinge,batch")
    (data / "models.csv").write_text("model,family,upsampling,loss,normalization\n" + "\n".join(rows) + "\n")
    stamp.write_text(json.dumps(params))
    print(f"dataset: {models} models x {samples} samples, {time.perf_counter() - t0:.0f} s in all", flush=True)
    return data


def subset(data: Path, out: Path, refs: int) -> Path:
    """A dataset root whose real set gives `refs` references: hard links to the shards and model files."""
    root = out / f"set-{refs}"
    remove(root)
    n_real = real_count(refs)
    (root / "real").mkdir(parents=True)
    for f in sorted((data / "real").glob("real-*.npz")):
        if int(f.stem.split("-")[1]) < n_real:
            _link(f, root / "real" / f.name)
    for folder in sorted((data / "models").iterdir()):
        (root / "models" / folder.name).mkdir(parents=True)
        for f in folder.iterdir():
            _link(f, root / "models" / folder.name / f.name)
    shutil.copy(data / "models.csv", root / "models.csv")
    return root


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


# ---- measuring -----------------------------------------------------------------------------------------


from proc_memory import tree_anon_bytes  # noqa: E402  (bench/ is on sys.path when run as a script)


class Sampler(threading.Thread):
    """(time, anonymous bytes of the process tree) every `every` seconds."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()

    def run(self) -> None:
        pid = os.getpid()
        while not self._halt.is_set():
            self.samples.append((time.monotonic(), tree_anon_bytes(pid)))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.samples.append((time.monotonic(), tree_anon_bytes(os.getpid())))


class Recorder:
    """A pipeline Progress that records when each step begins (its logs and tasks), printing them."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = [(time.monotonic(), "start")]

    def _mark(self, phase: str, text: str) -> None:
        self.events.append((time.monotonic(), phase))
        print(f"  {time.monotonic() - self.events[0][0]:8.1f} s  {text}", flush=True)

    def task(self, desc: str, total: int) -> Recorder._Task:
        if desc.startswith("embedding the reference set"):
            phase = f"embed {desc.split('(')[-1].rstrip(')')}"
        else:
            phase = f"search+artifacts {desc.split(' · ')[-1]}"
        self._mark(phase, f"{desc} ({total} images)")
        return Recorder._Task(self)

    def log(self, message: str) -> None:
        if message.startswith("reading"):
            self._mark("read", message)
        elif message.startswith("preparing the"):
            self._mark(f"prepare {message.split()[2]}", message)
        else:
            print(f"  {message}", flush=True)

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    class _Task:
        def __init__(self, rec: Recorder) -> None:
            self.rec = rec

        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            self.rec.events.append((time.monotonic(), "write/commit"))


def phases(events: list[tuple[float, str]], end: float, samples: list[tuple[float, int]]) -> dict[str, dict]:
    """Seconds and peak anonymous bytes per phase (a phase lasts until the next event)."""
    out: dict[str, dict] = {}
    bounds = [*events, (end, "end")]
    for (t0, name), (t1, _) in zip(bounds[:-1], bounds[1:], strict=True):
        p = out.setdefault(name, {"s": 0.0, "peak": 0})
        p["s"] += t1 - t0
        inside = [b for t, b in samples if t0 <= t < t1]
        p["peak"] = max([p["peak"], *inside])
    return out


# ---- the exactness check --------------------------------------------------------------------------------


def check_space(ws, space_name: str, n_checks: int, seed: int) -> dict:
    """Sampled artifacts: their nearest index against float64 brute force over the whole reference set."""
    from fingerprint_core import spaces

    space = spaces.get(space_name, device="cpu")
    ref = ws.space_reference(space_name)
    n_ref = len(ref)
    ref2 = ref.reshape(n_ref, -1)
    rng = np.random.default_rng(seed)
    models = ws.model_names(include_real=True)
    picks = [(m, int(rng.integers(ws.n_images(m)))) for m in rng.choice(models, n_checks)]
    imgs = np.stack([np.asarray(ws.images(m)[i]) for m, i in picks])
    pixel = ref.dtype == np.uint8
    # pixel codes: integer arithmetic in float64 is exact; embeddings: float64 of the float32 values
    q = imgs.reshape(len(imgs), -1).astype(np.float64) if pixel else space.embed(imgs).numpy().astype(np.float64)
    qn = np.einsum("ij,ij->i", q, q)
    score = np.empty((len(q), n_ref))
    step = max(1, (256 << 20) // (8 * ref2.shape[1]))
    for a in range(0, n_ref, step):
        r = np.asarray(ref2[a : a + step], dtype=np.float64)
        score[:, a : a + len(r)] = np.einsum("ij,ij->i", r, r)[None, :] - 2 * q @ r.T + qn[:, None]
    matched, worst_gap = 0, math.inf
    for j, (m, i) in enumerate(picks):
        if pixel:
            want = int(np.argmin(score[j]))  # exact integers: ties go to the lowest index
        else:  # the expanded form shortlists, the direct sum of squares decides
            band = 1e-9 * (qn[j] + score[j].max() + 1)
            cand = np.flatnonzero(score[j] <= score[j].min() + band)
            d = [float(np.sum((np.asarray(ref2[c], np.float64) - q[j]) ** 2)) for c in cand]
            want = int(cand[int(np.argmin(d))])
        got = int(ws.nearest(m, space_name)[i])
        matched += got == want
        second = np.partition(score[j], 1)[:2] if n_ref > 1 else np.array([0.0, math.inf])
        worst_gap = min(worst_gap, float(second[1] - second[0]))
        if got != want:
            print(f"    MISMATCH {space_name} {m}[{i}]: artifacts say {got}, float64 brute force {want}", flush=True)
    # the artifact rows: embedding minus the stored reference row, in float16
    m, i = picks[0]
    nn = int(ws.nearest(m, space_name)[i])
    r0 = ref2[nn].astype(np.float32) / 255 if pixel else np.asarray(ref2[nn], np.float32)
    e0 = imgs[0].reshape(-1).astype(np.float32) / 255 if pixel else q[0].astype(np.float32)
    art_ok = bool(np.array_equal(np.asarray(ws.artifacts(m, space_name)[i]), (e0 - r0).astype(np.float16)))
    return {"checked": len(picks), "matched": matched, "artifact_row_exact": art_ok, "closest_gap": worst_gap}


# ---- one size, in its own process -------------------------------------------------------------------------


def run_one(root: Path, ws_path: Path, result: Path, checks: int, seed: int) -> None:
    import torch

    from fingerprint_core import pipeline
    from fingerprint_core.workspace import Workspace

    sampler = Sampler()
    sampler.start()
    load0 = os.getloadavg()
    rec = Recorder()
    t0 = time.monotonic()
    pipeline.fingerprint(root, ws_path, space_names=SPACES, device="cpu", holdout=HOLDOUT, progress=rec)
    end = time.monotonic()
    sampler.stop()
    load1 = os.getloadavg()
    steps = phases(rec.events, end, sampler.samples)
    ws = Workspace.open(ws_path)
    t1 = time.perf_counter()
    check = {s: check_space(ws, s, checks, seed) for s in SPACES}
    doc = {"references": ws.manifest["real"]["n_reference"], "heldout": ws.manifest["real"]["n_heldout"],
           "total_s": end - t0, "peak": max(b for _, b in sampler.samples), "steps": steps, "check": check,
           "check_s": time.perf_counter() - t1, "load_before": load0, "load_after": load1,
           "torch_threads": torch.get_num_threads(), "working_set_mb": os.environ.get("MANIFPT_WORKING_SET_MB", "2048"),
           "events": rec.events, "end": end, "samples": sampler.samples}
    result.write_text(json.dumps(doc))


# ---- the driver -------------------------------------------------------------------------------------------


def fmt_step(steps: dict, name: str) -> str:
    p = steps.get(name)
    return f"{p['s']:7.1f} s {p['peak'] / GB:5.2f} GB" if p else "      -"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2500,5000,10000", help="reference-set sizes (comma-separated)")
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--samples", type=int, default=500, help="samples per model")
    ap.add_argument("--side", type=int, default=256, help="image side in pixels")
    ap.add_argument("--checks", type=int, default=20, help="sampled artifacts checked per space")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/manifpt-fpscale"))
    ap.add_argument("--keep", action="store_true", help="keep the dataset and the workspaces")
    ap.add_argument("--keep-data", action="store_true", help="keep the dataset (a rerun reuses it), not the workspaces")
    ap.add_argument("--_run", nargs=3, metavar=("ROOT", "WS", "RESULT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._run:
        run_one(Path(args._run[0]), Path(args._run[1]), Path(args._run[2]), args.checks, args.seed)
        return 0

    import torch

    from fingerprint_core import devices

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    out = args.out
    claim(out)
    need_data = dataset_bytes(real_count(max(sizes)), args.models, args.samples, args.side)
    ws_sizes = [workspace_bytes(s, args.models, args.samples, args.side) for s in sizes]
    need = need_data + (sum(ws_sizes) if args.keep else max(ws_sizes))
    free = shutil.disk_usage(out).free
    print(f"CPU: {devices.cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    print(f"disk: {free / GB:.1f} GB free under {out}, about {need / GB:.1f} GB needed "
          f"(data {need_data / GB:.1f} GB, largest workspace {max(ws_sizes) / GB:.1f} GB)", flush=True)
    if free < need * 1.1:
        print("not enough free disk; choose another --out, fewer --sizes or --side", file=sys.stderr)
        return 2
    data = write_dataset(out, sizes, args.models, args.samples, args.side, args.seed)

    results = []
    for refs in sizes:
        root = subset(data, out, refs)
        ws = out / f"ws-{refs}"
        remove(ws)
        result = out / f"result-{refs}.json"
        print(f"\n== {refs} references ({real_count(refs)} real images, {args.models} x {args.samples} samples, "
              f"{args.side} x {args.side} x 3) ==", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_run", str(root), str(ws), str(result),
               "--checks", str(args.checks), "--seed", str(args.seed)]
        done = subprocess.run(cmd, cwd=REPO)
        if done.returncode != 0:
            print(f"the run at {refs} references failed (exit {done.returncode})", file=sys.stderr)
            return 1
        doc = json.loads(result.read_text())
        results.append(doc)
        for s, c in doc["check"].items():
            print(f"  check {s}: {c['matched']}/{c['checked']} sampled nearest indices equal float64 brute force; "
                  f"artifact row exact: {c['artifact_row_exact']}; closest 1st-2nd gap {c['closest_gap']:.3g} "
                  f"({doc['check_s']:.0f} s)", flush=True)
        if not args.keep:
            remove(ws)
            remove(root)

    print(f"\nCPU {devices.cpu_name()}, torch threads {results[0]['torch_threads']}, working set "
          f"{results[0]['working_set_mb']} MB; time and peak anonymous memory (process tree) per step")
    names = ["read", "embed freq", "prepare rgb", "prepare freq", "search+artifacts rgb", "search+artifacts freq",
             "write/commit"]
    print("refs   | " + " | ".join(f"{n:>20}" for n in names) + " |   total  | peak    | load (1 min) | exact")
    for doc in results:
        ok = all(c["matched"] == c["checked"] and c["artifact_row_exact"] for c in doc["check"].values())
        print(f"{doc['references']:6d} | " + " | ".join(f"{fmt_step(doc['steps'], n):>20}" for n in names)
              + f" | {doc['total_s'] / 60:5.1f} min | {doc['peak'] / GB:4.2f} GB | "
              f"{doc['load_before'][0]:.1f} -> {doc['load_after'][0]:.1f} | {'yes' if ok else 'NO'}")
    if not (args.keep or args.keep_data):
        remove(data)
    bad = [d for d in results if d["peak"] >= 8 * GB]
    if bad:
        print(f"peak over 8 GB at {[d['references'] for d in bad]} references", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
