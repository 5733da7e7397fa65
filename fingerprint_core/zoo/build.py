"""Training the zoo from a plan: seeded, checkpointed, resumable after a kill at any moment.

Layout of the output folder DIR (every file written through a temporary name and a rename):

    DIR/plan.csv                    the plan of the latest build (what `zoo status` reports on)
    DIR/build.log                   append-only: one line per model start/resume/checkpoint/finish
    DIR/checkpoints/<name>.pt       training state while a model trains (torch.load weights_only)
    DIR/checkpoints/<name>.json     its iteration and timing, for `zoo status` without torch.load
    DIR/models/<name>/              when finished: samples.npz ("images": uint8 N x 32 x 32; a zip
                                    of images.npy, LZMA-compressed, read by np.load as any npz),
                                    generator.safetensors (weights + design in the metadata),
                                    card.md, result.json (written last: the "done" mark)
    DIR/grids/<name>.png            an 8 x 8 sample grid (outside models/: DIR is a GM dataset)
    DIR/models.csv                  model,family,upsampling,loss,normalization,seed of finished models
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fingerprint_core import devices
from fingerprint_core.fsio import atomic_write
from fingerprint_core.zoo import cards, evaluate, registry
from fingerprint_core.zoo import plan as plan_mod
from fingerprint_core.zoo.results import BuildError, finished_results

CHECKPOINT_EVERY_S = 180.0  # a kill loses at most this much training
N_SAMPLES = 2000
SAMPLE_SEED = 2024  # the noise of every model's samples.npz; fixed so samples are reproducible
MODELS_CSV_COLUMNS = ("model", "family", "upsampling", "loss", "normalization", "seed")
_IDENTITY = tuple(c for c in plan_mod.COLUMNS if c != "iterations")  # a checkpoint belongs to these


@dataclass
class BuildReport:
    """What a build did: models trained to the end, skipped as finished, or stopped early."""

    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)


class DataOrder:
    """The training-image indices of iteration i: per-epoch permutations seeded by (seed, epoch).

    A pure function of i, so a resumed run draws exactly the batches the killed run would have;
    the last partial batch of each epoch is dropped.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} is larger than the {n} training images")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, np.arange(0)

    def __call__(self, iteration: int) -> np.ndarray:
        epoch, pos = divmod(iteration, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]


def samples_npz_bytes(images: np.ndarray) -> bytes:
    """The bytes of a samples.npz holding images.npy, LZMA-compressed (about 14% smaller than
    np.savez_compressed's deflate on these samples) and byte-reproducible (fixed zip timestamp);
    np.load(path)["images"] returns images exactly."""
    array = io.BytesIO()
    np.lib.format.write_array(array, np.ascontiguousarray(images), allow_pickle=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_LZMA) as zf:
        info = zipfile.ZipInfo("images.npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_LZMA
        zf.writestr(info, array.getvalue())
    return buf.getvalue()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _plain(value):
    """numpy scalars -> Python scalars, for json."""
    return value.item() if hasattr(value, "item") else value


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _save_checkpoint(state: dict, path: Path) -> None:
    """torch.save, written atomically and durably (fingerprint_core.fsio.atomic_write)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


class BuildLog:
    """DIR/build.log, append-only, one line per event."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, name: str, event: str, iteration: int, total: int, elapsed: float, losses: dict[str, float] | None = None) -> None:
        """Append `time name event iter=i/N [losses] wall=s`."""
        loss_text = " ".join(f"{k}={v:.4g}" for k, v in (losses or {}).items())
        line = f"{_now()} {name} {event} iter={iteration}/{total} {loss_text + ' ' if loss_text else ''}wall={elapsed:.1f}s\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)


def _set_channels_last(modules, device: torch.device) -> None:
    """NHWC layout on the CPU: oneDNN's convolutions run about 1.5x faster in it (measured here)."""
    if device.type == "cpu":
        for m in modules:
            m.to(memory_format=torch.channels_last)


def _progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="it", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=True)


def _rng_state(rng: torch.Generator) -> dict:
    state = {"noise": rng.get_state(), "torch": torch.get_rng_state()}
    if rng.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(rng.device)
    return state


def _set_rng_state(rng: torch.Generator, state: dict) -> None:
    # generator states are CPU byte tensors even for a CUDA generator; the checkpoint was loaded
    # with map_location=device, which moved them onto the GPU
    rng.set_state(state["noise"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), rng.device)


def train_model(row: dict, out: Path, data: torch.Tensor, *, device: torch.device, log: BuildLog,
                checkpoint_every_s: float = CHECKPOINT_EVERY_S, stop_after: int | None = None,
                n_samples: int = N_SAMPLES, sample_seed: int = SAMPLE_SEED, progress: bool = True,
                label: str = "", train_data: str = "", encoder: Path | None = None,
                real_images: np.ndarray | None = None) -> str:
    """Train (or resume) one plan row to its iterations and write its outputs; "finished" | "stopped"."""
    name, total = row["name"], int(row["iterations"])
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt, sidecar = ckpt_dir / f"{name}.pt", ckpt_dir / f"{name}.json"
    identity = {k: _plain(row[k]) for k in _IDENTITY}
    # architecture arguments a plan gives in extra columns (z_dim, architecture, ...) belong to it too
    defaults = registry.family(row["family"]).defaults
    identity |= {k: v for k, v in registry.generator_config(row).items() if k in defaults and k in row and k not in identity}

    seed = int(row["seed"])
    torch.manual_seed(seed)  # weight initialisation
    np.random.seed(seed)
    trainer = registry.build_trainer(row, device)
    _set_channels_last(trainer.modules.values(), device)
    rng = torch.Generator(device=device).manual_seed(seed)  # every noise draw of training
    iteration, elapsed = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state["identity"] != identity:
            changed = ", ".join(f"{k} {state['identity'].get(k)!r} -> {v!r}" for k, v in identity.items()
                                if state["identity"].get(k) != v)
            raise BuildError(f"{name}: the plan changed since its checkpoint ({changed}); "
                             f"delete {ckpt} to train it from scratch")
        trainer.load_state_dict(state["trainer"])
        _set_rng_state(rng, state["rng"])
        iteration, elapsed = int(state["iteration"]), float(state["elapsed_s"])
        log.write(name, "resume", iteration, total, elapsed)
    else:
        log.write(name, "start", 0, total, 0.0)

    def checkpoint(event: str, losses: dict[str, float]) -> None:
        _save_checkpoint({"identity": identity, "trainer": trainer.state_dict(), "rng": _rng_state(rng),
                          "iteration": iteration, "elapsed_s": elapsed}, ckpt)
        _write_json(sidecar, {"iteration": iteration, "iterations": total, "elapsed_s": elapsed,
                              "s_per_iter": elapsed / max(iteration, 1), "updated": _now()})
        log.write(name, event, iteration, total, elapsed, losses)

    order = DataOrder(len(data), int(row["batch_size"]), seed)
    sums: dict[str, torch.Tensor] = {}
    count, ran, last_save = 0, 0, time.monotonic()
    bar = _progress_bar(total, min(iteration, total), label or name, progress)
    try:
        while iteration < total:
            t0 = time.perf_counter()
            idx = torch.from_numpy(order(iteration)).to(data.device)
            real = data[idx].to(torch.float32).div_(127.5).sub_(1)  # (B, 1, 32, 32) in [-1, 1]
            losses = trainer.step(real, rng)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0) + v
            count += 1
            iteration += 1
            ran += 1
            elapsed += time.perf_counter() - t0
            bar.update(1)
            stopping = stop_after is not None and ran >= stop_after
            due = time.monotonic() - last_save >= checkpoint_every_s
            if due or stopping or iteration == total:
                means = {k: float(v) / count for k, v in sums.items()}
                bar.set_postfix(means, refresh=False)
                checkpoint("checkpoint", means)
                sums, count, last_save = {}, 0, time.monotonic()
            if stopping and iteration < total:
                return "stopped"
    finally:
        bar.close()

    # the default layout, so that the weights file reloaded anywhere redraws these very samples
    sampler = trainer.sampler().to(memory_format=torch.contiguous_format)
    training = {"train_seconds": elapsed, "iterations_done": iteration, "device": devices_text(device),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "train_data": train_data}
    sample_seconds = ship(sampler, row, out, training, n_samples=n_samples, sample_seed=sample_seed,
                          encoder=encoder, real_images=real_images, device=device)
    log.write(name, "finish", iteration, total, elapsed, {"sample_s": sample_seconds})
    ckpt.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    return "finished"


def ship(sampler: torch.nn.Module, row: dict, out: Path, training: dict, *, n_samples: int = N_SAMPLES,
         sample_seed: int = SAMPLE_SEED, encoder: Path | None = None, real_images: np.ndarray | None = None,
         device: torch.device | None = None) -> float:
    """Write a trained generator's outputs: float16 weights, the samples they draw, grid, card,
    result.json (last: the "finished" mark), quality when an encoder is given; returns sampling seconds."""
    name = row["name"]
    registry.round_to_shipped(sampler)
    t0 = time.perf_counter()
    samples = registry.sample(sampler, n_samples, seed=sample_seed)  # (N, 32, 32) uint8
    sample_seconds = time.perf_counter() - t0
    model_dir = out / "models" / name
    model_dir.mkdir(parents=True, exist_ok=True)
    config = registry.generator_config(row)
    row_plain = {k: _plain(v) for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}
    registry.save_generator(sampler, config, model_dir / "generator.safetensors", name=name,
                            row=json.dumps(row_plain, sort_keys=True))
    atomic_write(model_dir / "samples.npz", samples_npz_bytes(samples))
    # the grid lives beside, not inside, the model folder: DIR is itself a GM dataset and every
    # image under models/<name>/ would count as one of the model's samples
    (out / "grids").mkdir(exist_ok=True)
    cards.write_grid(samples, out / "grids" / f"{name}.png")
    result = {
        "name": name, "row": row_plain, "config": config,
        "parameters": sum(p.numel() for p in sampler.parameters()),
        **training, "sample_seconds": sample_seconds, "weights_dtype": str(registry.SHIPPED_DTYPE).removeprefix("torch."),
        "n_samples": n_samples, "sample_seed": sample_seed, "finished": _now(), "quality": None,
    }
    cards.write_card(model_dir, result)
    _write_json(model_dir / "result.json", result)
    write_models_csv(out)
    if encoder is not None:
        evaluate.evaluate(out, encoder=encoder, real_images=real_images, names=[name],
                          device=device or torch.device("cpu"))
    return sample_seconds


def reship_float32(out: Path, name: str, *, encoder: Path | None = None, real_images: np.ndarray | None = None) -> bool:
    """Bring a model finished before weights were shipped as float16 up to date (weights rounded,
    samples redrawn from them, quality re-measured); False when it already is."""
    model_dir = out / "models" / name
    if registry.shipped_dtype(model_dir / "generator.safetensors") == "float16":
        return False
    old = json.loads((model_dir / "result.json").read_text())
    sampler, _ = registry.load_generator(model_dir / "generator.safetensors")
    keys = ("train_seconds", "iterations_done", "device", "threads", "torch", "train_data")
    ship(sampler, old["row"], out, {k: old[k] for k in keys if k in old}, n_samples=int(old["n_samples"]),
         sample_seed=int(old["sample_seed"]), encoder=encoder, real_images=real_images)
    return True


def devices_text(device: torch.device) -> str:
    """A short description of the device, for cards: the GPU's name or the CPU's."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"


def write_models_csv(out: Path) -> pd.DataFrame:
    """Regenerate out/models.csv from the finished models, in plan order."""
    results = finished_results(out)
    order = list(pd.read_csv(out / "plan.csv", dtype=str)["name"]) if (out / "plan.csv").exists() else []
    names = [n for n in order if n in results] + sorted(n for n in results if n not in order)
    rows = [{"model": n, **{k: results[n]["row"][k] for k in MODELS_CSV_COLUMNS[1:]}} for n in names]
    table = pd.DataFrame(rows, columns=list(MODELS_CSV_COLUMNS))
    atomic_write(out / "models.csv", table.to_csv(index=False).encode("utf-8"))
    return table


def load_training_images(limit: int | None = None) -> np.ndarray:
    """The Fashion-MNIST training images, uint8 (N, 1, 32, 32) (the first `limit` if given)."""
    from fingerprint_core.datasets import load_fashion_mnist

    images, _ = load_fashion_mnist("train")
    return images[:limit] if limit else images


def build(plan: str | os.PathLike | pd.DataFrame, out: str | os.PathLike, *, device: str | torch.device = "auto",
          threads: int | None = None, only: Sequence[str] | None = None, images: np.ndarray | None = None,
          checkpoint_every_s: float = CHECKPOINT_EVERY_S, stop_after: int | None = None,
          n_samples: int = N_SAMPLES, sample_seed: int = SAMPLE_SEED, coverage: bool = True,
          progress: bool = True, encoder: str | os.PathLike | None = None,
          real_images: np.ndarray | None = None) -> BuildReport:
    """Train every unfinished model of a plan into out; finished ones are skipped, partial ones resume.

    images: uint8 (N, 1, 32, 32) training images (default: Fashion-MNIST train). stop_after: stop
    each model after that many iterations of this run, right after a checkpoint (a stand-in for a
    kill). encoder + real_images: SL weights and real test images to measure quality as models finish.
    """
    out = Path(out)
    table = plan_mod.validate(plan) if isinstance(plan, pd.DataFrame) else plan_mod.load(plan, coverage=False)
    if coverage:
        plan_mod.check(table, "plan" if isinstance(plan, pd.DataFrame) else str(plan))
    if only:
        unknown = [n for n in only if n not in set(table["name"])]
        if unknown:
            raise plan_mod.PlanError(f"--only: unknown model(s) {', '.join(unknown)}; the plan has {', '.join(table['name'])}")
    if threads:
        torch.set_num_threads(int(threads))
    dev = devices.resolve(device)
    out.mkdir(parents=True, exist_ok=True)
    if not only or not (out / "plan.csv").exists():  # `zoo status` reports on the whole plan
        atomic_write(out / "plan.csv", table.to_csv(index=False).encode("utf-8"))
    if only:
        table = table[table["name"].isin(only)]
    log = BuildLog(out / "build.log")
    report = BuildReport()
    done = finished_results(out)
    todo = [r for r in table.to_dict("records") if r["name"] not in done]
    report.skipped = [n for n in table["name"] if n in done]
    for name in report.skipped:  # a kill between "finished" and the clean-up leaves these behind
        (out / "checkpoints" / f"{name}.pt").unlink(missing_ok=True)
        (out / "checkpoints" / f"{name}.json").unlink(missing_ok=True)
        if reship_float32(out, name, encoder=Path(encoder) if encoder else None, real_images=real_images):
            log.write(name, "reshipped-float16", 0, 0, 0.0)
    if not todo:
        return report
    if images is None:
        images = load_training_images()
        train_data = f"Fashion-MNIST train ({len(images):,} images padded to 32 x 32)"
    else:
        train_data = f"{len(images):,} given images"
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (1, 32, 32):
        raise ValueError(f"training images must be uint8 N x 1 x 32 x 32, got {images.dtype} {images.shape}")
    data = torch.from_numpy(np.ascontiguousarray(images)).to(dev)
    for i, row in enumerate(todo):
        state = train_model(row, out, data, device=dev, log=log, checkpoint_every_s=checkpoint_every_s,
                            stop_after=stop_after, n_samples=n_samples, sample_seed=sample_seed,
                            progress=progress, label=f"[{i + 1}/{len(todo)}] {row['name']}",
                            train_data=train_data, encoder=Path(encoder) if encoder else None,
                            real_images=real_images)
        (report.finished if state == "finished" else report.stopped).append(row["name"])
    return report


def status(out: str | os.PathLike) -> pd.DataFrame:
    """Per model of out/plan.csv: state, iterations done, plan estimate, wall time so far, time left."""
    out = Path(out)
    if not (out / "plan.csv").exists():
        raise BuildError(f"{out} has no plan.csv: not a zoo build folder (run `manifpt zoo build` first)")
    table = plan_mod.validate(pd.read_csv(out / "plan.csv", dtype=str, keep_default_na=False), str(out / "plan.csv"))
    done = finished_results(out)
    nan = float("nan")
    rows = []
    for r in table.to_dict("records"):
        name, total = r["name"], int(r["iterations"])
        est = float(r["est_minutes"]) if "est_minutes" in r and pd.notna(r["est_minutes"]) else nan
        sidecar = out / "checkpoints" / f"{name}.json"
        if name in done:
            res = done[name]
            q = res.get("quality") or {}
            rows.append({"name": name, "family": r["family"], "state": "finished", "iteration": res["iterations_done"],
                         "iterations": total, "est_minutes": est,
                         "wall_minutes": (res["train_seconds"] + res["sample_seconds"]) / 60, "left_minutes": 0.0,
                         "precision": q.get("precision", nan), "recall": q.get("recall", nan)})
        elif sidecar.exists():
            info = json.loads(sidecar.read_text(encoding="utf-8"))
            left = (total - info["iteration"]) * info["s_per_iter"] / 60
            rows.append({"name": name, "family": r["family"], "state": "training", "iteration": info["iteration"],
                         "iterations": total, "est_minutes": est, "wall_minutes": info["elapsed_s"] / 60,
                         "left_minutes": left, "precision": nan, "recall": nan})
        else:
            rows.append({"name": name, "family": r["family"], "state": "pending", "iteration": 0, "iterations": total,
                         "est_minutes": est, "wall_minutes": 0.0, "left_minutes": est, "precision": nan, "recall": nan})
    return pd.DataFrame(rows)
