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

    def task(self, desc: str, total: int) -> TqdmProgress:
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
    options = _space_options(args.weights, args.backbone, names)
    report = pipeline.fingerprint(
        args.data_root,
        args.workspace,
        space_names=names,
        device=args.device,
        batch_size=args.batch_size,
        holdout=args.holdout,
        seed=args.seed,
        progress=pipeline.Progress() if args.quiet else TqdmProgress(),
        space_options=options,
        engine=pipeline.Engine(args.engine, address=args.address, shards=args.shards, index=args.index),
    )
    _print_report(report)
    return 0


def _space_options(weights: list[str], backbones: list[str], names: list[str]) -> dict[str, dict]:
    """--weights SPACE=PATH and --backbone SPACE=NAME, per space (only learned spaces take them)."""
    from fingerprint_core import spaces

    options: dict[str, dict] = {}
    for flag, key, given in (("--weights", "weights", weights), ("--backbone", "backbone", backbones)):
        for item in given or []:
            space, sep, value = item.partition("=")
            space = space.strip().lower()
            if not sep or not value.strip():
                raise ValueError(f"{flag} {item!r}: expected SPACE=VALUE, e.g. {flag} sl=resnet50.pth")
            if space not in names:
                raise ValueError(f"{flag} {item!r}: the space {space!r} is not among --spaces {','.join(names)}")
            if not spaces.info(space).learned:
                raise ValueError(f"{flag} {item!r}: the {space} space has no weights (it is not learned)")
            options.setdefault(space, {})[key] = Path(value.strip()).expanduser() if key == "weights" else value.strip()
    return options


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


def _cmd_analyze(args: argparse.Namespace) -> int:
    import json

    from fingerprint_core.analysis import learned
    from fingerprint_core.analysis.run import analyze
    from fingerprint_core.workspace import Workspace

    progress = TqdmProgress(args.json or args.quiet)
    if args.job is not None:
        progress = args.job.wrapping(progress)
    wanted = [v.strip() for v in args.levels.split(",") if v.strip()]
    ws = Workspace.open(args.workspace)
    if args.lodo_learned:
        spaces = [s.strip() for s in args.lodo_spaces.split(",") if s.strip()]
        unknown = [s for s in spaces if s not in ws.space_names()]
        if unknown:
            raise ValueError(f"--lodo-spaces {','.join(unknown)}: the workspace has {', '.join(ws.space_names())}")
        for space in spaces:  # resumable: finished folds are kept
            learned.lodo(ws, space, device=args.device, progress=progress)
    metrics = analyze(ws, progress=progress, force=args.force, levels_wanted=wanted, device=args.device)
    if args.export_learned:
        done = learned.export(Workspace.open(args.workspace), args.export_learned)
        print(f"exported the learned attributors of {', '.join(done)} to {args.export_learned}", file=sys.stderr)
    if args.json:
        print(json.dumps({**{k: metrics[k] for k in ("nmi", "silhouette", "lomo")}, "levels": metrics.get("levels", {})},
                         indent=1))
        return 0
    for space in metrics["spaces"]:
        print(f"\n{space} (raw level): factor, NMI, silhouette, leave-one-design-out accuracy (chance)")
        for factor, nmi in metrics["nmi"][space].items():
            lomo = metrics["lomo"][space].get(factor, {})
            cells = [nmi, metrics["silhouette"][space].get(factor), lomo.get("accuracy"), lomo.get("chance")]
            a, b, c, d = (f"{v:.3f}" if v is not None else "-" for v in cells)
            print(f"  {factor:28} {a:>6} {b:>8} {c:>8} ({d})")
    if metrics.get("reading"):
        print("\nreading (Holm-corrected p < 0.01 against the design-permutation null):")
        for line in metrics["reading"]:
            print(f"  {line}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from fingerprint_core import check

    found = check.repair(args.workspace, device=args.device, progress=TqdmProgress(args.quiet)) if args.repair \
        else check.check(args.workspace)
    if found.ok:
        print(f"workspace {found.workspace}: {found.checked} entries and tables verified, nothing damaged")
        return 0
    print(f"workspace {found.workspace}: {len(found.damages)} damaged part(s)")
    for d in found.damages:
        print(f"  {d.what}: {d.reason}\n    recompute: {d.fix}")
    if not args.repair:
        print(f"run `manifpt check {found.workspace} --repair` to repair what can be repaired")
        return 1
    for line in found.repaired:
        print(f"repaired: {line}")
    after = check.check(args.workspace)
    if not after.ok:
        print("still to do: " + "; ".join(dict.fromkeys(d.fix for d in after.damages)))
        return 1
    todo = check.still_missing(args.workspace) + check.not_rebuilt(found)
    for command in dict.fromkeys(todo):
        print(f"still to do: {command}")
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
    left = {c: f"{{:<{int(table[c].str.len().max())}}}".format for c in ("model", "family")} if len(table) else {}
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}", formatters=left))
    print("\n(mean d²: mean squared L2 distance to the nearest real image, per space)")
    bad = ws.bad_files()
    if len(bad):
        print(f"\nskipped files ({len(bad)}):")
        for r in bad.itertuples():
            print(f"  {r.model}: {r.file}: {r.reason}")
    return 0


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    import os

    # Before torch loads OpenMP: spinning waits made 2 threads 3-4x slower than 1 on a machine shared
    # with other jobs; passive waits made them 2.2x faster than 1 (GAN step, measured here).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fingerprint_core import spaces
    from fingerprint_core.zoo import build

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    encoder = args.encoder or (spaces.default_weights("sl") if spaces.default_weights("sl").is_file() else None)
    try:
        report = build.build(args.plan, args.out, device=args.device, threads=args.threads, only=only,
                             checkpoint_every_s=args.checkpoint_minutes * 60, n_samples=args.samples,
                             coverage=not args.no_coverage, progress=not args.quiet, encoder=encoder)
    except KeyboardInterrupt:
        print("interrupted: finished models are kept; a re-run resumes from the last checkpoint", file=sys.stderr)
        return 130
    print(f"zoo {args.out}: finished {len(report.finished)}, skipped {len(report.skipped)} already finished, "
          f"stopped {len(report.stopped)}" + ("" if encoder else "; quality pending (no SL encoder)"))
    return 0


def _cmd_zoo_status(args: argparse.Namespace) -> int:
    from fingerprint_core.zoo import build

    table = build.status(args.out)
    fmt = {c: (lambda v: "-" if v != v else f"{v:.3f}") for c in ("precision", "recall")}
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}", na_rep="-", formatters=fmt))
    counts = table["state"].value_counts()
    print(f"\n{counts.get('finished', 0)} finished, {counts.get('training', 0)} training, "
          f"{counts.get('pending', 0)} pending of {len(table)}; plan estimate {table['est_minutes'].sum() / 60:.2f} h "
          f"(2 CPU threads), about {table['left_minutes'].sum() / 60:.2f} h left")
    return 0


def _cmd_zoo_evaluate(args: argparse.Namespace) -> int:
    from fingerprint_core.zoo import evaluate

    table = evaluate.evaluate(args.out, encoder=args.encoder, device=args.device)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    failing = table[~table["passes"].astype(bool)]
    if len(failing):
        print(f"{len(failing)} model(s) below precision 0.3 / recall 0.1: {', '.join(failing['model'])}", file=sys.stderr)
    return 0


def _add_zoo_commands(sub) -> None:
    """`manifpt zoo build | status | evaluate`."""
    z = sub.add_parser("zoo", help="train and inspect the demo zoo of generative models")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    b = zsub.add_parser("build", help="train the models of a plan (resumable: re-run after a stop)")
    b.add_argument("--plan", type=Path, required=True, help="plan csv (e.g. assets/zoo/plan.csv)")
    b.add_argument("--out", type=Path, required=True, help="output folder (models/, checkpoints/, build.log)")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when present")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    b.add_argument("--only", default=None, help="comma-separated model names to train (default: all)")
    b.add_argument("--checkpoint-minutes", type=float, default=3.0, help="minutes between checkpoints (default 3)")
    b.add_argument("--samples", type=int, default=2000, help="samples saved per model (default 2000)")
    b.add_argument("--encoder", type=Path, default=None,
                   help="SL encoder weights to measure quality as models finish (default: the SL space's, if present)")
    b.add_argument("--no-coverage", action="store_true", help="accept a plan that misses the demo's coverage rules")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    b.set_defaults(run=_cmd_zoo_build)
    s = zsub.add_parser("status", help="per model: finished / training / pending, time spent and left")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(run=_cmd_zoo_status)
    e = zsub.add_parser("evaluate", help="FID, precision, recall of the finished models in the SL space")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--encoder", type=Path, default=None, help="SL encoder weights (default: the SL space's)")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.set_defaults(run=_cmd_zoo_evaluate)


class _TrainingProgress(TqdmProgress):
    """Step bars (redrawn once a minute when stderr is a log file) and one line per epoch, even with --quiet."""

    def task(self, desc: str, total: int) -> _TrainingProgress:
        from tqdm import tqdm

        child = _TrainingProgress(self.quiet)
        child._bar = tqdm(total=total, desc=desc, unit="step", disable=self.quiet, leave=False, file=sys.stderr,
                          mininterval=0.1 if sys.stderr.isatty() else 60)
        return child

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def _parse_epochs(text: str | None, kinds: list[str]) -> dict[str, int]:
    """`--epochs 20` (every kind) or `--epochs sl=15,ssl=20`."""
    if not text:
        return {}
    try:
        if "=" not in text:
            return {k: int(text) for k in kinds}
        pairs = dict(item.split("=", 1) for item in text.split(",") if item.strip())
        return {k.strip().lower(): int(v) for k, v in pairs.items()}
    except ValueError:
        raise ValueError(f"--epochs {text!r}: expected a number or kind=number pairs, e.g. sl=15,ssl=20") from None


def _cmd_encoders_train(args: argparse.Namespace) -> int:
    import shlex

    import torch

    from fingerprint_core import encoder_training

    if (args.data_root is None) == (not args.fashion_mnist):
        raise ValueError("give either DATA_ROOT (a GM dataset with real/) or --fashion-mnist (the demo pair)")
    kinds = [k.strip().lower() for k in args.kind.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in encoder_training.KINDS]
    if unknown or not kinds:
        raise ValueError(f"--kind {args.kind!r}: choose from {', '.join(encoder_training.KINDS)}")
    epochs = _parse_epochs(args.epochs, kinds)
    if set(epochs) - set(encoder_training.KINDS) or min(epochs.values(), default=1) < 1:
        raise ValueError(f"--epochs {args.epochs!r}: epochs of sl and ssl, each at least 1 (e.g. sl=15,ssl=20)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out if args.out is not None else (None if args.fashion_mnist else args.data_root / "encoders")
    if out is None:
        raise ValueError("--fashion-mnist needs --out DIR (the demo's pair lives in assets/encoders)")
    # the card records the command that reproduces the run, every setting spelled out
    words = ["manifpt", "encoders", "train"] + (["--fashion-mnist"] if args.fashion_mnist else [str(args.data_root)])
    words += ["--out", str(out), "--kind", ",".join(kinds)]
    words += ["--epochs", ",".join(f"{k}={epochs.get(k, encoder_training.PRESETS[k].epochs)}" for k in kinds)]
    words += ["--seed", str(args.seed), "--device", args.device, "--threads", str(torch.get_num_threads())]
    common = dict(kinds=tuple(kinds), epochs=epochs, seed=args.seed, device=args.device, max_steps=args.max_steps,
                  overwrite=args.force, command=" ".join(shlex.quote(w) for w in words),
                  progress=_TrainingProgress(args.quiet))
    try:
        if args.fashion_mnist:
            done = encoder_training.train_fashion_mnist(out, **common)
        else:
            done = encoder_training.train_dataset(args.data_root, out, **common)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    for kind in kinds:
        print(f"{kind}: {done.get(kind) or 'not written (see the messages above)'}")
    if any(done.values()) and not args.fashion_mnist:
        print(f"use them: MANIFPT_ENCODERS={shlex.quote(str(out))} manifpt fingerprint {shlex.quote(str(args.data_root))} "
              f"--workspace WS --spaces {','.join(['rgb', 'freq'] + [k for k in kinds if done.get(k)])}")
    return 0


def _add_encoders_commands(sub) -> None:
    """`manifpt encoders train`: the SL / SSL encoders of a dataset, or the demo's on Fashion-MNIST."""
    enc = sub.add_parser("encoders", help="train the encoders of the learned spaces (SL, SSL)")
    esub = enc.add_subparsers(dest="encoders_command", required=True)
    t = esub.add_parser("train", help="train an SL / SSL pair on real images (resumable: rerun after a stop)")
    t.add_argument("data_root", type=Path, nargs="?", default=None,
                   help="GM dataset: trains on real/ (SL needs real/labels.csv with file,label)")
    t.add_argument("--fashion-mnist", action="store_true", help="train the demo pair on Fashion-MNIST instead")
    t.add_argument("--out", type=Path, default=None, help="output folder (default: DATA_ROOT/encoders)")
    t.add_argument("--kind", default="sl,ssl", help="comma-separated: sl, ssl (default: both)")
    t.add_argument("--epochs", default=None, help="epochs: N for every kind, or sl=N,ssl=M (default: sl=15,ssl=20)")
    t.add_argument("--seed", type=int, default=0, help="seed of weights, batches and augmentations (default 0)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when present")
    t.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (checkpointed); rerun to go on")
    t.add_argument("--force", action="store_true", help="retrain kinds whose weights already exist in --out")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bars (the per-epoch lines still print)")
    t.set_defaults(run=_cmd_encoders_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from fingerprint_core.attribution import train

    kinds = [k.strip().lower() for k in args.spaces.split(",") if k.strip()] if args.spaces else None
    if args.export:  # refuse a bad export folder before minutes of training, not after
        from fingerprint_core.attribution import ship

        ship.check_export_folder(args.export, args.workspace)

    def on_epoch(kind: str, row: dict) -> None:
        if args.job is not None:
            args.job.set(f"training the {kind} attributor (validation accuracy (model) {row['val_acc']['model']:.3f}), "
                         "epoch", row["epoch"], row["epochs"])  # of at most: early stopping may end it sooner
        if not args.quiet:
            print(f"{kind} epoch {row['epoch']}/{row['epochs']}: loss {row['train_loss']:.3f}, validation accuracy "
                  f"(model) {row['val_acc']['model']:.3f}, best epoch {row['best_epoch']}, {row['seconds']:.1f} s",
                  file=sys.stderr, flush=True)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)
        if args.job is not None:
            args.job.log(message)
            args.job.set(message, 0, 0)  # until the next epoch says more

    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        table = train.train(args.workspace, kinds=kinds, epochs=args.epochs, seed=args.seed, device=args.device,
                            force=args.force, robust=args.robust, robust_copies=args.robust_copies,
                            robust_p=args.robust_p, on_epoch=on_epoch, log=log)
    except KeyboardInterrupt:
        print("interrupted: attributors already finished are kept; rerun to train the rest", file=sys.stderr)
        return 130
    wide = table.pivot(index="head", columns="kind", values="test")
    wide = wide.reindex(index=[h for h in dict.fromkeys(table["head"])], columns=[k for k in dict.fromkeys(table["kind"])])
    print("test accuracy per head (rows) and attributor (columns)")
    print(wide.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"))
    if args.export:
        from fingerprint_core.attribution import ship
        from fingerprint_core.workspace import Workspace

        kinds = ship.export(Workspace.open(args.workspace), args.export)
        print(f"exported {', '.join(kinds)} to {args.export}")
    return 0


def _cmd_attribute(args: argparse.Namespace) -> int:
    import json

    from fingerprint_core.attribution import predict, uploads

    if args.top < 1:
        raise ValueError(f"--top {args.top}: must be at least 1")
    attributor = predict.attributor_for(args.workspace, device=args.device)
    for w in attributor.warnings:
        print(f"warning: {w}", file=sys.stderr)
    limits = uploads.Limits() if args.max_decoded_mb is None else uploads.Limits(max_decoded_bytes=int(args.max_decoded_mb * 2**20))
    report = attributor.attribute(uploads.read_paths(args.paths, limits=limits), top=args.top, as_set=args.as_set)
    if args.csv is not None:
        from fingerprint_core.attribution import report as report_mod
        from fingerprint_core.fsio import atomic_write

        atomic_write(args.csv, report_mod.to_csv(report).encode("utf-8"))
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        _print_attribution(report, attributor.kind)
    return 0 if report.results else 1


def _print_attribution(report, kind: str) -> None:
    """A readable table on stdout (one row per image); conversions and refused files on stderr."""
    if report.results:
        heads = list(report.results[0].design)
        rows = [["file", "verdict", "model (p)", *heads, "open-set score"]]
        for r in report.results:
            rows.append([r.file, r.verdict, f"{r.top[0]['model']} ({r.top[0]['p']:.2f})",
                         *[f"{r.design[h]['value']} ({r.design[h]['p']:.2f})" for h in heads], f"{r.open_set_score:.3g}"])
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        about = report.about
        print(f"\n({kind} attributor; in order: 'real' when the calibrated p(real) >= {about['real']['threshold']:.3g} "
              f"(keeps {about['real']['keeps']:.0%} of real validation images), else 'unknown' when the open-set score "
              f"({about['unknown']['score']}) is above {about['unknown']['threshold']:.3g} (accepts "
              f"{about['unknown']['accepts']:.0%} of known generated validation images), else the most probable model)")
    if report.set is not None:
        s = report.set
        said = s["model"] if s["verdict"] == "known" else s["verdict"]
        print(f"\nas one source ({s['n']} images, thresholds of sets of {s['size_calibrated']}): {said} (p {s['p']:.3f})")
        for factor, v in s["design"].items():
            print(f"  {factor}: {v['value']} (p {v['p']:.2f}{'; ' + v['reliability'] if 'reliability' in v else ''})")
        print("  by n: " + ", ".join(f"{b['n']}: {b['model'] or b['verdict']} ({b['p']:.2f})" for b in s["by_n"]))
    for r in report.results:
        if r.status != "ok":
            print(f"{r.file}: {r.status}", file=sys.stderr)
    if report.errors:
        print(f"not attributed ({len(report.errors)}):", file=sys.stderr)
        for file, reason in report.errors:
            print(f"  {file}: {reason}", file=sys.stderr)


def _add_attribution_commands(sub) -> None:
    """`manifpt train` and `manifpt attribute`."""
    t = sub.add_parser("train", help="train the workspace's attributors (one per space, plus fused) and store them in it")
    t.add_argument("workspace", type=Path)
    t.add_argument("--spaces", default=None,
                   help="comma-separated: rgb, freq, sl, ssl, fused (default: every space present, fused when all four are)")
    t.add_argument("--epochs", type=int, default=20, help="most epochs per attributor; early stopping may end sooner (default 20)")
    t.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default 0)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when present")
    t.add_argument("--force", action="store_true", help="retrain even when a stored attributor is up to date")
    t.add_argument("--robust", action="store_true",
                   help="also train on perturbed copies of the training and validation images (JPEG 50-100, resizing "
                        "0.5-1, noise, blur; artifacts re-projected through each space, cached in WS/robust)")
    t.add_argument("--robust-copies", type=int, default=1, help="perturbed copies of each image with --robust (default 1)")
    t.add_argument("--robust-p", type=float, default=None,
                   help="probability of each perturbation with --robust (default 0.5, as Wang et al. 2020)")
    t.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--quiet", "-q", action="store_true", help="no per-epoch lines")
    t.add_argument("--export", type=Path, default=None,
                   help="then copy the trained attributors to this folder, to ship with the dataset "
                        "(the demo's: assets/demo/attribution, installed by `manifpt demo`)")
    _add_progress_file(t)
    t.set_defaults(run=_cmd_train)
    a = sub.add_parser("attribute", help="which model made these images (files, folders, zip archives)?")
    a.add_argument("workspace", type=Path)
    a.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="an image, a folder or a zip archive")
    a.add_argument("--json", action="store_true",
                   help="print JSON (schema manifpt-attribute/2, docs/attribution.md): {schema, report, results, errors[, set]}")
    a.add_argument("--as-set", action="store_true",
                   help="the images come from one source: add the set's verdict (at least 5 images), from a two-sample "
                        "comparison of the set with each known model")
    a.add_argument("--csv", type=Path, default=None, metavar="FILE",
                   help="also write the report as CSV: one row per image (file, sha256, verdict, model, p...), "
                        "the set's verdict and the thresholds in header comments")
    a.add_argument("--top", type=int, default=3, help="most probable models listed per image (default 3)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when present")
    a.add_argument("--max-decoded-mb", type=float, default=None,
                   help="budget on the decoded pixels of all images together, in MiB (default: $MANIFPT_MAX_DECODED_MB "
                        "or 256, enough for 50 images of 1024 x 1024 x 3); images past it are refused by name")
    a.set_defaults(run=_cmd_attribute)


class _PartProgress(TqdmProgress):
    """The benchmark's bar, counted in parts (method x protocol x seed, or fold)."""

    def task(self, desc: str, total: int) -> _PartProgress:
        from tqdm import tqdm

        child = _PartProgress(self.quiet)
        child._bar = tqdm(total=total, desc=desc, unit="part", disable=self.quiet, leave=True, file=sys.stderr)
        return child


def _cmd_bench(args: argparse.Namespace) -> int:
    from fingerprint_core.attribution import bench, bench_report
    from fingerprint_core.workspace import Workspace

    try:
        seeds = tuple(int(v) for v in args.seeds.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if args.out is None:
        args.out = bench.default_out(args.workspace)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        results = bench.run(Workspace.open(args.workspace), args.out, methods=methods, seeds=seeds,
                            lodo_folds=bench.LODO_FOLDS if args.lodo_folds is None else args.lodo_folds,
                            openset_groups=bench.OPENSET_GROUPS if args.openset_groups is None else args.openset_groups,
                            device=args.device, train_per_model=args.train_per_model, max_epochs=args.max_epochs,
                            robust=args.robust, robust_copies=args.robust_copies,
                            **({} if args.robust_p is None else {"robust_p": args.robust_p}),
                            foreign=args.foreign, foreign_sets=args.foreign_sets, progress=_PartProgress(args.quiet))
    except KeyboardInterrupt:
        print(f"interrupted: finished parts are kept in {args.out}; rerun the same command to resume", file=sys.stderr)
        return 130
    for name, why in {**results["skipped_methods"], **results["skipped_protocols"]}.items():
        print(f"warning: {name} not run: {why}", file=sys.stderr)
    print(bench_report.markdown(results["summary"]), end="")
    b = results["budget"]  # on stderr: stdout is the table, the same on a rerun
    print(f"CPU budget: {b['threads']} torch thread(s) on {b['cpu']}; this run {b['run_seconds']:.0f} s "
          f"({b['computed_parts']} parts computed, {b['reused_parts']} reused); seconds per method as computed: "
          + ", ".join(f"{m} {v:.0f}" for m, v in b["method_seconds"].items()), file=sys.stderr)
    print(f"\nsplit seed {bench.SPLIT_SEED} (fixed), training seeds {args.seeds}; notes and every number: "
          f"{args.out / 'results.md'}, results.json, results.csv")
    return 0


def _add_bench_command(sub) -> None:
    """`manifpt bench`: every attribution method under every protocol, on one split."""
    # defaults are bench.SEEDS, LODO_FOLDS, OPENSET_GROUPS (not imported here: torch would load for --help)
    b = sub.add_parser("bench", help="benchmark ManiFPT against the baselines on a workspace (resumable)")
    b.add_argument("workspace", type=Path)
    b.add_argument("--out", type=Path, default=None,
                   help="output folder: finished parts, models, results.{json,csv,md} (default: WS-bench beside the "
                        "workspace, where the Benchmark page looks first; never inside it)")
    b.add_argument("--seeds", default="0,1,2", help="training seeds (the split stays at seed 0; default 0,1,2)")
    b.add_argument("--methods", default=None,
                   help="comma-separated method names, or 'baselines' / 'manifpt' (default: every method the workspace allows)")
    b.add_argument("--lodo-folds", type=int, default=None,
                   help="held-out designs in the leave-one-design-out protocol, a seeded choice; 0 = all (default 6)")
    b.add_argument("--openset-groups", type=int, default=None,
                   help="groups of models for the open-set protocol, one fold each (default 5)")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when present")
    b.add_argument("--train-per-model", type=int, default=0,
                   help="train on a seeded subset of this many training samples per model, the same for every "
                        "method (a CPU budget; default 0 = the whole 70%%)")
    b.add_argument("--max-epochs", type=int, default=0,
                   help="cap the epochs of every epoch-trained method alike (default 0 = each method's default)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    b.add_argument("--robust", action="store_true",
                   help="train every method on clean + perturbed copies of its training and validation images (the "
                        "recipe of `manifpt train --robust`; ManiFPT on re-projected artifacts, cached in the workspace)")
    b.add_argument("--robust-copies", type=int, default=1, help="perturbed copies per image with --robust (default 1)")
    b.add_argument("--robust-p", type=float, default=None, help="probability of each perturbation with --robust (default 0.5)")
    b.add_argument("--foreign", type=Path, default=None,
                   help="a foreign set: a folder of <model>/samples.npz from generators outside the workspace (the "
                        "demo's: assets/foreign/models), only measured on (protocol g: per-image and set-level open world)")
    b.add_argument("--foreign-sets", type=int, default=100, help="seeded sets per source and size in protocol g (default 100)")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-part lines")
    b.set_defaults(run=_cmd_bench)


def _add_progress_file(p: argparse.ArgumentParser) -> None:
    """`--progress-file PATH`: the run as a job the app follows (fingerprint_core.jobs)."""
    p.add_argument("--progress-file", type=Path, default=None, metavar="PATH",
                   help="also write progress and, at the end, the exit status and any error to this JSON file "
                        "(atomically, a few times a second): how the app follows a job it started")


def _job_of(args: argparse.Namespace):
    """The job's progress sink when the run has --progress-file, else None (SIGTERM then ends it as a recorded
    failure)."""
    args.job = None
    if getattr(args, "progress_file", None) is not None:
        import contextlib
        import signal

        from fingerprint_core.jobs import JobProgress

        with contextlib.suppress(ValueError):  # only the main thread may set a handler
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        args.job = JobProgress(args.progress_file)
    return args.job


def _job_end(job, code: int, why: str | None) -> None:
    """Record a job's end in its progress file (a run without --progress-file has no job)."""
    if job is not None:
        job.finish(code, why)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="manifpt", description="Fingerprints of generative image models (ManiFPT).")
    p.add_argument("--version", action="version", version=f"manifpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fingerprint", help="compute artifacts and fingerprints of a GM dataset into a workspace")
    f.add_argument("data_root", type=Path, help="folder with real/, models/<name>/ and models.csv")
    f.add_argument("--workspace", "-w", type=Path, required=True, help="workspace folder (created if missing)")
    f.add_argument("--spaces", default="rgb,freq",
                   help="comma-separated registered spaces: rgb, freq, sl, ssl and any from $MANIFPT_PLUGINS (default: rgb,freq)")
    f.add_argument("--weights", action="append", default=[], metavar="SPACE=PATH",
                   help="weights of a learned space: a small encoder (.safetensors from `manifpt encoders train`) or "
                        "a standard backbone's official file (torchvision ResNet-50, Barlow Twins ResNet-50, DINOv2 "
                        "ViT-S/14; .safetensors or .pth). Repeatable. Default: $MANIFPT_ENCODERS/<space>.safetensors")
    f.add_argument("--backbone", action="append", default=[], metavar="SPACE=NAME",
                   help="the network of a --weights file: small, resnet50 or vit_s14 (default: told by its keys)")
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when present")
    f.add_argument("--engine", default="local", choices=["local", "ray", "approximate"],
                   help="local (default); ray: reference shards held by Ray actors, embedding by Ray Data (same "
                        "numbers; `MANIFPT_EXTRAS=ray bash scripts/setup.sh`); approximate: a faiss index re-ranked "
                        "exactly, its recall@1 measured and recorded in the workspace config (not exact)")
    f.add_argument("--address", default=None, help="--engine ray: the cluster to join (default: start a local instance)")
    f.add_argument("--shards", type=int, default=None, help="--engine ray: reference shards, one actor each (default 2)")
    f.add_argument("--index", default="ivf", choices=["ivf", "hnsw"], help="--engine approximate: the faiss index")
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

    a = sub.add_parser("analyze", help="fingerprint map, spectra and design-choice metrics of a workspace (cached in it)")
    a.add_argument("workspace", type=Path)
    a.add_argument("--json", action="store_true",
                   help="print the metrics as JSON: nmi, silhouette, lomo (the raw level) and levels {raw, learned, model}")
    a.add_argument("--force", action="store_true", help="recompute even when the cache is up to date")
    a.add_argument("--levels", default="raw,learned,model",
                   help="fingerprint levels to analyse (default raw,learned,model; learned and model train the "
                        "design-blind attributors first when the workspace has none)")
    a.add_argument("--lodo-learned", action="store_true",
                   help="first run (or resume) the learned level's leave-one-design-out: the design-blind attributor "
                        "retrained without each design in turn (minutes per design on a CPU)")
    a.add_argument("--lodo-spaces", default="rgb", help="spaces of --lodo-learned (default rgb)")
    a.add_argument("--export-learned", type=Path, default=None, metavar="DIR",
                   help="copy the design-blind attributors into DIR to ship them with a dataset (the demo's are in "
                        "assets/demo/learned; `manifpt demo` installs them when the artifacts match)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when present")
    a.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    _add_progress_file(a)
    a.set_defaults(run=_cmd_analyze)

    c = sub.add_parser("check", help="verify every entry of a workspace; say what is damaged and how to recompute it")
    c.add_argument("workspace", type=Path)
    c.add_argument("--repair", action="store_true",
                   help="set a damaged manifest aside, drop damaged entries, recompute the fingerprints "
                        "from the recorded data; print the commands for the rest (train, analyze)")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    c.set_defaults(run=_cmd_check)

    i = sub.add_parser("info", help="describe a workspace")
    i.add_argument("workspace", type=Path)
    i.set_defaults(run=_cmd_info)

    _add_zoo_commands(sub)
    _add_encoders_commands(sub)
    _add_attribution_commands(sub)
    _add_bench_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `manifpt` command; returns the exit status."""
    import os

    # Before torch loads OpenMP: on a machine shared with other jobs, spinning OpenMP waits made two
    # threads 3-4x slower than one; passive waits made them 2.2x faster (measured here).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fingerprint_core.datasets import DatasetError
    from fingerprint_core.workspace import WorkspaceError

    args = build_parser().parse_args(argv)
    job = None
    try:
        # inside the try: the first progress write (which tells a waiting app or test that the
        # job runs) may be followed by a SIGTERM before _job_of returns
        job = _job_of(args)
        code = args.run(args)
        _job_end(job, code, None)
        return code
    except (DatasetError, WorkspaceError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        _job_end(job, 1, str(e))
        return 1
    except KeyboardInterrupt:
        print("interrupted: every finished entry is kept in the workspace; run the same command again to resume",
              file=sys.stderr)
        _job_end(job, 130, "interrupted (what it finished is kept in the workspace)")
        return 130
    except SystemExit as e:  # SIGTERM in a job (see _job_of)
        job = job if job is not None else getattr(args, "job", None)  # a SIGTERM as _job_of returned
        code = e.code if isinstance(e.code, int) else 1
        _job_end(job, code, "stopped (SIGTERM); what it finished is kept in the workspace" if code == 128 + 15
                 else f"exited with status {code}")
        raise
    except BaseException as e:
        _job_end(job, 1, f"{type(e).__name__}: {e} (an unexpected error: the traceback is in the job's log)")
        raise


if __name__ == "__main__":
    sys.exit(main())
