"""Seconds per training iteration of a plan's designs: `python -m fingerprint_core.zoo.timing PLAN`.

Prints wall and CPU (process) seconds per iteration per distinct design; on a machine that other
jobs share, CPU seconds at 1 thread are the steadier estimate of the wall time on an idle core.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from fingerprint_core.zoo import plan as plan_mod
from fingerprint_core.zoo import registry


def measure(row: dict, *, iterations: int = 8, warmup: int = 2, device: str = "cpu") -> dict[str, float]:
    """Wall and CPU seconds per training iteration of one plan row, on random images."""
    trainer = registry.build_trainer(row, device)
    if torch.device(device).type == "cpu":
        for m in trainer.modules.values():
            m.to(memory_format=torch.channels_last)  # as the build trains
    rng = torch.Generator(device=device).manual_seed(0)
    real = torch.rand(int(row["batch_size"]), 1, 32, 32, generator=rng, device=device) * 2 - 1
    for _ in range(warmup):
        trainer.step(real, rng)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        trainer.step(real, rng)
    return {"wall_s": (time.perf_counter() - wall) / iterations, "cpu_s": (time.process_time() - cpu) / iterations}


def main(argv: list[str] | None = None) -> None:
    """Print s/iter for each distinct design of a plan at the given thread count."""
    p = argparse.ArgumentParser(prog="python -m fingerprint_core.zoo.timing")
    p.add_argument("plan")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iterations", type=int, default=8)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    table = plan_mod.load(args.plan, coverage=False)
    keys = ["family", "upsampling", "loss", "normalization", "width", "batch_size"]
    rows = []
    for row in table.drop_duplicates(keys).to_dict("records"):
        rows.append({k: row[k] for k in keys} | measure(row, iterations=args.iterations))
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1, float_format=lambda v: f"{v:.3f}"), flush=True)


if __name__ == "__main__":
    main()
