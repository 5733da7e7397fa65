"""The `manifpt` command: fingerprint a dataset into a workspace, and describe a workspace."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fingerprint_core import __version__


class TqdmProgress:
    """Progress bars on stderr for the pipeline."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._bar = None

    def task(self, desc: str, total: int) -> "TqdmProgress":
        from tqdm import tqdm

        child = TqdmProgress(self.quiet)
        child._bar = tqdm(total=total, desc=desc, unit="img", disable=self.quiet, leave=True, file=sys.stderr)
        return child

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def log(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr)


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    from fingerprint_core import pipeline

    names = [s.strip().lower() for s in args.spaces.split(",") if s.strip()]
    report = pipeline.fingerprint(
        args.data_root,
        args.workspace,
        space_names=names,
        device=args.device,
        batch_size=args.batch_size,
        holdout=args.holdout,
        seed=args.seed,
        progress=pipeline.Progress() if args.quiet else TqdmProgress(),
    )
    _print_report(report)
    return 0


def _print_report(report) -> None:
    """Warnings and skipped files on stderr, one summary line on stdout."""
    for w in dict.fromkeys(report.warnings):
        print(f"warning: {w}", file=sys.stderr)
    if report.bad_files:
        print(f"skipped {len(report.bad_files)} file(s):", file=sys.stderr)
        for b in report.bad_files:
            print(f"  {b.file}: {b.reason}", file=sys.stderr)
    print(
        f"workspace {report.workspace}: computed {len(report.computed)} fingerprint(s), "
        f"reused {len(report.reused)}, skipped {len(report.bad_files)} bad file(s)"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from fingerprint_core import demo, pipeline

    report = demo.build(args.workspace, device=args.device, progress=pipeline.Progress() if args.quiet else TqdmProgress())
    _print_report(report)
    print(report.workspace)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from fingerprint_core.workspace import Workspace

    ws = Workspace.open(args.workspace)
    m, cfg = ws.manifest, ws.config
    print(f"workspace   {ws.path}")
    print(f"schema      {m['schema_version']}   created {m.get('created')}   updated {m.get('updated')}")
    print(f"versions    {', '.join(f'{k} {v}' for k, v in m.get('versions', {}).items())}")
    print(f"data        {cfg.get('data_root')}   images {'x'.join(map(str, cfg.get('image_shape', [])))}")
    real = m.get("real", {})
    print(
        f"real        {real.get('n_reference', 0)} reference + {real.get('n_heldout', 0)} held out "
        f"(holdout {cfg.get('holdout_fraction')}, seed {cfg.get('split_seed')}, {cfg.get('real_origin')})"
    )
    print(f"spaces      {', '.join(ws.space_names())}\n")
    table = ws.summary()
    cols = ["model", "family", "samples", "skipped files", *[c for c in table.columns if c.startswith("mean d²")]]
    left = {c: (lambda v, w=int(table[c].str.len().max()): f"{v:<{w}}") for c in ("model", "family")} if len(table) else {}
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}", formatters=left))
    print("\n(mean d²: mean squared L2 distance to the nearest real image, per space)")
    bad = ws.bad_files()
    if len(bad):
        print(f"\nskipped files ({len(bad)}):")
        for r in bad.itertuples():
            print(f"  {r.model}: {r.file}: {r.reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="manifpt", description="Fingerprints of generative image models (ManiFPT).")
    p.add_argument("--version", action="version", version=f"manifpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fingerprint", help="compute artifacts and fingerprints of a GM dataset into a workspace")
    f.add_argument("data_root", type=Path, help="folder with real/, models/<name>/ and models.csv")
    f.add_argument("--workspace", "-w", type=Path, required=True, help="workspace folder (created if missing)")
    f.add_argument("--spaces", default="rgb,freq", help="comma-separated: rgb, freq, sl, ssl (default: rgb,freq)")
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when present")
    f.add_argument("--batch-size", type=int, default=4096, help="images per batch (default 4096)")
    f.add_argument("--holdout", type=float, default=0.1, help="share of real images held out (default 0.1)")
    f.add_argument("--seed", type=int, default=0, help="seed of the real split (default 0)")
    f.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    f.set_defaults(run=_cmd_fingerprint)

    d = sub.add_parser("demo", help="build the demo workspace (the shipped zoo against Fashion-MNIST) and print its path")
    d.add_argument("--workspace", "-w", type=Path, default=None, help="default: <workspace root>/demo in the user cache")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    d.set_defaults(run=_cmd_demo)

    i = sub.add_parser("info", help="describe a workspace")
    i.add_argument("workspace", type=Path)
    i.set_defaults(run=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `manifpt` command; returns the exit status."""
    from fingerprint_core.datasets import DatasetError
    from fingerprint_core.workspace import WorkspaceError

    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (DatasetError, WorkspaceError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished fingerprints are kept in the workspace", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
