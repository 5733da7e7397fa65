"""Helpers of the AppTest page tests: the app on one page, and the plotly figures it drew."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"


def open_page(monkeypatch, root: Path, page: str, state: dict | None = None) -> AppTest:
    """The app on one page, run against a workspace root; state is put in session_state before that run."""
    monkeypatch.setenv("MANIFPT_WORKSPACE", str(root))
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    for k, v in (state or {}).items():
        at.session_state[k] = v
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    """Every plotly figure on the page, as plotly JSON."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def decode(v) -> np.ndarray:
    """A plotly JSON array (a list, or a base64 typed array) as numpy."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        return a.reshape([int(d) for d in str(shape).split(",")]) if shape is not None else a
    return np.asarray(v)
