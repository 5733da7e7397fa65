"""Shared fixtures: small GM datasets on disk and the workspaces fingerprinted from them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # lets tests import the app's pure modules (`from app import figures`)
    sys.path.insert(0, str(REPO))

from gmdata import make_gm_dataset  # noqa: E402  (after the sys.path line)


def fingerprinted_root(tmp_path_factory: pytest.TempPathFactory, *, channels: int, name: str) -> Path:
    """A workspace root holding one workspace, fingerprinted (rgb, freq) from a fresh toy dataset."""
    from fingerprint_core.pipeline import fingerprint

    data = make_gm_dataset(tmp_path_factory.mktemp(f"{name}-data"), channels=channels)
    root = tmp_path_factory.mktemp(f"{name}-workspaces")
    fingerprint(data, root / name, space_names=("rgb", "freq"), device="cpu")
    return root


@pytest.fixture(scope="session")
def gray_workspace_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder with one grayscale (1 x 16 x 16) workspace, `gm-gray`."""
    return fingerprinted_root(tmp_path_factory, channels=1, name="gm-gray")


@pytest.fixture(scope="session")
def rgb_workspace_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder with one colour (3 x 16 x 16) workspace, `gm-rgb`."""
    return fingerprinted_root(tmp_path_factory, channels=3, name="gm-rgb")


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The analysed demo, built once per test session (minutes) unless MANIFPT_DEMO_WORKSPACE names one."""
    import browser_util

    return browser_util.demo_workspace(tmp_path_factory)


@pytest.fixture
def one_thread():
    """Train tiny models on one thread: on a shared 2-core machine two threads made their steps up to 30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
