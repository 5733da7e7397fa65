"""Attribution latency: 1 image and a batch of images through `manifpt attribute`'s path, warm,
against the obvious alternative that rebuilds everything per call.

The images are PNG bytes of samples from the workspace (decode, conversion, embedding in every
space the attributor reads, exact nearest real image per space, artifact, attributor, open-set rule
are all timed). "cached": `predict.attribute_uploads`, whose attributor, encoders and manifolds are
built once per workspace; "naive": a fresh `predict.Attributor` per call (loads the weights and
encoders, builds every Manifold and its compute-ready chunks again). Median of --runs.

    python bench/attribute_latency.py [WORKSPACE] [--batch 500] [--runs 3] [--device cpu]

WORKSPACE defaults to the demo workspace (`manifpt demo`); it needs a trained attributor
(`manifpt train WORKSPACE`). Goals: 1 image <= 1 s, 500 images <= 30 s warm, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from functools import partial

import numpy as np
import torch
from PIL import Image

from fingerprint_core import demo
from fingerprint_core.attribution import predict, uploads
from fingerprint_core.workspace import Workspace


def sample_pngs(ws: Workspace, n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """n samples of the workspace's models (and real images), as in-memory PNG files."""
    rng = np.random.default_rng(seed)
    models = ws.model_names(include_real=True)
    out = []
    for i in range(n):
        model = models[i % len(models)]
        images = ws.images(model)
        x = np.asarray(images[rng.integers(len(images))]).transpose(1, 2, 0)  # (H, W, C)
        buffer = io.BytesIO()
        Image.fromarray(x[..., 0] if x.shape[2] == 1 else x).save(buffer, "PNG")
        out.append((f"{model}-{i}.png", buffer.getvalue()))
    return out


def timed(fn, runs: int) -> float:
    """Median wall seconds of fn() over runs."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workspace", nargs="?", default=None, help="default: the demo workspace")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    path = args.workspace or demo.default_workspace()
    ws = Workspace.open(path)
    items = sample_pngs(ws, args.batch)

    t = time.perf_counter()
    attributor = predict.attributor_for(path, device=args.device)
    predict.attribute_uploads(path, items[:1], device=args.device)  # first search prepares the chunks
    cold = time.perf_counter() - t
    predict.attribute_uploads(path, items, device=args.device)  # warm-up at batch size

    def cached(batch):
        report = predict.attribute_uploads(path, batch, device=args.device)
        assert len(report.results) == len(batch), report.errors

    def naive(batch):
        a = predict.Attributor(path, device=args.device)
        a.attribute(uploads.read_uploads(batch))

    rows = []
    for label, batch in (("1 image", items[:1]), (f"{args.batch} images", items)):
        warm = timed(partial(cached, batch), args.runs)
        slow = timed(partial(naive, batch), args.runs)
        rows.append((label, warm, slow, len(batch)))

    print(f"workspace {ws.path}: {attributor.kind} attributor over {', '.join(attributor.spaces)}; "
          f"{ws.manifest['real']['n_reference']} reference images {' x '.join(map(str, attributor.shape))}; "
          f"device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"first call (loads the attributor, encoders, manifolds): {cold:.2f} s\n")
    print(f"{'':<12} {'cached (warm)':>14} {'naive (rebuild per call)':>26} {'cached per image':>18}")
    for label, warm, slow, n in rows:
        print(f"{label:<12} {warm:>12.3f} s {slow:>24.3f} s {1000 * warm / n:>15.1f} ms")
    print("\ngoals: 1 image <= 1 s, 500 images <= 30 s (warm)")


if __name__ == "__main__":
    main()
