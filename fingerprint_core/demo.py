"""The embedded demo: the shipped zoo (assets/demo) fingerprinted against Fashion-MNIST."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fingerprint_core import datasets, pipeline, spaces
from fingerprint_core.workspace import default_root, key_of

DEMO_ASSETS = spaces.ASSETS / "demo"
DEMO_SPACES = ("rgb", "freq", "sl", "ssl")


def default_workspace() -> Path:
    """The demo workspace: <workspace root>/demo (the root is $MANIFPT_WORKSPACE or the user cache)."""
    return default_root() / "demo"


def fashion_mnist_real() -> pipeline.RealSet:
    """Fashion-MNIST as the demo's real set: train (60,000) the reference, test (10,000) held out."""
    reference, _ = datasets.load_fashion_mnist("train")
    heldout, _ = datasets.load_fashion_mnist("test")
    digest = hashlib.sha256(reference.tobytes())
    digest.update(heldout.tobytes())
    return pipeline.fixed_real(reference, heldout, key=key_of("fashion-mnist", digest.hexdigest()), origin="fashion-mnist")


def available_spaces(names: tuple[str, ...] = DEMO_SPACES) -> tuple[list[str], list[str]]:
    """(spaces that can be built here, warnings for the learned ones whose weights are missing)."""
    ok, warnings = [], []
    for name in names:
        if spaces.info(name).learned and not spaces.default_weights(name).is_file():
            warnings.append(f"the {name.upper()} space is skipped: no encoder weights at {spaces.default_weights(name)}")
            continue
        ok.append(name)
    return ok, warnings


def build(
    workspace: str | os.PathLike | None = None,
    *,
    assets: str | os.PathLike | None = None,
    space_names: tuple[str, ...] = DEMO_SPACES,
    device: str = "auto",
    progress: pipeline.Progress | None = None,
) -> pipeline.Report:
    """Build (or bring up to date) the demo workspace; a re-run computes nothing."""
    assets = Path(assets) if assets is not None else DEMO_ASSETS
    if not (assets / "models.csv").is_file():
        raise datasets.DatasetError(
            f"no demo zoo in {assets} (models.csv is missing); it is built with `manifpt zoo build` and shipped in assets/demo"
        )
    names, warnings = available_spaces(space_names)
    report = pipeline.fingerprint(
        assets,
        workspace or default_workspace(),
        space_names=names,
        device=device,
        real=fashion_mnist_real(),
        progress=progress,
    )
    report.warnings[:0] = warnings
    shipped = assets / "attribution"
    if (shipped / "record.json").is_file():  # trained attributors shipped with the zoo: no training needed
        from fingerprint_core.attribution import ship
        from fingerprint_core.workspace import Workspace

        _, why = ship.install(Workspace.open(report.workspace), shipped)
        report.warnings.extend(why)
    shipped_learned = assets / "learned"
    if shipped_learned.is_dir():  # the design-blind attributors of the learned level: no training needed
        from fingerprint_core.analysis import learned
        from fingerprint_core.workspace import Workspace

        _, why = learned.install(Workspace.open(report.workspace), shipped_learned)
        report.warnings.extend(why)
    shipped_lodo = assets / "lodo_learned"
    if shipped_lodo.is_dir():  # the learned leave-one-design-out's folds (about 15 minutes of training)
        from fingerprint_core.analysis import learned
        from fingerprint_core.workspace import Workspace

        _, why = learned.install_lodo(Workspace.open(report.workspace), shipped_lodo)
        report.warnings.extend(why)
    return report
