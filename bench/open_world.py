"""Open-world attribution on a workspace (the demo by default): the three-step verdict (real, then
unknown, then the model; fingerprint_core/attribution/decision.py) per image and as sets of one source.

Measured on images no threshold saw:
  known      the test split of every known generated model (workspace artifacts, never trained on)
  real       the test split of the held-out real images
  foreign    assets/foreign/models/<m>/samples.npz: generators outside the zoo, projected through the
             workspace's spaces and exact manifold like any user's image (never used to train or calibrate)

Per image: shares of each verdict, the right model among known images, open-set AUROC (foreign vs known
generated test images, real excluded), p(real) AUROC (real vs foreign). Sets: --sets seeded sets per
source and size n (drawn from its images without replacement): share with the right verdict / model,
set AUROC foreign vs known on the set score min_c MMD^2_c / threshold_c(n) over generated classes.

    python bench/open_world.py [--workspace WS] [--foreign assets/foreign/models] [--sets 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fingerprint_core import devices  # noqa: E402
from fingerprint_core.attribution import open_world, predict  # noqa: E402
from fingerprint_core.attribution import split as split_mod  # noqa: E402
from fingerprint_core.workspace import Workspace  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=None, help="default: the demo workspace (`manifpt demo`)")
    ap.add_argument("--foreign", type=Path, default=ROOT / "assets" / "foreign" / "models")
    ap.add_argument("--sets", type=int, default=100, help="sets per source and size (default 100)")
    ap.add_argument("--sizes", default="5,20,50")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.workspace is None:
        from fingerprint_core import demo

        args.workspace = demo.default_workspace()
    t0 = time.perf_counter()
    ws = Workspace.open(args.workspace)
    a = predict.Attributor(ws, device="cpu")
    d = a.decision
    models = a.classes["model"]

    table = split_mod.workspace_split(ws, seed=int(ws.manifest["attribution"].get("split_seed", 0)))
    test = table[(table["part"] == "test") & table["model"].isin(models)].reset_index(drop=True)
    f, z = a.method.features_and_logits(split_mod.load_inputs(ws, test, a.method.needs))
    z = z["model"]
    names = test["model"].to_numpy().astype(str)
    is_real = names == split_mod.REAL
    gen = ~is_real

    foreign = open_world.load_foreign(args.foreign, a.shape) if args.foreign.is_dir() else {}
    projected = {}
    for m, x in foreign.items():
        _, _, ff, zz = a.forward(x)
        projected[m] = (ff, zz["model"])
    sizes = tuple(int(s) for s in args.sizes.split(","))
    figures = {"machine": devices.cpu_name(), "threads": args.threads,
               **open_world.evaluate(d, (f[gen], z[gen], names[gen]), (f[is_real], z[is_real]), projected,
                                     sizes=sizes, n_sets=args.sets)}
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    rows, set_rows = figures["per_image"], figures["sets"]

    print(f"# open world on {ws.path} ({a.kind} attributor; {figures['machine']}; {args.threads} thread(s); "
          f"load {os.getloadavg()[0]:.2f})\n")
    print("| source | n | real | unknown | known | right model |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['n']} | {r['real']:.3f} | {r['unknown']:.3f} | {r['known']:.3f} | "
              f"{r.get('right model', float('nan')):.3f} |")
    for k in ("foreign_auroc_open_set", "real_vs_foreign_auroc_p_real", "foreign_called_real", "real_called_real"):
        if k in figures:
            print(f"\n{k}: {figures[k]:.4f}")
    print("\n| n | sources | right verdict (mean) | min | called unknown (mean) | set AUROC foreign vs known |\n|---|---|---|---|---|---|")
    for n in sorted({r["n"] for r in set_rows}):
        for kind in ("known", "real", "foreign"):
            rs = [r for r in set_rows if r["n"] == n and r["kind"] == kind]
            if rs:
                au = figures.get("set_auroc", {}).get(n, float("nan")) if kind == "foreign" else float("nan")
                print(f"| {n} | {kind} ({len(rs)}) | {np.mean([r['right'] for r in rs]):.3f} | {min(r['right'] for r in rs):.3f} | "
                      f"{np.mean([r['unknown'] for r in rs]):.3f} | {au:.4f} |")
    print(f"\n{figures['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
