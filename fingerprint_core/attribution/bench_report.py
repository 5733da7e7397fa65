"""The benchmark's numbers as people read them: a log line per finished part, summary rows (mean and
std over seeds or folds), the markdown table, and the results files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from fingerprint_core.attribution.robustness import LABELS, PERTURBATIONS
from fingerprint_core.attribution.sets import SET_SIZES
from fingerprint_core.fsio import atomic_write

PROTOCOLS = ("closed", "twins", "robust", "lodo", "openset", "fisher", "foreign")
SCORE = "mahalanobis"  # the open-set score the table shows (openset.py's default); energy is in results.json


def std_or_zero(values: list[float]) -> float:
    v = [x for x in values if x == x]
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def jsonable(o):
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-able")


def headline(protocol: str, r: dict) -> str:
    """One short line for the log of a finished part."""
    if protocol in ("closed", "twins"):
        return f"accuracy {r['accuracy']:.3f} (chance {r['chance']:.3f})"
    if protocol == "robust":
        return ", ".join(f"{p} {r[p]:.3f}" for p in PERTURBATIONS)
    if protocol == "fisher":
        return f"FDR {r['fdr']:.3g}"
    if protocol == "lodo":
        return f"held out {r['design']}: " + ", ".join(f"{f} {v['accuracy']:.2f}" for f, v in r["factors"].items())
    if protocol == "openset":
        return f"AUROC {r[SCORE]['auroc']:.3f} (unknown: {', '.join(r['test'])})"
    if protocol == "foreign":
        sets = ", ".join(f"n={n} AUROC {v['auroc']:.3f}" for n, v in r["sets"].items())
        return f"foreign AUROC {r['auroc']:.3f}, called real {r['called_real']:.3f} (real kept {r['real_kept']:.3f}); sets {sets}"
    return ""


def summarise(parts: dict[str, dict], seeds: tuple[int, ...]) -> list[dict]:
    """Rows (method, protocol, metric, mean, std, n, over) of every number the table shows."""
    rows = []

    def add(method, protocol, metric, values, over):
        v = [float(x) for x in values if x is not None and x == x]
        if v:
            rows.append({"method": method, "protocol": protocol, "metric": metric, "mean": float(np.mean(v)),
                         "std": std_or_zero(v), "n": len(v), "over": over})

    for m, p in parts.items():
        done = {proto: [r for r in p.get(proto, {}).values() if "skipped" not in r] for proto in PROTOCOLS}
        add(m, "closed", "accuracy", [r["accuracy"] for r in done["closed"]], "seeds")
        add(m, "closed", "chance", [r["chance"] for r in done["closed"]][:1], "-")
        add(m, "twins", "accuracy", [r["accuracy"] for r in done["twins"]], "seeds")
        add(m, "twins", "chance", [r["chance"] for r in done["twins"]][:1], "-")
        for pert in PERTURBATIONS:
            add(m, "robust", pert, [r[pert] for r in done["robust"]], "seeds")
        add(m, "fisher", "fdr", [r["fdr"] for r in done["fisher"]], "seeds")
        for r in done["lodo"]:
            for f in r["factors"]:
                scored = [x["factors"][f] for x in r["folds"] if x["factors"][f].get("learnable", True)]
                add(m, "lodo", f, [x["accuracy"] for x in scored], "folds")
                add(m, "lodo", f"{f} chance", [r["factors"][f]["chance"]], "-")
        for r in done["openset"]:
            for k in ("auroc", "tpr_calibrated", "fpr_calibrated"):
                add(m, "openset", k, [x[SCORE][k] for x in r["folds"]], "folds")
        for r in done["foreign"]:
            for k in ("auroc", "called_real", "real_kept"):
                add(m, "foreign", k, [r[k]], "-")
            add(m, "foreign", "auroc chance", [0.5], "-")
            for n, v in r["sets"].items():
                add(m, "foreign", f"set_auroc_{n}", [v["auroc"]], "-")
                add(m, "foreign", f"set_auroc_{n} chance", [0.5], "-")
                add(m, "foreign", f"set_right_{n}", [v["right_model"]], "-")
                add(m, "foreign", f"set_right_{n} chance", [r["right_model_chance"]], "-")
    return rows


COLUMNS = [  # (protocol, metric, header)
    ("closed", "accuracy", "a closed acc"), ("twins", "accuracy", "b twins acc"),
    *(("robust", k, f"c {LABELS[k]}") for k in PERTURBATIONS),
    ("lodo", None, "d LODO"), ("openset", "auroc", "e AUROC"), ("openset", "tpr_calibrated", "e TPR"),
    ("openset", "fpr_calibrated", "e FPR"), ("fisher", "fdr", "f FDR"),
    ("foreign", "auroc", "g foreign AUROC"), ("foreign", "called_real", "g foreign called real"),
    ("foreign", "real_kept", "g real kept"),
    *(("foreign", f"set_auroc_{n}", f"g sets AUROC n={n}") for n in SET_SIZES),
    *(("foreign", f"set_right_{n}", f"g sets right model n={n}") for n in SET_SIZES),
]


def markdown(summary: list[dict]) -> str:
    """Methods as rows, protocols as columns (mean ± std), and a last row with chance."""
    table = pd.DataFrame(summary)
    if table.empty:
        return "(no results yet)\n"
    methods = list(dict.fromkeys(table["method"]))
    lodo = [m for m in dict.fromkeys(table.loc[table["protocol"] == "lodo", "metric"]) if not m.endswith(" chance")]
    cols = []
    for proto, metric, header in COLUMNS:
        if proto == "lodo":
            cols += [(proto, f, f"d LODO {f}") for f in lodo]
        else:
            cols.append((proto, metric, header))
    cols = [c for c in cols if ((table["protocol"] == c[0]) & (table["metric"] == c[1])).any()]

    def cell(method, proto, metric):
        hit = table[(table["method"] == method) & (table["protocol"] == proto) & (table["metric"] == metric)]
        if hit.empty:
            return "-"
        r = hit.iloc[0]
        fmt = (lambda v: f"{v:.3g}") if proto == "fisher" else (lambda v: f"{v:.3f}")
        return fmt(r["mean"]) + (f" ± {fmt(r['std'])}" if r["n"] > 1 else "")

    def chance(proto, metric):
        name = {"closed": "chance", "twins": "chance"}.get(proto, f"{metric} chance" if proto in ("lodo", "foreign") else None)
        if name is None:
            return "0.500" if metric == "auroc" else "-"
        hit = table[(table["protocol"] == proto) & (table["metric"] == name)]
        return f"{hit['mean'].iloc[0]:.3f}" if len(hit) else "-"

    lines = ["| method | " + " | ".join(h for _, _, h in cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {m} | " + " | ".join(cell(m, p, k) for p, k, _ in cols) + " |" for m in methods]
    lines.append("| chance | " + " | ".join(chance(p, k) for p, k, _ in cols) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: dict) -> None:
    """DIR/results.json, results.csv and results.md, each written atomically."""
    out = Path(out)
    atomic_write(out / "results.json", json.dumps(results, indent=1, default=jsonable).encode())
    buf = io.StringIO()
    pd.DataFrame(results["summary"], columns=["method", "protocol", "metric", "mean", "std", "n", "over"]).to_csv(buf, index=False)
    atomic_write(out / "results.csv", buf.getvalue().encode())
    md = ["# Attribution benchmark", "", f"Workspace `{results['workspace']}`.", "", markdown(results["summary"])]
    md += [f"- {n}" for n in results["notes"]]
    md += [f"- {m} not run: {why}" for m, why in results.get("skipped_methods", {}).items()]
    md += [f"- {proto} not run: {why}" for proto, why in results.get("skipped_protocols", {}).items()]
    atomic_write(out / "results.md", ("\n".join(md) + "\n").encode())
