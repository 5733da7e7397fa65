"""Fresh samples as a user meets them: new samples of every demo model (new noise seeds, not the
shipped samples' seed 2024), written as files the way images get shared, attributed through the real
path (`predict.attribute_paths`, the `manifpt attribute --json` contract).

Inputs, per model --per-model samples drawn with --seed from assets/demo/models/<m>/generator.safetensors:

    png            the samples as PNG files (lossless)
    jpeg50/75/90   JPEG files at quality 50, 75, 90 (PIL, as most tools save them)
    resize0.5      PNG after resizing to half size (Lanczos) and back (bicubic), with PIL
    jpegQ-as-png   each JPEG file decoded and re-saved as PNG: the same pixels in another format

Prints a table (input x accuracy: the top model is the source model; and the share called "known"),
and checks that each JPEG and its PNG re-save get identical answers per image (the answer must not
depend on the file format). Prints the CPU model, torch threads and the load average.

    python bench/fresh.py [--workspace WS] [--per-model 40] [--seed 7] [--kind fused] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fingerprint_core import devices

QUALITIES = (50, 75, 90)
FILE_FIELDS = ("file", "status", "sha256")  # about the file, not the answer (status names the format)
INPUTS = ("png", *(f"jpeg{q}" for q in QUALITIES), "resize0.5", *(f"jpeg{q}-as-png" for q in QUALITIES))


def _pil(img: np.ndarray) -> Image.Image:
    """uint8 H x W or H x W x C (C = 1 squeezed) as a PIL image."""
    return Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)


def write_inputs(samples: dict[str, np.ndarray], folder: Path) -> dict[str, Path]:
    """Write every input variant of the samples (model -> uint8 N x H x W [x C]) into folder/<input>/;
    files are named <model>__<i>.<ext>. Returns input -> its folder."""
    dirs = {name: folder / name for name in INPUTS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for model, imgs in samples.items():
        for i, img in enumerate(np.asarray(imgs)):
            stem = f"{model}__{i:04d}"
            pil = _pil(img)
            pil.save(dirs["png"] / f"{stem}.png")
            for q in QUALITIES:
                jpg = dirs[f"jpeg{q}"] / f"{stem}.jpg"
                pil.save(jpg, format="JPEG", quality=q)
                with Image.open(jpg) as decoded:  # the JPEG's pixels, kept losslessly
                    decoded.save(dirs[f"jpeg{q}-as-png"] / f"{stem}.png")
            w, h = pil.size
            pil.resize((max(1, w // 2), max(1, h // 2)), Image.LANCZOS).resize((w, h), Image.BICUBIC).save(
                dirs["resize0.5"] / f"{stem}.png")
    return dirs


def source_of(file: str) -> str:
    """The model a file was drawn from (its name's part before "__")."""
    return Path(file).name.split("__", 1)[0]


def attribute(workspace: str | Path, dirs: dict[str, Path], *, kind: str | None = None, device: str = "cpu") -> dict:
    """input -> the `manifpt attribute --json` document of its folder (the real path, predict.attribute_paths)."""
    from fingerprint_core.attribution import predict

    out = {}
    for name, d in dirs.items():
        report = predict.attribute_paths(workspace, [d], kind=kind, device=device)
        out[name] = json.loads(json.dumps(report.to_json()))  # exactly what --json prints
    return out


def score(answers: dict) -> dict:
    """input -> {accuracy, known (share of verdict known), n, errors}; plus "same_answers": per quality,
    whether each JPEG and its PNG re-save got identical answers (file names aside), and how many differ."""
    table = {}
    for name, doc in answers.items():
        res = doc["results"]
        hit = [r["top"][0]["model"] == source_of(r["file"]) for r in res]
        table[name] = {"accuracy": float(np.mean(hit)) if hit else float("nan"),
                       "known": float(np.mean([r["verdict"] == "known" for r in res])) if res else float("nan"),
                       "n": len(res), "errors": len(doc["errors"])}
    same = {}
    for q in QUALITIES:
        a, b = answers.get(f"jpeg{q}"), answers.get(f"jpeg{q}-as-png")
        if a is None or b is None:
            continue

        def by_stem(doc):
            return {Path(r["file"]).stem: {k: v for k, v in r.items() if k not in FILE_FIELDS} for r in doc["results"]}

        x, y = by_stem(a), by_stem(b)
        differ = [s for s in x if x[s] != y.get(s)] + [s for s in y if s not in x]
        same[q] = {"identical": not differ, "differ": len(differ), "n": len(x)}
    return {"inputs": table, "same_answers": same}


def run(workspace: str | Path, samples: dict[str, np.ndarray], *, kind: str | None = None, device: str = "cpu",
        folder: str | Path | None = None) -> dict:
    """Write the inputs of the samples, attribute them all, score them (the script's core, testable)."""
    with tempfile.TemporaryDirectory() as tmp:
        dirs = write_inputs(samples, Path(folder or tmp))
        t0 = time.perf_counter()
        answers = attribute(workspace, dirs, kind=kind, device=device)
        out = score(answers)
        out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def draw(workspace: str | Path, per_model: int, seed: int) -> dict[str, np.ndarray]:
    """model -> uint8 per_model x 32 x 32 fresh samples from its shipped generator (noise seed `seed`)."""
    from fingerprint_core.workspace import Workspace
    from fingerprint_core.zoo.registry import load_generator, sample

    ws = Workspace.open(workspace)
    root = Path(ws.config.get("data_root") or "assets/demo")
    out = {}
    for m in ws.model_names():
        path = root / "models" / m / "generator.safetensors"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: fresh samples need the generator of every model (the demo ships them)")
        gen, _ = load_generator(path)
        with torch.no_grad():
            out[m] = sample(gen, per_model, seed=seed)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", default=None, help="default: the demo workspace (`manifpt demo`)")
    ap.add_argument("--per-model", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7, help="noise seed of the fresh samples (the shipped ones: 2024)")
    ap.add_argument("--kind", default=None, help="attributor kind (default: the product attributor)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.workspace is None:
        from fingerprint_core import demo

        args.workspace = str(demo.default_workspace())
    from fingerprint_core.attribution import train as train_mod
    from fingerprint_core.workspace import Workspace

    ws = Workspace.open(args.workspace)
    kind = args.kind or train_mod.product_kind(ws)
    entry = train_mod.stored(ws)[kind]
    print(f"CPU: {devices.cpu_name()}; torch threads {torch.get_num_threads()}; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    robust = entry.get("robust")
    how = f" (robust: {robust['copies']} perturbed cop(ies), p {robust['recipe']['p']})" if robust else " (clean training)"
    print(f"workspace {args.workspace}; {kind} attributor {entry['key']}{how}; "
          f"test accuracy (model) {entry['test']['model']:.3f}")
    t0 = time.perf_counter()
    samples = draw(args.workspace, args.per_model, args.seed)
    print(f"{len(samples)} models x {args.per_model} fresh samples (seed {args.seed}) in {time.perf_counter() - t0:.1f} s")
    res = run(args.workspace, samples, kind=kind, device=args.device)
    res.update(kind=kind, key=entry["key"], per_model=args.per_model, seed=args.seed, threads=torch.get_num_threads(),
               cpu=devices.cpu_name(), load_average=os.getloadavg())
    print("\n| input | accuracy (top model = source) | verdict known | n |\n|---|---|---|---|")
    for name, r in res["inputs"].items():
        errors = f" ({r['errors']} errors)" if r["errors"] else ""
        print(f"| {name} | {r['accuracy']:.3f} | {r['known']:.3f} | {r['n']}{errors} |")
    clean = res["inputs"]["png"]["accuracy"]
    if clean > 0:
        print("\nretained at JPEG 75: " f"{res['inputs']['jpeg75']['accuracy'] / clean:.3f} of the clean accuracy")
    for q, s in res["same_answers"].items():
        print(f"JPEG {q} vs the same JPEG re-saved as PNG: "
              + ("identical answers for every image" if s["identical"] else f"{s['differ']} of {s['n']} answers differ"))
    print(f"attribution: {res['seconds']:.0f} s; load average now {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if all(s["identical"] for s in res["same_answers"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
