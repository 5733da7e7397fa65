"""A zoo model's human-readable outputs: the sample grid PNG and the markdown card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fingerprint_core.fsio import atomic_write

PRECISION_MIN, RECALL_MIN = 0.3, 0.1  # the "no collapsed model" bar


def grid(images: np.ndarray, *, rows: int = 8, cols: int = 8, gap: int = 2, scale: int = 2) -> np.ndarray:
    """uint8 (N, H, W) -> one uint8 image of the first rows x cols, on a mid-grey background."""
    n, h, w = images.shape
    out = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap), 128, np.uint8)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        out[gap + r * (h + gap):gap + r * (h + gap) + h, gap + c * (w + gap):gap + c * (w + gap) + w] = images[i]
    # nearest-neighbour enlargement keeps pixel-level artifacts visible instead of smoothing them
    return np.kron(out, np.ones((scale, scale), np.uint8))


def write_grid(images: np.ndarray, path: Path) -> None:
    """Save an 8 x 8 grid of the first 64 samples as PNG, atomically."""
    atomic_write(path, lambda f: Image.fromarray(grid(images)).save(f, format="PNG"))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def quality_markdown(quality: dict | None) -> str:
    """The card's quality section: a table of FID / precision / recall, or why it is pending."""
    if not quality:
        return "quality: pending (needs the SL encoder)\n"
    ok = quality["precision"] >= PRECISION_MIN and quality["recall"] >= RECALL_MIN
    return (
        "| figure | value |\n|---|---|\n"
        f"| FID (SL features) | {quality['fid']:.2f} |\n"
        f"| precision (k={quality['k']}) | {quality['precision']:.3f} |\n"
        f"| recall (k={quality['k']}) | {quality['recall']:.3f} |\n\n"
        f"{quality['n_samples']} samples against {quality['n_real']} Fashion-MNIST test images "
        f"(seed {quality['real_seed']}), in the SL space of `{quality['encoder']}` "
        f"(sha256 {quality['encoder_sha256'][:12]}). "
        f"{'Passes' if ok else 'FAILS'} the bar precision >= {PRECISION_MIN}, recall >= {RECALL_MIN}.\n"
    )


def _generator_line(cfg: dict) -> str:
    """"- generator: ..." for a family with several generator architectures (GAN), else ""."""
    from fingerprint_core.zoo import gan

    arch = cfg.get("architecture")
    if cfg.get("family") != "gan" or arch not in gan.ARCHITECTURE_TEXT:
        return ""
    return f"- generator ({arch}): {gan.ARCHITECTURE_TEXT[arch]}\n"


def render(result: dict) -> str:
    """The markdown card of a finished model, from its result record (a plan's optional `note`
    column, e.g. how a foreign model's recipe differs from the zoo's, becomes a line of its own)."""
    row, cfg = result["row"], result["config"]
    design = "\n".join(f"| {k} | {row[k]} |" for k in ("family", "upsampling", "loss", "normalization"))
    arch = ", ".join(f"{k} {v}" for k, v in cfg.items() if k not in ("family", "upsampling", "loss", "normalization"))
    note = f"- note: {row['note']}\n" if str(row.get("note") or "").strip() else ""
    return (
        f"# {result['name']}\n\n"
        f"| design choice | value |\n|---|---|\n{design}\n\n"
        f"{note}{_generator_line(cfg)}"
        f"- architecture: {arch}; {result['parameters']:,} generator parameters\n"
        f"- training: seed {row['seed']}, {row['iterations']:,} iterations of batch {row['batch_size']} on "
        f"{result['train_data']}, in [-1, 1]; "
        f"{_minutes(result['train_seconds'])} wall time on {result['device']} "
        f"({result['threads']} threads, torch {result['torch']})\n"
        f"- samples: {result['n_samples']} in `samples.npz` (noise seed {result['sample_seed']}, "
        f"{_minutes(result['sample_seconds'])} to draw)\n\n"
        f"![8 x 8 samples of {result['name']}](../../grids/{result['name']}.png)\n\n"
        f"## Quality\n\n{quality_markdown(result.get('quality'))}"
    )


def write_card(model_dir: Path, result: dict) -> None:
    """Write model_dir/card.md from a result record, atomically."""
    atomic_write(model_dir / "card.md", render(result).encode("utf-8"))
