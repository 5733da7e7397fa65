"""The space registry: a space of one's own goes through the CLI and every app page, by its SpaceInfo alone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_util import open_page
from fingerprint_core import spaces
from fingerprint_core.cli import main
from gmdata import make_gm_dataset

PLUGINS = Path(__file__).parent / "plugins"
PAGES = ["page_models.py", "page_map.py", "page_spectra.py", "page_design.py", "page_similarity.py",
         "page_attribute.py", "page_benchmark.py"]


@pytest.fixture
def plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("MANIFPT_PLUGINS", "pooled_space")
    yield "pool2"
    spaces.unregister("pool2")  # and forget the import, so the next test registers it anew
    spaces._PLUGINS_LOADED.discard("pooled_space")
    sys.modules.pop("pooled_space", None)


def test_register_get_info_names():
    assert spaces.names()[:4] == ("rgb", "freq", "sl", "ssl")
    assert spaces.fused_names() == ("rgb", "freq", "sl", "ssl")
    assert spaces.info("rgb").pixel_exact and spaces.info("freq").image_shaped and spaces.info("sl").learned
    with pytest.raises(ValueError, match="registered already"):
        spaces.register("rgb", spaces.RGBSpace, summary="again")
    with pytest.raises(ValueError, match="not 'fused'"):
        spaces.register("fused", spaces.RGBSpace, summary="a reserved name")
    with pytest.raises(ValueError, match="unknown space 'clip'.*MANIFPT_PLUGINS"):
        spaces.info("clip")


def test_a_plugin_space_runs_through_every_cli_command(plugin, tmp_path, capsys):
    root = make_gm_dataset(tmp_path / "data", channels=3, size=16, bad_file=False)
    ws = tmp_path / "ws" / "mine"
    assert main(["fingerprint", str(root), "-w", str(ws), "--spaces", f"rgb,{plugin}", "-q", "--device", "cpu"]) == 0
    config = json.loads((ws / "workspace.json").read_text())["config"]
    assert config["spaces"] == ["rgb", plugin] and config["preprocessing"][plugin]["pool"] == "2 x 2 average"
    art = np.load(next((ws / "models" / "toy_gan").glob(f"{plugin}-*")) / "artifacts.npy")
    assert art.shape == (24, 3 * 8 * 8)
    capsys.readouterr()
    assert main(["info", str(ws)]) == 0
    assert plugin in capsys.readouterr().out
    assert main(["analyze", str(ws), "--json", "--levels", "raw,model", "--device", "cpu", "-q"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert plugin in metrics["nmi"] and plugin in metrics["levels"]["raw"]["nmi"]
    assert main(["train", str(ws), "--spaces", plugin, "--epochs", "2", "--device", "cpu", "-q"]) == 0
    upload = tmp_path / "x.png"
    Image.open(root / "models" / "toy_vae" / "003.png").save(upload)
    capsys.readouterr()
    assert main(["attribute", str(ws), str(upload), "--json", "--device", "cpu"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert not answer["errors"] and plugin in answer["results"][0]["nearest_real"]
    assert main(["check", str(ws)]) == 0


def test_a_plugin_space_opens_on_every_page(plugin, tmp_path, monkeypatch):
    root = make_gm_dataset(tmp_path / "data", channels=3, size=16, bad_file=False)
    ws = tmp_path / "ws" / "mine"
    assert main(["fingerprint", str(root), "-w", str(ws), "--spaces", f"rgb,{plugin}", "-q", "--device", "cpu"]) == 0
    assert main(["analyze", str(ws), "--levels", "raw,model", "--device", "cpu", "-q"]) == 0
    for page in PAGES:
        at = open_page(monkeypatch, tmp_path / "ws", page, {"workspace": str(ws)})
        assert not at.exception and not at.error, (page, [e.value for e in at.error])


def test_a_workspace_built_with_a_missing_plugin_says_so(plugin, tmp_path, monkeypatch, capsys):
    root = make_gm_dataset(tmp_path / "data", size=16, bad_file=False)
    ws = tmp_path / "ws"
    assert main(["fingerprint", str(root), "-w", str(ws), "--spaces", f"rgb,{plugin}", "-q", "--device", "cpu"]) == 0
    assert main(["train", str(ws), "--spaces", plugin, "--epochs", "1", "--device", "cpu", "-q"]) == 0
    spaces.unregister(plugin)
    monkeypatch.delenv("MANIFPT_PLUGINS")
    upload = tmp_path / "x.png"
    Image.open(root / "models" / "toy_vae" / "003.png").save(upload)
    capsys.readouterr()
    assert main(["attribute", str(ws), str(upload), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "pool2" in err and "MANIFPT_PLUGINS" in err and "Traceback" not in err


def test_no_code_outside_the_registry_branches_on_a_space_name():
    """What a space is comes from its SpaceInfo: no comparison with a registered space's name outside
    spaces.py (data keyed by the paper's space names, such as its Table 5, is not a branch)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    names = set(spaces.names())
    found = []
    for path in sorted([*(root / "fingerprint_core").rglob("*.py"), *(root / "app").rglob("*.py")]):
        if path == root / "fingerprint_core" / "spaces.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            values = [e for s in sides for e in (s.elts if isinstance(s, (ast.Tuple, ast.List, ast.Set)) else [s])]
            if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)
