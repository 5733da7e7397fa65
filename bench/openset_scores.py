"""Which open-set score, and which set statistic? The benchmark's held-out-models protocol
(bench.Bench.openset: whole models held out, one group to calibrate, the next to test) for one ManiFPT
attributor, every score of openset.SCORES on the same folds; prints mean AUROC and the rates at the
95%-accept threshold. decision.UNKNOWN_SCORE is the best mean AUROC here (never chosen on the foreign set).

Sets of one source on the same folds: for every statistic of sets.STATISTICS, the three-step set
verdict fitted on the fold's known models (training and validation features), sets drawn from the
held-out test group's models against sets of the known models' test images (open_world.evaluate).
sets.STATISTIC is the best mean set AUROC at n = 20 here (the smaller index on a tie).

    python bench/openset_scores.py [--workspace WS] [--kind fused] [--train-per-model 400] [--max-epochs 6] [--threads 1] [--synthetic]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fingerprint_core import devices  # noqa: E402
from fingerprint_core.attribution import bench, openset, sets  # noqa: E402
from fingerprint_core.workspace import Workspace  # noqa: E402

REAL_FLOOR = 0.95  # the share of real images that must be called real (issue: at least 95%)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, default=None, help="default: the demo workspace (`manifpt demo`)")
    ap.add_argument("--kind", default="fused")
    ap.add_argument("--groups", type=int, default=bench.OPENSET_GROUPS)
    ap.add_argument("--train-per-model", type=int, default=400)
    ap.add_argument("--max-epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--synthetic", action="store_true",
                    help="train with synthetic unknowns (synthetic.py: random augmentation nets, outlier exposure)")
    ap.add_argument("--out", type=Path, default=None, help="resumable folds (default: <workspace>-openset-scores)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.workspace is None:
        from fingerprint_core import demo

        args.workspace = demo.default_workspace()
    ws = Workspace.open(args.workspace)
    out = args.out or args.workspace.parent / f"{args.workspace.name}-openset-scores"
    name = f"manifpt-{args.kind}"
    factories, skipped = bench.method_factories(ws, [name], max_epochs=args.max_epochs)
    if name in skipped:
        raise SystemExit(f"{name}: {skipped[name]}")
    settings = bench.Settings(seeds=(0,), openset_groups=args.groups, device="cpu", train_per_model=args.train_per_model,
                              max_epochs=args.max_epochs, synthetic=args.synthetic)
    t0 = time.perf_counter()
    b = bench.Bench(ws, out, factories, settings=settings)
    b._bar = b.progress.task("openset folds", len(b.openset_plan))
    b.computed = b.reused = 0
    result = b.openset(name, 0)
    seconds = time.perf_counter() - t0
    synth = "; synthetic unknowns (synthetic.py)" if args.synthetic else ""
    print(f"# {name} on {ws.path}: held-out-models protocol, {len(result['folds'])} folds; train {args.train_per_model} "
          f"per model, at most {args.max_epochs} epochs{synth}; {devices.cpu_name()}, {args.threads} thread(s), "
          f"load {os.getloadavg()[0]:.2f}, {seconds:.0f} s\n")
    print("| score | AUROC (mean ± std over folds) | TPR at 95% accept | FPR at 95% accept |\n|---|---|---|---|")
    best = max(openset.SCORES, key=lambda k: result[k]["auroc"])
    for k in openset.SCORES:
        r = result[k]
        mark = " (best)" if k == best else ""
        print(f"| {k}{mark} | {r['auroc']:.3f} ± {r['auroc_std']:.3f} | {r['tpr_accept']:.3f} | {r['fpr_accept']:.3f} |")
    print("\nper fold AUROC: " + "; ".join(", ".join(f"{k} {f[k]['auroc']:.3f}" for k in openset.SCORES)
                                          for f in result["folds"]))
    by_kind = result["sets"]
    statistics = [k for k in by_kind if k in sets.STATISTICS]
    chosen = max(statistics, key=lambda k: (by_kind[k]["20"]["auroc"], -statistics.index(k)))
    print(f"\nSets of one source ({b.settings.foreign_sets} seeded sets per source and size; held-out models' sets "
          "against known models' test sets; chance AUROC 0.5):\n")
    print("| set statistic | n | set AUROC (mean ± std over folds) | known sets: right model (mean, worst) "
          "| known sets called unknown | held-out sets called unknown |\n|---|---|---|---|---|---|")
    for kind in statistics:
        for n, r in by_kind[kind].items():
            mark = " (chosen)" if kind == chosen and n == "20" else ""
            print(f"| {kind}{mark} | {n} | {r['auroc']:.3f} ± {r['auroc_std']:.3f} | {r['right_model']:.3f}, "
                  f"{r['right_model_worst']:.2f} | {r['known_called_unknown']:.3f} | {r['foreign_called_unknown']:.3f} |")
    # the share of own validation sets a class rejects (sets.REJECT): the largest candidate whose known
    # test sets are called unknown at most REJECTS[0] of the time (the bound itself) at every size
    bound = sets.REJECTS[0]
    print(f"\nShare of own validation sets rejected, {sets.STATISTIC} (sets.REJECT: the largest whose known test sets "
          f"are called unknown at most {bound:g} of the time at every n):\n")
    print("| reject | n | known sets: right model (mean, worst) | known sets called unknown | held-out sets called unknown "
          "| set AUROC |\n|---|---|---|---|---|---|")
    label = {r: sets.reject_label(sets.STATISTIC, r) for r in sets.REJECTS}
    holds = [r for r in sets.REJECTS if label[r] in by_kind
             and all(v["known_called_unknown"] <= bound for v in by_kind[label[r]].values())]
    for r in sets.REJECTS:
        for n, v in by_kind.get(label[r], {}).items():
            mark = " (largest that holds)" if holds and r == max(holds) and n == "20" else ""
            print(f"| {r:g}{mark} | {n} | {v['right_model']:.3f}, {v['right_model_worst']:.2f} | "
                  f"{v['known_called_unknown']:.3f} | {v['foreign_called_unknown']:.3f} | {v['auroc']:.3f} |")
    # the share of real validation images kept (decision.REAL_KEEP): the smallest candidate whose real
    # test images are called real at least REAL_FLOOR of the time on every fold
    keeps = result["real_keep"]
    holding = [k for k, v in keeps.items() if v["real_kept_worst"] >= REAL_FLOOR]
    print(f"\nShare of real validation images kept (decision.REAL_KEEP: the smallest whose real test images are called "
          f"real at least {REAL_FLOOR:g} of the time on every fold), per image:\n")
    print("| real kept on validation | real test called real (mean, worst fold) | held-out models' images called real |"
          "\n|---|---|---|")
    for k, v in keeps.items():
        mark = " (smallest that holds)" if holding and float(k) == min(map(float, holding)) else ""
        print(f"| {k}{mark} | {v['real_kept']:.3f}, {v['real_kept_worst']:.3f} | {v['held_out_called_real']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
