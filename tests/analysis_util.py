"""A small analysed workspace, shared by the app and browser tests of the structure explorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gmdata import add_model, make_gm_dataset, model_images

NAME = "gm-analysed"
# Two more designs than the toy dataset, so that leaving one design out leaves two levels to learn from.
EXTRA_MODELS = {
    "toy_gan_b": (("gan", "bilinear_conv", "hinge", "batch"), "toy_vae"),  # design, look of its samples
    "toy_vae_b": (("vae", "transposed_conv", "elbo", "group"), "toy_gan"),
}
_BUILT: dict[str, Path] = {}  # one build per test session, whichever module asks first


def analysed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder with one colour workspace (4 toy models + real, rgb and freq) on which analyze() has run."""
    if NAME in _BUILT:
        return _BUILT[NAME]
    from fingerprint_core.analysis.run import Settings, analyze
    from fingerprint_core.pipeline import fingerprint
    from fingerprint_core.workspace import Workspace

    data = make_gm_dataset(tmp_path_factory.mktemp("analysed-data"), channels=3)
    rng = np.random.default_rng(7)
    for name, (design, look) in EXTRA_MODELS.items():
        add_model(data, name, design, model_images(look, 24, 16, 3, rng))
    root = tmp_path_factory.mktemp("analysed-workspaces")
    fingerprint(data, root / NAME, space_names=("rgb", "freq"), device="cpu")
    # few restarts and bootstrap draws: the numbers only need to exist, and the machine is small
    analyze(Workspace.open(root / NAME), settings=Settings(kmeans_restarts=2, bootstrap=20))
    _BUILT[NAME] = root
    return root
