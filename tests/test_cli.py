"""The `manifpt` command: exit codes, messages, and the console script itself."""

import os
import subprocess
import sys
from pathlib import Path

from fingerprint_core.cli import main
from gmdata import make_gm_dataset
from test_decode import png_with_size


def test_fingerprint_then_info(tmp_path, capsys):
    root = make_gm_dataset(tmp_path / "data", bad_file=False)
    (root / "models" / "toy_gan" / "huge.png").write_bytes(png_with_size(30000, 30000))
    assert main(["fingerprint", str(root), "-w", str(tmp_path / "ws"), "--device", "cpu", "--batch-size", "7"]) == 0
    out, err = capsys.readouterr()
    assert "computed 6 fingerprint(s)" in out
    assert "models/toy_gan/huge.png: image is 30000 x 30000" in err
    assert main(["fingerprint", str(root), "-w", str(tmp_path / "ws"), "-q"]) == 0
    assert "computed 0 fingerprint(s), reused 6" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "ws")]) == 0
    out = capsys.readouterr().out
    for text in ["toy_gan", "toy_vae", "real", "270 reference + 30 held out", "rgb, freq", "huge.png"]:
        assert text in out


def test_errors_are_one_clear_line_and_a_non_zero_exit(tmp_path, capsys):
    assert main(["fingerprint", str(tmp_path / "missing"), "-w", str(tmp_path / "ws")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and "Traceback" not in err
    assert main(["info", str(tmp_path)]) == 1
    assert "not a workspace" in capsys.readouterr().err
    root = make_gm_dataset(tmp_path / "data")
    assert main(["fingerprint", str(root), "-w", str(tmp_path / "ws2"), "--spaces", "rgb,clip"]) == 1
    assert "unknown space 'clip'" in capsys.readouterr().err


def test_the_console_script_is_installed(tmp_path):
    exe = Path(sys.executable).with_name("manifpt")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fingerprint_core.cli"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0 and "fingerprint" in out.stdout and "info" in out.stdout
    bad = subprocess.run(cmd + ["info", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "not a workspace" in bad.stderr
