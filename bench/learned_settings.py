"""How much training the design-blind attributor gets: validation accuracy of its model head for a
grid of training rows per model x epochs, per space, on a fingerprinted workspace (the demo).

    python bench/learned_settings.py WS [--spaces rgb,freq,sl,ssl] [--rows 600,1400] [--epochs 8,16]

The criterion is design-blind on purpose: the model-identity accuracy on the validation split, never
a design score (the leave-one-design-out result must not choose its own features). LearnedSettings
keeps a CPU budget; its comment says what more training gave on the demo. Nothing is written to WS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workspace", type=Path)
    p.add_argument("--spaces", default="rgb,freq,sl,ssl")
    p.add_argument("--rows", default="600,1400", help="training rows per model (a seeded subset of the 70%% split)")
    p.add_argument("--epochs", default="8,16")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch

    from fingerprint_core.analysis import learned
    from fingerprint_core.devices import cpu_name
    from fingerprint_core.workspace import Workspace

    ws = Workspace.open(args.workspace)
    print(f"# CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
          f"threads; load average at start {os.getloadavg()[0]:.2f}")
    print("| space | rows per model | epochs | best val accuracy | best epoch | epochs run | seconds | load |")
    print("|---|---|---|---|---|---|---|---|")
    for space in [s.strip() for s in args.spaces.split(",") if s.strip()]:
        for rows in (int(v) for v in args.rows.split(",")):
            for epochs in (int(v) for v in args.epochs.split(",")):
                s = learned.LearnedSettings(epochs=epochs, train_per_model=rows)
                t0 = time.perf_counter()
                method, _ = learned.train_design_blind(ws, space, s, device=args.device)
                seconds = time.perf_counter() - t0
                val = [h["val_acc"]["model"] for h in method.history_]
                print(f"| {space} | {rows} | {epochs} | {max(val):.4f} | {method.best_epoch_} | {len(val)} | "
                      f"{seconds:.1f} | {os.getloadavg()[0]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
