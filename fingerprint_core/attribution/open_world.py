"""Open-world figures of one attributor's three-step decision (decision.py), measured on images no
threshold saw: the known models' and the real images' test split, and a foreign set (generators
outside the workspace, `assets/foreign/models/<model>/samples.npz` for the demo).

Per image: the share of each verdict, open-set AUROC (foreign against known generated test images,
real excluded), the share of foreign images called real beside the share of real images kept. Per set
of one source (seeded draws without replacement): the share with the right verdict (the right model
for a known source, "unknown" for a foreign one, "real" for real) and the set AUROC of foreign against
known sources on the set score min_c MMD^2_c / threshold_c(n) over the generated classes.

One implementation for `bench/open_world.py` (the shipped attributor) and the benchmark's foreign
protocol (every method). Nothing here fits or calibrates: the foreign set only measures.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fingerprint_core.attribution import openset
from fingerprint_core.attribution import sets as sets_mod
from fingerprint_core.workspace import REAL, key_of

SAMPLES = "samples.npz"
N_SETS = 100  # seeded sets per source and size
VERDICTS = ("real", "unknown", "known")


def foreign_folders(folder: str | Path) -> list[Path]:
    """The model folders of a foreign set (each holding samples.npz), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"foreign set {folder}: not a folder (expected <model>/{SAMPLES} inside)")
    found = sorted(p for p in folder.iterdir() if (p / SAMPLES).is_file())
    if not found:
        raise ValueError(f"foreign set {folder}: no <model>/{SAMPLES} inside")
    return found


def foreign_key(images: dict[str, np.ndarray]) -> str:
    """What a loaded foreign set is: each model's name, and the shape and SHA-256 of its images."""
    return key_of({m: [list(x.shape), hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()] for m, x in images.items()})


def load_foreign(folder: str | Path, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """model -> uint8 N x C x H x W images of the workspace's shape (C x H x W); a grayscale N x H x W
    array counts as one channel. A file of another shape or type is refused by name."""
    out = {}
    for d in foreign_folders(folder):
        path = d / SAMPLES
        try:
            with np.load(path) as z:
                x = z["images"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a readable samples file with an 'images' array ({e})") from None
        x = x[:, None] if x.ndim == 3 else x
        if x.dtype != np.uint8 or tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{path}: images {x.dtype} {tuple(x.shape[1:])}, the workspace needs uint8 {tuple(shape)}")
        out[d.name] = x
    return out


def shares(verdicts: np.ndarray) -> dict[str, float]:
    return {v: float(np.mean(verdicts == v)) if len(verdicts) else float("nan") for v in VERDICTS}


def set_score(decision, mmd2: np.ndarray, n: int) -> float:
    """How far a set is from every known generated class: min over them of MMD^2 / its threshold at n."""
    rule = decision.set_rule
    gen = decision.generated()
    return float(np.min(mmd2[gen] / np.maximum(rule.thresholds[rule.size_index(n)][gen], 1e-12)))


def evaluate(decision, known: tuple[np.ndarray, np.ndarray, np.ndarray], real: tuple[np.ndarray, np.ndarray],
             foreign: dict[str, tuple[np.ndarray, np.ndarray]], *, sizes: tuple[int, ...] = sets_mod.SET_SIZES,
             n_sets: int = N_SETS, seed: int = 0) -> dict:
    """known: (features, model logits, model names) of known generated test images; real: (features,
    logits) of real test images; foreign: model -> (features, logits). Returns the figures (JSON-able)."""
    classes = decision.classes
    f, z, names = known
    names = np.asarray(names).astype(str)
    v = decision.verdicts(f, z)
    vr = decision.verdicts(*real)
    right_model = (v["verdict"] == "known") & (np.asarray(classes)[v["model"]] == names)
    rows = [{"source": "known (test)", "n": len(f), **shares(v["verdict"]), "right model": float(np.mean(right_model))},
            {"source": "real (test)", "n": len(real[0]), **shares(vr["verdict"])}]
    fv = {}
    for m, (ff, zz) in foreign.items():
        fv[m] = decision.verdicts(ff, zz)
        rows.append({"source": f"foreign:{m}", "n": len(ff), **shares(fv[m]["verdict"])})
    out = {"per_image": rows, "real_called_real": float(np.mean(vr["verdict"] == "real")) if len(vr["verdict"]) else float("nan")}
    if fv:
        all_score = np.concatenate([x["score"] for x in fv.values()])
        out["foreign_auroc_open_set"] = openset.auroc(v["score"], all_score)
        out["foreign_per_model_auroc"] = {m: openset.auroc(v["score"], x["score"]) for m, x in fv.items()}
        out["foreign_called_real"] = float(np.mean(np.concatenate([x["verdict"] for x in fv.values()]) == "real"))
        if len(vr["p_real"]):  # real ranked above foreign images by p(real)
            out["real_vs_foreign_auroc_p_real"] = openset.auroc(np.concatenate([x["p_real"] for x in fv.values()]), vr["p_real"])

    # ---- sets of one source ---------------------------------------------------------------------
    rng = np.random.default_rng(seed)
    sources = ([(m, "known", (f[names == m], z[names == m]), m) for m in dict.fromkeys(names)]
               + [("real", "real", real, REAL)]
               + [(m, "foreign", val, "unknown") for m, val in foreign.items()])
    set_rows, set_auroc = [], {}
    for n in sizes:
        if decision.set_rule.size_index(n) is None:
            continue
        scores = {"known": [], "foreign": []}
        for source, kind, (ff, zz), truth in sources:
            if len(ff) < n:
                continue
            said = []
            for _ in range(n_sets):
                idx = rng.choice(len(ff), n, replace=False)
                r = decision.set_at(ff[idx], zz[idx])
                said.append(classes[r["model"]] if r["verdict"] == "known" else r["verdict"])
                if kind in scores:
                    scores[kind].append(set_score(decision, np.array(list(r["mmd2"].values())), n))
            said = np.asarray(said)
            set_rows.append({"n": n, "kind": kind, "source": source, "right": float(np.mean(said == truth)),
                             "unknown": float(np.mean(said == "unknown")), "real": float(np.mean(said == "real"))})
        if scores["known"] and scores["foreign"]:
            set_auroc[n] = openset.auroc(np.array(scores["known"]), np.array(scores["foreign"]))
    out["sets"] = set_rows
    out["set_auroc"] = set_auroc
    return out


def set_summary(figures: dict) -> dict[int, dict[str, float]]:
    """Per set size: AUROC foreign vs known, the share of known sets given the right model (mean and
    worst source), of known sets called unknown, and of foreign sets called unknown."""
    out = {}
    for n in sorted({r["n"] for r in figures["sets"]}):
        known = [r for r in figures["sets"] if r["n"] == n and r["kind"] == "known"]
        foreign = [r for r in figures["sets"] if r["n"] == n and r["kind"] == "foreign"]
        out[n] = {"auroc": figures["set_auroc"].get(n, float("nan")),
                  "right_model": float(np.mean([r["right"] for r in known])) if known else float("nan"),
                  "right_model_worst": float(min(r["right"] for r in known)) if known else float("nan"),
                  "known_called_unknown": float(np.mean([r["unknown"] for r in known])) if known else float("nan"),
                  "foreign_called_unknown": float(np.mean([r["unknown"] for r in foreign])) if foreign else float("nan")}
    return out
