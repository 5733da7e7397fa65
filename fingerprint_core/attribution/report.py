"""The attribution report a forensic user can file, as CSV: one row per image (its SHA-256, verdict,
model and probabilities), preceded by '#' lines that say which attributor answered, with which
thresholds and the error rates they were set for, the tool version and the set's verdict.
The table starts after the '#' lines (pandas reads it with skiprows = their count); the JSON
(predict.Report.to_json) holds the same content."""

from __future__ import annotations

import io
import json

import pandas as pd

COLUMNS = ("file", "sha256", "status", "verdict", "model", "top_model", "top_p", "p_real", "open_set_score")


def rows(report) -> pd.DataFrame:
    """One row per attributed image, and one per refused file (verdict "error", the reason as status)."""
    out = []
    for r in report.results:
        row = {"file": r.file, "sha256": r.sha256, "status": r.status, "verdict": r.verdict, "model": r.model or "",
               "top_model": r.top[0]["model"], "top_p": r.top[0]["p"], "p_real": r.p_real, "open_set_score": r.open_set_score}
        row.update({f"{h}": v["value"] for h, v in r.design.items()})
        row.update({f"{h}_p": v["p"] for h, v in r.design.items()})
        out.append(row)
    out += [{"file": f, "status": reason, "verdict": "error"} for f, reason in report.errors]
    return pd.DataFrame(out, columns=list(dict.fromkeys([*COLUMNS, *(k for r in out for k in r)])))


def header(report) -> list[str]:
    """The '#' lines: schema, tool, attributor, thresholds with what they were set for, the set verdict."""
    from fingerprint_core.attribution.predict import SCHEMA

    a = report.about
    lines = [f"schema: {SCHEMA}"]
    if a:
        lines += [f"tool: {a['tool']} {a['version']}", f"workspace: {a['workspace']}",
                  f"attributor: {a['attributor']['kind']} key {a['attributor']['key']}",
                  f"real: p(real) >= {a['real']['threshold']:.6g}, set to keep {a['real']['keeps']:.0%} of real validation images "
                  f"(validation: real kept {a['real']['validation']['real_kept']:.3f}, generated called real "
                  f"{a['real']['validation']['generated_called_real']:.3f})",
                  f"unknown: {a['unknown']['score']} score > {a['unknown']['threshold']:.6g}, set to accept "
                  f"{a['unknown']['accepts']:.0%} of known generated validation images",
                  f"sets: {a['sets']['statistic']}; sizes {a['sets']['sizes']}, each known class rejects at most "
                  f"{a['sets']['rejects']:.0%} of its validation sets",
                  f"temperature: {a['temperature']:.4g}"]
    if report.set is not None:
        s = report.set
        lines.append("set: " + json.dumps({k: s[k] for k in ("verdict", "model", "p", "n", "design")}))
    return lines


def to_csv(report) -> str:
    buf = io.StringIO()
    for line in header(report):
        buf.write(f"# {line}\n")
    rows(report).to_csv(buf, index=False)
    return buf.getvalue()
