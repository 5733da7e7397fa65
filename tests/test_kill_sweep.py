"""kill -9 at random moments of `manifpt fingerprint` (a first build and a rerun after a change),
`train` and `analyze`: every workspace stays readable, verifies, and a rerun finishes with the same
numbers as an uninterrupted run.

CI runs 5 moments; `MANIFPT_KILL_MOMENTS=30 pytest tests/test_kill_sweep.py` runs a longer sweep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fingerprint_core import check
from fingerprint_core.workspace import MANIFEST, MARK, Workspace
from gmdata import add_model, blob_images, make_gm_dataset

pytestmark = pytest.mark.slow
MOMENTS = int(os.environ.get("MANIFPT_KILL_MOMENTS", "5"))
STEPS = ("first", "change", "train", "analyze")


def manifpt(*argv) -> list[str]:
    return [sys.executable, "-m", "fingerprint_core.cli", *map(str, argv)]


def command(step: str, data: Path, ws: Path) -> list[str]:
    if step in ("first", "change"):
        return manifpt("fingerprint", data, "-w", ws, "--quiet", "--device", "cpu")
    if step == "train":
        return manifpt("train", ws, "--epochs", "2", "--quiet", "--device", "cpu")
    return manifpt("analyze", ws, "--quiet")


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def finish(argv: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return time.perf_counter() - t0


def numbers(ws_path: Path) -> dict:
    """What the user gets: every fingerprint array, the attributors' keys, the analysis metrics."""
    ws = Workspace.open(ws_path)
    out = {f"{m}/{s}/{part}": np.asarray(getattr(ws, part)(m, s)).tobytes()
           for m in ws.model_names(include_real=True) for s in ws.manifest["models"][m]["spaces"]
           for part in ("nearest", "distance", "artifacts")}
    out["attributors"] = {k: a["key"] for k, a in ws.manifest.get("attribution", {}).get("attributors", {}).items()}
    if ws.manifest.get("analysis"):
        out["analysis"] = (ws.path / ws.manifest["analysis"]["dir"] / "metrics.json").read_text()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data, each step's starting workspace, its uninterrupted result and its duration."""
    root = tmp_path_factory.mktemp("sweep")
    data = make_gm_dataset(root / "data", bad_file=False)
    states, results, seconds = {}, {}, {}
    ws = root / "ref"
    seconds["first"] = finish(command("first", data, ws))
    results["first"] = numbers(ws)
    states["change"] = root / "state-change"
    shutil.copytree(ws, states["change"])
    changed = root / "data-changed"
    shutil.copytree(data, changed)
    add_model(changed, "gan_new", ("gan", "pixel_shuffle", "hinge", "spectral"), blob_images(12, 16, 1, np.random.default_rng(3)))
    seconds["change"] = finish(command("change", changed, ws))
    results["change"] = numbers(ws)
    states["train"] = root / "state-train"
    shutil.copytree(ws, states["train"])
    seconds["train"] = finish(command("train", changed, ws))
    results["train"] = numbers(ws)
    states["analyze"] = root / "state-analyze"
    shutil.copytree(ws, states["analyze"])
    seconds["analyze"] = finish(command("analyze", changed, ws))
    results["analyze"] = numbers(ws)
    return {"data": data, "changed": changed, "states": states, "results": results, "seconds": seconds, "root": root}


@pytest.mark.parametrize("moment", range(MOMENTS))
def test_kill_9_at_a_random_moment_leaves_a_readable_workspace_that_a_rerun_completes(moment, reference):
    rng = np.random.default_rng(1000 + moment)
    step = STEPS[moment % len(STEPS)]
    data = reference["data"] if step == "first" else reference["changed"]
    ws = reference["root"] / f"kill-{moment}"
    if step != "first":
        shutil.copytree(reference["states"][step], ws)
    # anywhere from the interpreter's start to the end of the work (imports take most of the first second)
    at = float(rng.uniform(0.05, 1.0)) * reference["seconds"][step]
    proc = subprocess.Popen(command(step, data, ws), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(at)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # readable: a workspace that verifies, or (first build) a folder a rerun resumes
    if (ws / MANIFEST).is_file():
        Workspace.open(ws)
        found = check.check(ws)
        assert found.ok, (step, at, found.damages)
    else:
        assert step == "first" and (not ws.exists() or (ws / MARK).is_file() or not any(ws.iterdir())), (step, at)
    finish(command(step, data, ws))
    assert check.check(ws).ok
    got, want = numbers(ws), reference["results"][step]
    assert got.keys() == want.keys(), (step, at)
    for k in want:
        assert got[k] == want[k], (step, at, k)
    json.loads((ws / MANIFEST).read_text())
