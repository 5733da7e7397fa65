"""Time `manifpt analyze` at all three levels on a fingerprinted workspace (the demo by default):
from scratch (the design-blind attributors trained here), and with the shipped learned attributors
installed (assets/demo/learned), printing each step's time, the CPU and the load.

    python bench/analyze_levels.py [WS] [--shipped assets/demo/learned] [--device cpu]

WS is copied (its fingerprints only) into a temporary folder, so it is never changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Steps:
    """A Progress sink that times each task."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []
        self._open: tuple[str, float] | None = None

    def task(self, desc: str, total: int) -> Steps:
        self._open = (desc, time.perf_counter())
        return self

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        if self._open:
            self.rows.append((self._open[0], time.perf_counter() - self._open[1]))
            self._open = None

    def log(self, message: str) -> None:
        pass


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def fingerprints_only(src: Path, dst: Path) -> None:
    """A copy of the workspace without its analysis, learned level and attributors."""
    from fingerprint_core.workspace import Workspace

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("analysis-*", "learned", "lodo", "attribution", ".jobs"))
    ws = Workspace.open(dst)
    with ws.writing():
        for key in ("analysis", "learned", "lodo_learned", "attribution"):
            ws.manifest.pop(key, None)
        ws.commit()


def run(ws_path: Path, device: str, shipped: Path | None) -> tuple[list[tuple[str, float]], float]:
    from fingerprint_core.analysis import learned
    from fingerprint_core.analysis.run import analyze
    from fingerprint_core.workspace import Workspace

    steps = Steps()
    t0 = time.perf_counter()
    if shipped is not None:
        t = time.perf_counter()
        installed, why = learned.install(Workspace.open(ws_path), shipped)
        steps.rows.append((f"install shipped learned attributors ({', '.join(installed) or 'none'})", time.perf_counter() - t))
        for w in why:
            print(f"warning: {w}", file=sys.stderr)
    analyze(Workspace.open(ws_path), progress=steps, device=device)
    return steps.rows, time.perf_counter() - t0


def main() -> int:
    from fingerprint_core.demo import default_workspace

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workspace", nargs="?", type=Path, default=None, help="default: the demo workspace")
    p.add_argument("--shipped", type=Path, default=REPO / "assets" / "demo" / "learned")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    src = args.workspace or default_workspace()
    import torch

    from fingerprint_core.devices import cpu_name

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"load average before: {load()}")
    print(f"workspace: {src}\n")
    variants = [("from scratch", None)] + ([("with shipped learned attributors", args.shipped)] if args.shipped.is_dir() else [])
    for name, shipped in variants:
        with tempfile.TemporaryDirectory(dir=src.parent) as tmp:
            ws = Path(tmp) / "ws"
            fingerprints_only(src, ws)
            rows, total = run(ws, args.device, shipped)
        print(f"| {name} | seconds |\n|---|---:|")
        for desc, sec in rows:
            print(f"| {desc} | {sec:.1f} |")
        print(f"| **total** | **{total:.1f}** ({total / 60:.1f} min) |\n")
    print(f"load average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
