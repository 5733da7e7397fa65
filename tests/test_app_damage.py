"""Every page on a damaged workspace: a clear box naming the file and the reason, never a traceback
(one list of damages, shared with the CLI tests in test_safety.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_util import MAIN
from test_safety import DAMAGES

PAGES = ["page_models.py", "page_map.py", "page_spectra.py", "page_design.py", "page_similarity.py", "page_attribute.py",
         "page_benchmark.py"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A toy workspace with its analysis, copied for each damage."""
    from fingerprint_core.analysis.run import Settings, analyze
    from fingerprint_core.pipeline import fingerprint
    from fingerprint_core.workspace import Workspace
    from gmdata import make_gm_dataset

    data = make_gm_dataset(tmp_path_factory.mktemp("damage-data"), bad_file=False)
    ws = tmp_path_factory.mktemp("damage-ws") / "toy"
    fingerprint(data, ws, space_names=("rgb", "freq"), device="cpu")
    analyze(Workspace.open(ws), settings=Settings(bootstrap=20))
    return ws


def boxes(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_every_page_shows_a_clear_box_for_a_damaged_workspace(damage, pristine, tmp_path, monkeypatch):
    root = tmp_path / "root"
    ws = root / "toy"
    shutil.copytree(pristine, ws)
    bad = DAMAGES[damage](ws)
    monkeypatch.setenv("MANIFPT_WORKSPACE", str(root))
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    named_on = []
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (damage, page, [e.value for e in at.exception])
        shown = boxes(at)
        if any(bad.name in b for b in shown):
            named_on.append(page)
        for b in shown:  # a box about the workspace says which file and why, and how to repair it
            if "cannot be read" in b or "is missing" in b or "is damaged" in b:
                assert "manifpt check" in b, (damage, page, b)
    if bad.name == "workspace.json":
        assert named_on == PAGES, (damage, named_on)
    else:
        assert named_on, (damage, "no page named the damaged file")
