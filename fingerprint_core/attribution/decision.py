"""The verdict, in three decisions taken in order, each with its own calibrated threshold:

1. real or generated: "real" needs both a temperature-scaled p(real) at or above its threshold and
   features within the real class's own region (Mahalanobis distance to the real class mean at or
   below the distance that keeps REAL_REGION of the real validation images): an unseen generator is
   not called "real" merely because "real" was the most probable class. The two thresholds keep
   REAL_KEEP of the real validation images together;
2. known or unknown: the open-set score (openset.py; the kind chosen on the benchmark's
   held-out-models protocol) against the threshold that accepts openset.ACCEPT of the generated
   validation images;
3. which model: the most probable generated class.

A set of images from one source goes the same way with set statistics (sets.py). Everything is
fitted on the attributor's training features (statistics) and validation features (temperature,
thresholds) only; the test split measures the calibration error. The fitted decision is a workspace
entry next to the attributor (decision/<kind>-<key>), recomputed from the workspace when missing, so
a shipped attributor needs none of it shipped.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fingerprint_core.attribution import calibration, openset, sets
from fingerprint_core.attribution import split as split_mod
from fingerprint_core.workspace import REAL, Workspace, key_of

VERSION = "decision-v1"
KEY = "decision"  # manifest: {kind: {key, dir, attributor, measured}}
# share of real validation images the two real thresholds keep together: the smallest of REAL_KEEPS
# whose real test images are called real at least 95% of the time on every fold of the benchmark's
# held-out-models protocol (bench/openset_scores.py: 0.955 on the worst fold at 0.97, 0.938 at 0.96)
REAL_KEEP = 0.97
REAL_KEEPS = (0.97, 0.96, 0.955, 0.95)
REAL_REGION = 0.99  # share of real validation images inside the real class's region
UNKNOWN_SCORE = "ensemble"  # the best mean AUROC on the held-out-models protocol (bench/openset_scores.py, docs/open-world.md)
FIT_PER_CLASS = 400  # training samples per class the statistics are fitted on (a seeded subset)
CONFIG = "decision.json"
ARRAYS = "decision.safetensors"


@dataclass
class Decision:
    """A fitted three-step verdict for one attributor."""

    classes: list[str]  # the model head's classes
    temperature: float
    real: int | None  # index of the real class, if the attributor has one
    real_threshold: float  # p(real) at or above (and inside the real region): "real"
    real_region: openset.OpenSet  # Mahalanobis to the real class mean; at or below its threshold: inside
    unknown: openset.OpenSet  # scores above its threshold: "unknown"
    set_rule: sets.SetRule
    log_prior: np.ndarray  # K: training class frequencies
    measured: dict = field(default_factory=dict)  # rates on validation and calibration error on test

    # ---- one image at a time -----------------------------------------------------------------
    def probabilities(self, model_logits: np.ndarray) -> np.ndarray:
        return calibration.calibrated(model_logits, self.temperature)

    def p_real(self, probs: np.ndarray) -> np.ndarray:
        return probs[:, self.real] if self.real is not None else np.zeros(len(probs))

    def generated(self) -> np.ndarray:
        return np.array([i for i in range(len(self.classes)) if i != self.real], dtype=int)

    def verdicts(self, features: np.ndarray, model_logits: np.ndarray) -> dict[str, np.ndarray]:
        """Per image: verdict, the attributed generated model, p(real), the open-set score, calibrated probabilities."""
        probs = self.probabilities(model_logits)
        p_real = self.p_real(probs)
        score = self.unknown.score(features, model_logits)
        gen = self.generated()
        best = gen[probs[:, gen].argmax(1)] if len(gen) else np.zeros(len(probs), int)
        real = np.zeros(len(probs), bool)
        if self.real is not None:
            real = (p_real >= self.real_threshold) & (self.real_region.score(features, model_logits) <= self.real_region.threshold)
        unknown = ~real & (score > self.unknown.threshold)
        verdict = np.where(real, "real", np.where(unknown, "unknown", "known"))
        return {"verdict": verdict, "model": best, "p_real": p_real, "score": score, "probs": probs}

    # ---- a set from one source ---------------------------------------------------------------
    def set_verdict(self, features: np.ndarray, model_logits: np.ndarray) -> dict:
        """The set's verdict at the nearest smaller calibrated size, and at each calibrated size <= N
        on the first n images (by_n). ValueError below the smallest size."""
        n = len(features)
        if self.set_rule.size_index(n) is None:
            raise ValueError(f"a set verdict needs at least {min(self.set_rule.sizes)} images; got {n}")
        out = self.set_at(features, model_logits)
        out["by_n"] = [{"n": s, **{k: v for k, v in self.set_at(features[:s], model_logits[:s]).items()
                                   if k in ("verdict", "p", "model")}}
                       for s in self.set_rule.sizes if s <= n]
        return out

    def set_at(self, features: np.ndarray, model_logits: np.ndarray) -> dict:
        rule = self.set_rule
        i = rule.size_index(len(features))
        stats = rule.statistics(features)
        accepted = stats <= rule.thresholds[i]
        probs = self.probabilities(model_logits)
        posterior = sets.naive_bayes(np.log(np.clip(probs, 1e-12, 1.0)), self.log_prior)
        gen = self.generated()
        out = {"n": len(features), "size_calibrated": rule.sizes[i], "posterior": posterior,
               "mmd2": {c: float(s) for c, s in zip(self.classes, stats, strict=True)}}
        if self.real is not None and accepted[self.real]:  # the set's own test against the real class
            return {**out, "verdict": "real", "model": None, "p": float(posterior[self.real])}
        known = gen[accepted[gen]]
        if len(known):
            best = known[np.argmax(posterior[known])]
            return {**out, "verdict": "known", "model": int(best), "p": float(posterior[best])}
        # no known class accepts the set: the confidence is 1 - the largest p-value of a generated class
        p_val = rule.p_values(stats, i)[gen]
        return {**out, "verdict": "unknown", "model": None, "p": float(1.0 - p_val.max())}

    # ---- storage -----------------------------------------------------------------------------
    def config(self) -> dict:
        return {"version": VERSION, "classes": self.classes, "temperature": self.temperature, "real": self.real,
                "real_keep": REAL_KEEP, "real_threshold": self.real_threshold, "real_region": REAL_REGION,
                "real_region_threshold": self.real_region.threshold,
                "unknown": {"kind": self.unknown.kind, "threshold": self.unknown.threshold, "accept": self.unknown.accept,
                            "norm": self.unknown.norm},
                "sets": self.set_rule.config(), "measured": self.measured}

    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        arrays = {"log_prior": self.log_prior, **self.set_rule.arrays()}
        for rule, prefix in ((self.unknown, "unknown"), (self.real_region, "real_region")):
            for name, v in (("means", rule.means), ("precision", rule.precision), ("bank", rule.bank)):
                if v is not None:
                    arrays[f"{prefix}.{name}"] = v
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(Path(folder) / ARRAYS))
        (Path(folder) / CONFIG).write_text(json.dumps(self.config(), indent=1))

    @classmethod
    def load(cls, folder: Path) -> Decision:
        from safetensors.numpy import load_file

        cfg = json.loads((Path(folder) / CONFIG).read_text())
        a = load_file(str(Path(folder) / ARRAYS))
        u = cfg["unknown"]
        rule = openset.OpenSet(u["kind"], float(u["threshold"]), float(u["accept"]), a.get("unknown.means"),
                               a.get("unknown.precision"), a.get("unknown.bank"), u.get("norm"))
        region = openset.OpenSet("mahalanobis", float(cfg["real_region_threshold"]), REAL_REGION,
                                 a.get("real_region.means"), a.get("real_region.precision"))
        return cls(list(cfg["classes"]), float(cfg["temperature"]), cfg["real"], float(cfg["real_threshold"]), region, rule,
                   sets.SetRule.from_saved(cfg["sets"], a), a["log_prior"], cfg.get("measured", {}))


# ---- fitting ---------------------------------------------------------------------------------------
def fit(classes: list[str], train: tuple[np.ndarray, np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, *, score: str = UNKNOWN_SCORE,
        set_statistic: str = sets.STATISTIC, real_keep: float = REAL_KEEP) -> Decision:
    """Each of train, val, test: (features, model logits, model labels). Statistics from train,
    temperature and thresholds from val; test only measures."""
    f_tr, _, y_tr = train
    f_va, z_va, y_va = val
    real = classes.index(REAL) if REAL in classes else None
    temperature = calibration.fit_temperature(z_va, y_va)
    is_real = (y_va == real) if real is not None else np.zeros(len(y_va), bool)
    means, precision = openset.fit_gaussians(f_tr, y_tr, len(classes))
    region = openset.OpenSet("mahalanobis", float("inf"), REAL_REGION)
    if real is not None and is_real.any():
        region = openset.OpenSet("mahalanobis", 0.0, REAL_REGION, means[[real]], precision)
        region.threshold = openset.threshold_for(region.score(f_va[is_real], z_va[is_real]), REAL_REGION)
    gen_rows = ~is_real
    rule = openset.fit(score, f_tr, y_tr, len(classes), f_va[gen_rows], z_va[gen_rows])
    counts = np.bincount(y_tr, minlength=len(classes)).astype(np.float64)
    log_prior = np.log(np.maximum(counts, 1) / max(counts.sum(), 1))
    d = Decision(list(classes), temperature, real, float("inf"), region, rule,
                 sets.fit(classes, f_tr, y_tr, f_va, y_va, kind=set_statistic), log_prior)
    d = with_real_keep(d, val, real_keep)  # the p(real) threshold, now that the region is fitted
    v = d.verdicts(f_va, z_va)
    d.measured = {
        "val_real_kept": float(np.mean(v["verdict"][is_real] == "real")) if is_real.any() else float("nan"),
        "val_generated_called_real": float(np.mean(v["verdict"][gen_rows] == "real")) if gen_rows.any() else float("nan"),
        "val_generated_accepted": float(np.mean(v["verdict"][gen_rows] == "known")) if gen_rows.any() else float("nan"),
    }
    if test is not None and len(test[2]):
        f_te, z_te, y_te = test
        raw, cal = calibration.calibrated(z_te, 1.0), calibration.calibrated(z_te, temperature)
        d.measured.update(test_ece_raw=calibration.ece(raw, y_te), test_ece=calibration.ece(cal, y_te),
                          reliability=calibration.reliability(cal, y_te).to_dict("records"), n_test=int(len(y_te)))
    return d


def p_real_threshold(p_inside: np.ndarray, n_real: int, keep: float) -> float:
    """The p(real) threshold: among the real validation images inside the real region (their p(real)
    p_inside, of n_real in all), keep enough for keep of all n_real together."""
    p_in = np.sort(np.asarray(p_inside, np.float64))[::-1]
    need = int(np.ceil(keep * n_real))
    return float(p_in[min(need, len(p_in)) - 1]) if len(p_in) else float("inf")


def with_real_keep(d: Decision, val: tuple[np.ndarray, np.ndarray, np.ndarray], keep: float) -> Decision:
    """A copy of d whose p(real) threshold keeps another share of the real validation images (val as in fit)."""
    f_va, z_va, y_va = val
    if d.real is None or not (y_va == d.real).any():
        return d
    is_real = y_va == d.real
    inside = d.real_region.score(f_va[is_real], z_va[is_real]) <= d.real_region.threshold
    p = d.p_real(d.probabilities(z_va[is_real]))[inside]
    return dataclasses.replace(d, real_threshold=p_real_threshold(p, int(is_real.sum()), keep))


def part_rows(table: pd.DataFrame, part: str, per_class: int | None, seed: int = 0) -> pd.DataFrame:
    """The rows of one part of the split, cut to a seeded subset of per_class rows per model (None: all)."""
    rows = table[table["part"] == part]
    if per_class:
        rng = np.random.default_rng(seed)
        rows = pd.concat([g.iloc[np.sort(rng.permutation(len(g))[:per_class])] for _, g in rows.groupby("model", sort=False)])
    return rows


def entry_key(entry: dict) -> str:
    return key_of(VERSION, entry["key"], REAL_KEEP, REAL_REGION, UNKNOWN_SCORE, openset.ACCEPT, sets.STATISTIC, sets.SET_SIZES,
                  sets.REJECT, sets.N_SETS, sets.BANK, FIT_PER_CLASS)


def ensure(ws: Workspace, kind: str, method, entry: dict, *, log=lambda message: None) -> Decision:
    """The fitted decision of a trained attributor: loaded from the workspace, or fitted and stored there."""
    key = entry_key(entry)
    rel = f"decision/{kind}-{key}"
    if ws.verified(rel) is not None:
        return Decision.load(ws.file(rel))
    t0 = time.perf_counter()
    log(f"calibrating the {kind} attributor's decisions (validation data only)")
    record = ws.manifest["attribution"]
    table = split_mod.workspace_split(ws, seed=int(record.get("split_seed", 0)))  # the split the attributor trained on
    classes = list(method.classes_["model"])
    lookup = {m: i for i, m in enumerate(classes)}

    def part(name: str, per_class: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = part_rows(table, name, per_class)
        rows = rows[rows["model"].isin(classes)]
        f, z = method.features_and_logits(split_mod.load_inputs(ws, rows, method.needs))
        return f, z["model"], rows["model"].map(lookup).to_numpy(np.int64)

    decision = fit(classes, part("train", FIT_PER_CLASS), part("val", None), part("test", None))
    decision.measured["seconds"] = round(time.perf_counter() - t0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        decision.save(Path(tmp))
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    ws.write_entry(rel, {}, files=files)
    return decision
