"""Training of the learned spaces' encoders: SL (a classifier of the real images) and SSL (SimCLR).

Seeded and resumable: the batch order of an epoch and the augmentations of a step are drawn from
generators seeded by (seed, epoch) and (seed, step), so a run restarted from a checkpoint (model,
optimizer, step, the epoch's running sums) continues exactly as if it had never stopped.
Checkpoints are written atomically every few minutes and at each epoch's end, and read back with
torch.load(weights_only=True).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fingerprint_core import devices, encoders, spaces
from fingerprint_core.encoders import ConvEncoder, EncoderConfig
from fingerprint_core.fsio import atomic_write
from fingerprint_core.pipeline import Progress

OBJECTIVES = ("classifier", "simclr")  # cross-entropy on class labels; SimCLR, no labels
# the spaces whose offline default encoder is trained here, each by its SpaceInfo.encoder_objective
KINDS = tuple(n for n in spaces.names() if spaces.info(n).encoder_objective in OBJECTIVES)
LABELS_FILE = "labels.csv"  # in DATA_ROOT/real/: file,label


# ---------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class Augment:
    """Random views of uint8 images as float pixels in [0, 1]: crop, flip, shift, jitter, blur, noise."""

    scale: tuple[float, float] = (1.0, 1.0)  # area of the resized crop, as a fraction of the image
    ratio: tuple[float, float] = (1.0, 1.0)  # aspect ratio (width / height) of the crop
    translate: float = 0.0  # extra shift of the crop, as a fraction of the image size
    flip: bool = False  # horizontal flip, half the time
    brightness: float = 0.0  # multiply by U(1 - b, 1 + b) (black stays black)
    contrast: float = 0.0  # scale the deviation from the image mean by U(1 - c, 1 + c)
    blur_p: float = 0.0  # share of images blended with a 3 x 3 binomial blur, by U(0, 1)
    noise: float = 0.0  # half the images get Gaussian noise of std U(0, noise)

    def __call__(self, x_uint8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One random view of each image (N x C x H x W uint8 -> float32 in [0, 1])."""
        n, dev = len(x_uint8), x_uint8.device
        x = x_uint8.to(torch.float32) / 255

        def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
            # drawn on the CPU in a fixed order, so a step's views depend on its seed alone
            return (lo + (hi - lo) * torch.rand(n, *shape, generator=gen)).to(dev)

        # resized crop + flip + shift as one affine map of the sampling grid (coordinates in [-1, 1])
        area = u(*self.scale)
        log_r = u(math.log(self.ratio[0]), math.log(self.ratio[1]))
        sw = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
        sh = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
        cx = (1 - sw) * u(-1, 1) + 2 * self.translate * u(-1, 1)
        cy = (1 - sh) * u(-1, 1) + 2 * self.translate * u(-1, 1)
        sign = torch.where(u(0, 1) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n, device=dev)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw * sign, cx, sh, cy
        if not torch.equal(theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]], device=dev).expand(n, 2, 3)):
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            # outside the image is zero: the black background of the garments
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        b = u(1 - self.brightness, 1 + self.brightness, 1, 1, 1)
        c = u(1 - self.contrast, 1 + self.contrast, 1, 1, 1)
        if self.brightness or self.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (((x - mean) * c + mean) * b).clamp(0, 1)

        amount = u(0, 1, 1, 1, 1) * (u(0, 1, 1, 1, 1) < self.blur_p)
        if self.blur_p > 0:
            k = torch.tensor([1.0, 2.0, 1.0], device=dev)
            k = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
            blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])
            x = x + amount * (blurred - x)
        std = u(0, self.noise, 1, 1, 1) * (u(0, 1, 1, 1, 1) < 0.5)
        z = torch.randn(x.shape, generator=gen).to(dev)
        return (x + std * z).clamp(0, 1) if self.noise else x


# Light for the classifier: small shifts and zooms, mirror images. Strong for SimCLR, whose
# features learn what the views share, but mild enough that a crop still shows the garment.
SL_AUGMENT = Augment(scale=(0.8, 1.0), ratio=(0.9, 1.1), translate=0.0625, flip=True)
SSL_AUGMENT = Augment(
    scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), translate=0.0625, flip=True,
    brightness=0.4, contrast=0.4, blur_p=0.3, noise=0.05,
)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one encoder's training (stored in its card and its weights' metadata)."""

    kind: str = "sl"  # the space; its encoder_objective says how: class labels (classifier) or none (SimCLR)
    epochs: int = 15
    batch_size: int = 256
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum 0.9) | "adamw"
    lr: float = 0.1  # peak learning rate, after a linear warmup; cosine decay to 0
    warmup_epochs: float = 1.0
    weight_decay: float = 5e-4  # on conv / linear weights only, not on norms and biases
    temperature: float = 0.2  # SimCLR's softmax temperature
    seed: int = 0
    augment: Augment = field(default_factory=Augment)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}; choose sgd or adamw")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs={self.epochs} must be >= 1 and batch_size={self.batch_size} >= 2")


# Presets (plain data). SL: plain SGD with a cosine schedule. SSL: SimCLR with a two-layer
# projector, Adam (no LARS at this batch size); in a 116-step pilot on 15,000 images (crop area
# 0.4-1) temperature 0.2 beat 0.5 (linear probe on the embed layer 82.3% vs 81.5%; 78.5% untrained).
SL_TRAIN = TrainConfig(
    kind="sl", epochs=15, batch_size=256, optimizer="sgd", lr=0.1, weight_decay=5e-4, augment=SL_AUGMENT,
)
SSL_TRAIN = TrainConfig(
    kind="ssl", epochs=20, batch_size=512, optimizer="adamw", lr=2e-3, weight_decay=1e-4,
    temperature=0.2, augment=SSL_AUGMENT,
)
OBJECTIVE_PRESETS = {"classifier": SL_TRAIN, "simclr": SSL_TRAIN}


def supervised(kind: str) -> bool:
    """Whether the space's encoder trains on class labels (a classifier) rather than without them (SimCLR)."""
    return spaces.info(kind).encoder_objective == "classifier"


PRESETS = {k: replace(OBJECTIVE_PRESETS[spaces.info(k).encoder_objective], kind=k) for k in KINDS}


def encoder_config(kind: str, images: np.ndarray, *, num_classes: int = 10) -> EncoderConfig:
    """The encoder for these images: channels and size from the data, normalised by its pixel statistics."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {', '.join(KINDS)}")
    _, c, h, w = images.shape
    # one more stage per doubling past 32 px, so the last feature map stays about 4 x 4
    extra = max(0, round(math.log2(min(h, w) / 32)))
    widths = (32, 64, 128) + (128,) * extra
    sample = images[:: max(1, len(images) // 10_000)].astype(np.float64) / 255  # the statistics of ~10k images
    stats = dict(mean=round(float(sample.mean()), 4), std=round(float(sample.std()) or 1.0, 4))
    shape = dict(in_channels=c, widths=widths, image_size=h, **stats)
    if supervised(kind):
        return EncoderConfig(feature_dim=128, num_outputs=num_classes, **shape)
    # SSL features: the last conv map pooled to 2 x 2 (512 values). On a train/validation split of
    # Fashion-MNIST (linear probe fit on 20,000 train images, scored on 10,000 others; epoch 5 of the
    # demo run) it scored 87.4%, the global pool 85.8%, the embed layer 84.7%: SimCLR's crops and flips
    # teach invariance, and the layout of a garment still tells classes apart.
    return EncoderConfig(feature_dim=256, head_hidden=256, num_outputs=128, feature_grid=2, **shape)


# ---------------------------------------------------------------------------------------------
# Losses and metrics


def nt_xent(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's loss over 2N projections (view 1 of each image, then view 2); returns (loss, pair accuracy)."""
    n = len(z) // 2
    z = F.normalize(z, dim=1)
    sim = z @ z.T / temperature  # (2N, 2N)
    sim.fill_diagonal_(float("-inf"))  # an image is not its own positive
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target), (sim.argmax(1) == target).float().mean()


@torch.no_grad()
def embed(model: ConvEncoder, images: np.ndarray | torch.Tensor, *, batch_size: int = 4096,
          head_input: bool = False) -> torch.Tensor:
    """Features of uint8 images (float32, on the CPU), in eval mode; head_input: the head's input instead."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = torch.as_tensor(images)
    fn = (lambda b: model.encode(b.float() / 255)) if head_input else model.features
    out = torch.cat([fn(x[a : a + batch_size].to(dev)).cpu() for a in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


@torch.no_grad()
def accuracy(model: ConvEncoder, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 4096) -> float:
    """Share of images whose head's argmax is their label (the classifier's accuracy)."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    x, y = torch.as_tensor(images), torch.as_tensor(labels)
    hits = 0
    for a in range(0, len(x), batch_size):
        hits += int((model(x[a : a + batch_size].to(dev)).argmax(1).cpu() == y[a : a + batch_size]).sum())
    model.train(was_training)
    return hits / max(1, len(x))


def knn_accuracy(train: torch.Tensor, train_labels: np.ndarray, test: torch.Tensor, test_labels: np.ndarray,
                 *, k: int = 20) -> float:
    """Accuracy of a k-nearest-neighbour vote (cosine similarity): a cheap monitor of feature quality."""
    a, b = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    ytr = torch.as_tensor(train_labels)
    n_classes = int(max(ytr.max(), torch.as_tensor(test_labels).max())) + 1
    hits = 0
    for s in range(0, len(b), 1024):
        sim, idx = (b[s : s + 1024] @ a.T).topk(min(k, len(a)), dim=1)
        votes = torch.zeros(len(idx), n_classes).scatter_add_(1, ytr[idx], sim.exp())
        hits += int((votes.argmax(1) == torch.as_tensor(test_labels[s : s + 1024])).sum())
    return hits / max(1, len(b))


def linear_probe(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> float:
    """Test accuracy of a logistic regression fit on standardised frozen train features."""
    from sklearn.linear_model import LogisticRegression  # only the evaluation needs scikit-learn
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    # C=1 fixed beforehand: tuning it on the test set would flatter the features
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(train), train_labels)
    return float(clf.score(scaler.transform(test), test_labels))


# ---------------------------------------------------------------------------------------------
# The training loop


@dataclass
class TrainResult:
    """A trained (or, when stopped early on purpose, partly trained) encoder and its log."""

    model: ConvEncoder
    history: list[dict]  # one row per finished epoch
    steps: int
    total_steps: int
    wall_time_s: float  # training time summed over all sessions that worked on this run
    device: str

    @property
    def finished(self) -> bool:
        return self.steps >= self.total_steps


def _lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _optimizer(model: ConvEncoder, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]  # conv and linear weights
    rest = [p for n, p in model.named_parameters() if p.ndim <= 1]  # norms and biases
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _signature(cfg: TrainConfig, enc: EncoderConfig, images: torch.Tensor, labels: torch.Tensor | None) -> str:
    """What a checkpoint must match to be resumed: settings, architecture and the data itself."""
    digest = hashlib.sha256(images.cpu().numpy().tobytes())
    if labels is not None:
        digest.update(labels.cpu().numpy().astype(np.int64).tobytes())
    net = asdict(enc)
    net.pop("feature_grid")  # which layer the space reads out does not change training
    return json.dumps({"train": asdict(cfg), "encoder": net, "data": digest.hexdigest()}, sort_keys=True)


def _save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())  # a crash mid-write leaves the previous checkpoint intact


def train(
    images: np.ndarray,
    labels: np.ndarray | None,
    cfg: TrainConfig,
    enc: EncoderConfig,
    *,
    device: str | torch.device = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every_s: float = 180.0,
    max_steps: int | None = None,
    evaluate: Callable[[ConvEncoder], dict] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train an SL classifier (labels given) or a SimCLR encoder (labels unused) on uint8 N x C x H x W images.

    With a checkpoint path, resumes from it when it exists and matches, and keeps it up to date;
    max_steps stops early (after checkpointing), to split a long run across sessions.
    evaluate(model) -> {name: value} runs after each epoch, for the log only.
    """
    progress = progress or Progress()
    dev = devices.resolve(device)
    x_all = torch.as_tensor(np.ascontiguousarray(images)).to(dev)
    if x_all.dtype != torch.uint8 or x_all.ndim != 4:
        raise ValueError(f"images must be uint8 N x C x H x W, got {x_all.dtype} {tuple(x_all.shape)}")
    y_all = None
    labelled = supervised(cfg.kind)  # once: the step loop below asks every step
    if labelled:
        if labels is None or len(labels) != len(images):
            raise ValueError("SL training needs one class label per image")
        y_all = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(dev)
    n = len(x_all)
    bs = min(cfg.batch_size, n)
    if bs < 2:
        raise ValueError(f"{n} image(s) are too few to train an encoder")
    steps_per_epoch = n // bs  # whole batches only: BatchNorm and SimCLR's negatives want a fixed size
    total = cfg.epochs * steps_per_epoch

    with torch.random.fork_rng(devices=[]):  # seed the initial weights without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = ConvEncoder(enc).to(dev)
    opt = _optimizer(model, cfg)
    signature = _signature(cfg, enc, x_all, y_all)
    step, history, wall, sums = 0, [], 0.0, {"loss": 0.0, "acc": 0.0, "n": 0}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        if state.get("signature") != signature:
            raise ValueError(
                f"checkpoint {ckpt} belongs to another run (other settings or data); "
                "delete it to start afresh, or rerun with the settings that made it"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history, wall, sums = state["step"], state["history"], state["wall_s"], state["sums"]
        progress.log(f"{cfg.kind}: resuming from {ckpt} at step {step}/{total} (epoch {step // steps_per_epoch + 1})")

    def save_state() -> None:
        if ckpt is not None:
            _save_checkpoint(ckpt, {
                "signature": signature, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "step": step, "history": history, "wall_s": wall, "sums": sums,
            })

    stop = total if max_steps is None else min(total, max_steps)
    model.train()
    t_seg = t_ckpt = time.perf_counter()
    while step < stop:
        epoch, start = divmod(step, steps_per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).to(dev)
        bar = progress.task(f"{cfg.kind} epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
        bar.update(start)
        for i in range(start, steps_per_epoch):
            idx = order[i * bs : (i + 1) * bs]
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, step, total, steps_per_epoch)
            if labelled:
                logits = model.head(model.encode(cfg.augment(x_all[idx], gen)))
                loss = F.cross_entropy(logits, y_all[idx])
                acc = (logits.argmax(1) == y_all[idx]).float().mean()
            else:
                views = torch.cat([cfg.augment(x_all[idx], gen), cfg.augment(x_all[idx], gen)])
                loss, acc = nt_xent(model.head(model.encode(views)), cfg.temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{cfg.kind}: the loss became {loss.item()} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sums = {"loss": sums["loss"] + loss.item(), "acc": sums["acc"] + acc.item(), "n": sums["n"] + 1}
            bar.update(1)
            if step >= stop and step % steps_per_epoch:
                break
            if time.perf_counter() - t_ckpt > checkpoint_every_s:
                now = time.perf_counter()
                wall, t_seg, t_ckpt = wall + now - t_seg, now, now
                save_state()
        bar.close()
        now = time.perf_counter()
        wall, t_seg = wall + now - t_seg, now
        if step % steps_per_epoch == 0:  # the epoch is complete
            row = {"epoch": epoch + 1, "loss": sums["loss"] / sums["n"],
                   ("train_acc" if labelled else "pair_acc"): sums["acc"] / sums["n"],
                   "lr": opt.param_groups[0]["lr"], "wall_s": round(wall, 1)}
            if evaluate is not None:
                row.update(evaluate(model))
                model.train()
            history.append(row)
            sums = {"loss": 0.0, "acc": 0.0, "n": 0}
            progress.log(f"{cfg.kind} " + "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        t_seg = time.perf_counter()  # evaluation time is not training time
        save_state()
        t_ckpt = time.perf_counter()
    model.eval()
    return TrainResult(model, history, step, total, wall, str(dev))


# ---------------------------------------------------------------------------------------------
# Cards and outputs


def _describe_augment(a: Augment) -> str:
    parts = [f"resized crop (area {a.scale[0]:g}-{a.scale[1]:g}, aspect {a.ratio[0]:.3g}-{a.ratio[1]:.3g})"]
    if a.translate:
        parts.append(f"shift up to {a.translate:g} of the size")
    if a.flip:
        parts.append("horizontal flip")
    if a.brightness or a.contrast:
        parts.append(f"brightness x U(1 +/- {a.brightness:g}), contrast x U(1 +/- {a.contrast:g})")
    if a.blur_p:
        parts.append(f"3 x 3 blur on {a.blur_p:.0%} of images")
    if a.noise:
        parts.append(f"Gaussian noise (std up to {a.noise:g}) on half")
    return "; ".join(parts)


def train_config_from_dict(raw: dict) -> TrainConfig:
    """The TrainConfig stored (as JSON) in a weights file's metadata."""
    aug = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["augment"].items()}
    return TrainConfig(**{**raw, "augment": Augment(**aug)})


def write_card(weights: str | os.PathLike) -> Path:
    """Write the markdown card beside a trained encoder's weights, from their metadata alone; returns its path."""
    weights = Path(weights)
    model, meta = encoders.load(weights)
    kind, enc = meta["kind"], model.cfg
    cfg = train_config_from_dict(json.loads(meta["train_config"]))
    macs = encoders.macs_per_image(enc)
    g = enc.feature_grid
    what = ("the last conv map, pooled to {g} x {g}," if g else "the penultimate features").format(g=g) + (
        " of a classifier trained with cross-entropy on the class labels" if supervised(kind)
        else " of a SimCLR encoder trained without labels")
    readout = (f"the features: the last conv map average-pooled to {g} x {g} ({model.out_dim} values); "
               f"linear {enc.widths[-1]} -> {enc.feature_dim} + ReLU after a global average pool" if g else
               f"global average pool; linear {enc.widths[-1]} -> {enc.feature_dim} + ReLU = the features")
    head = (f"linear classifier {enc.feature_dim} -> {enc.num_outputs}" if not enc.head_hidden
            else f"projector {enc.feature_dim} -> {enc.head_hidden} -> {enc.num_outputs}, for training only")
    threads = int(meta.get("threads", 0))
    lines = [
        f"# {kind.upper()} encoder", "",
        f"The {kind.upper()} space: {what}. Weights: `{weights.name}` (safetensors; config and these facts in its "
        "metadata).", "",
        f"- Data: {meta['data']}",
        f"- Architecture: {len(enc.widths)} stages of [3x3 conv stride 2, 3x3 conv stride 1] (BatchNorm, ReLU), "
        f"widths {', '.join(map(str, enc.widths))}; {readout}; head: {head}. "
        f"Input: pixels / 255, normalised by mean {enc.mean}, std {enc.std}.",
        f"- Cost per {enc.image_size} x {enc.image_size} image: {macs / 1e6:.2f} M multiply-adds "
        f"({2 * macs / 1e6:.1f} MFLOPs: the convolutions and linear layers of the features path); "
        f"{encoders.num_params(model) / 1e3:.0f}k parameters in the features path "
        f"({encoders.num_params(model, features_only=False) / 1e3:.0f}k with the head).",
        f"- Training: {cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g} "
        f"(warmup {cfg.warmup_epochs:g} epoch, cosine), weight decay {cfg.weight_decay:g}"
        + (f", temperature {cfg.temperature:g}" if not supervised(kind) else "") + f"; seed {cfg.seed}.",
        f"- Augmentation: {_describe_augment(cfg.augment)}.",
        f"- Wall time: {float(meta['wall_time_s']) / 60:.1f} min on {meta['device']} "
        f"({threads} thread{'s' if threads != 1 else ''}; {meta.get('cpu', 'unknown CPU')}), torch {meta.get('torch')}.",
    ]
    lines += [f"- {k}: {v}" for k, v in json.loads(meta.get("metrics", "{}")).items()]
    lines += [f"- {note}" for note in json.loads(meta.get("notes", "[]"))]
    lines += ["", "Reproduce:", "", "```bash", meta["command"], "```", ""]
    history = json.loads(meta.get("history", "[]"))
    if history:
        keys = list(history[-1])
        lines += ["Per epoch (wall_s is cumulative; accuracies here watch the run, the last epoch is kept):", "",
                  "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in history:
            cells = [f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    card = weights.with_suffix(".md")
    atomic_write(card, "\n".join(lines).encode("utf-8"))
    return card


def _finish(out: Path, kind: str, result: TrainResult, cfg: TrainConfig, *, data: str, metrics: dict[str, str],
            meta: dict[str, object], command: str) -> Path:
    """Write weights (metadata: config, accuracy, training facts) and card; drop the checkpoint."""
    weights = out / f"{kind}.safetensors"
    encoders.save(
        result.model, weights, kind=kind, train_config=asdict(cfg), data=data, command=command,
        epochs=cfg.epochs, seed=cfg.seed, wall_time_s=round(result.wall_time_s, 1), device=result.device,
        threads=torch.get_num_threads(), cpu=devices.cpu_name(), torch=torch.__version__,
        macs_per_image=encoders.macs_per_image(result.model.cfg), params=encoders.num_params(result.model),
        history=result.history, metrics=metrics, **meta,
    )
    write_card(weights)
    (out / f"{kind}.ckpt").unlink(missing_ok=True)
    return weights


def _exists(out: Path, kind: str, overwrite: bool, progress: Progress) -> bool:
    """Whether finished weights are kept (a rerun after a stop goes on with the unfinished kinds)."""
    if overwrite or not (out / f"{kind}.safetensors").is_file():
        return False
    progress.log(f"{kind}: {out / f'{kind}.safetensors'} exists; kept (--force retrains it)")
    return True


def _stopped(kind: str, result: TrainResult, progress: Progress) -> bool:
    """Whether the run stopped early on purpose (--max-steps), saying how to go on."""
    if result.finished:
        return False
    progress.log(f"{kind}: stopped at step {result.steps}/{result.total_steps}; rerun the same command to continue")
    return True


def _config_for(kind: str, epochs: int | None, seed: int | None) -> TrainConfig:
    cfg = PRESETS[kind]
    if epochs is not None:
        cfg = replace(cfg, epochs=epochs)
    if seed is not None:
        cfg = replace(cfg, seed=seed)
    return cfg


# ---------------------------------------------------------------------------------------------
# The demo pair (Fashion-MNIST) and a user's pair (DATA_ROOT/real)


def train_fashion_mnist(out: str | os.PathLike, *, kinds: tuple[str, ...] = KINDS, epochs: dict[str, int] | None = None,
                        seed: int | None = None, device: str = "auto", command: str = "", max_steps: int | None = None,
                        overwrite: bool = False, progress: Progress | None = None) -> dict[str, Path | None]:
    """Train the demo's encoders on Fashion-MNIST train (60,000), evaluated on test (10,000)."""
    from fingerprint_core.datasets import load_fashion_mnist

    progress = progress or Progress()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    data = "Fashion-MNIST train (60,000 images, 28 x 28 zero-padded to 32 x 32); evaluated on its 10,000 test images"
    done: dict[str, Path | None] = {}
    for kind in kinds:
        if _exists(out, kind, overwrite, progress):
            done[kind] = out / f"{kind}.safetensors"
            continue
        cfg = _config_for(kind, (epochs or {}).get(kind), seed)
        enc = encoder_config(kind, x_train, num_classes=10)
        if supervised(kind):
            def evaluate(m: ConvEncoder) -> dict:
                # a monitor only: the last epoch is kept, whatever this shows
                return {"test_acc": accuracy(m, x_test, y_test)}
        else:
            # labels only watch the run (kNN on 10,000 train images, the head's input); training never sees them
            def evaluate(m: ConvEncoder) -> dict:
                train_f, test_f = embed(m, x_train[:10_000], head_input=True), embed(m, x_test, head_input=True)
                return {"knn_acc": knn_accuracy(train_f, y_train[:10_000], test_f, y_test)}
        result = train(x_train, y_train if supervised(kind) else None, cfg, enc, device=device,
                       checkpoint=out / f"{kind}.ckpt", max_steps=max_steps, evaluate=evaluate, progress=progress)
        if _stopped(kind, result, progress):
            done[kind] = None
            continue
        if supervised(kind):
            acc = accuracy(result.model, x_test, y_test)
            metrics = {"Test accuracy (10,000 Fashion-MNIST test images)": f"{acc:.4f}"}
            meta = {"accuracy": f"{acc:.4f}", "metric": "test_accuracy"}
        else:
            progress.log(f"{kind}: linear probe (logistic regression on the frozen features, 60,000 train -> 10,000 test)")
            t = time.perf_counter()
            features = embed(result.model, x_train).numpy(), embed(result.model, x_test).numpy()
            acc = linear_probe(features[0], y_train, features[1], y_test)
            metrics = {"Linear-probe accuracy (standardised features, logistic regression C=1, "
                       "fit on 60,000 train, scored on 10,000 test)": f"{acc:.4f}"}
            meta = {"accuracy": f"{acc:.4f}", "metric": "linear_probe_accuracy"}
            progress.log(f"{kind}: linear probe {acc:.4f} ({time.perf_counter() - t:.0f} s)")
        done[kind] = _finish(out, kind, result, cfg, data=data, metrics=metrics, meta=meta, command=command)
        progress.log(f"{kind}: {metrics} -> {done[kind]}")
    return done


def read_labels(real_dir: Path, sources: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Class indices from real/labels.csv (file,label) for the given image sources (-1: unlabelled).

    Returns (labels, class names, warnings). File names are relative to real/ (`a/b.png`, or
    `x.npz[7]` for the 8th image of an npz).
    """
    import pandas as pd

    from fingerprint_core.datasets import DatasetError

    path = real_dir / LABELS_FILE
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise DatasetError(f"{path} cannot be read ({err})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    if not {"file", "label"} <= set(table.columns):
        raise DatasetError(f"{path} needs the columns file,label (found: {', '.join(table.columns)})")
    table = table.assign(file=table["file"].str.strip(), label=table["label"].str.strip())
    table = table[table["label"] != ""]
    classes = sorted(set(table["label"]))
    index = {c: i for i, c in enumerate(classes)}
    by_file = dict(zip(table["file"], table["label"], strict=True))
    labels = np.array([index[by_file[s]] if s in by_file else -1 for s in sources], dtype=np.int64)
    warnings = []
    unused = len(set(by_file) - set(sources))
    if unused:
        warnings.append(f"{LABELS_FILE}: {unused} row(s) name no image that was read from real/")
    missing = int((labels < 0).sum())
    if missing:
        warnings.append(f"{LABELS_FILE}: {missing} image(s) of real/ have no label and are left out of SL")
    return labels, classes, warnings


def train_dataset(data_root: str | os.PathLike, out: str | os.PathLike | None = None, *, kinds: tuple[str, ...] = KINDS,
                  epochs: dict[str, int] | None = None, seed: int | None = None, device: str = "auto",
                  command: str = "", max_steps: int | None = None, holdout: float = 0.1, overwrite: bool = False,
                  progress: Progress | None = None) -> dict[str, Path | None]:
    """Train a pair on a GM dataset's real/ images (SL only with real/labels.csv); default out: DATA_ROOT/encoders."""
    from fingerprint_core.datasets import DatasetError, read_images

    progress = progress or Progress()
    root = Path(data_root)
    real = root / "real"
    if not real.is_dir():
        raise DatasetError(f"{root} has no real/ folder: the encoders are trained on the real images")
    out = Path(out) if out is not None else root / "encoders"
    found = read_images(real)
    for bad in found.bad_files:
        progress.log(f"skipped real/{bad.file}: {bad.reason}")
    for warning in found.warnings:
        progress.log(f"warning: {warning}")
    images = found.images
    if len(images) < 2:
        raise DatasetError(f"{real} holds {len(images)} readable image(s); training needs more")
    labels = classes = None
    if (real / LABELS_FILE).is_file():
        labels, classes, warnings = read_labels(real, found.sources)
        for warning in warnings:
            progress.log(f"warning: {warning}")
    out.mkdir(parents=True, exist_ok=True)
    data = f"{root}/real ({len(images)} images, {' x '.join(map(str, images.shape[1:]))})"
    done: dict[str, Path | None] = {}
    for kind in kinds:
        if _exists(out, kind, overwrite, progress):
            done[kind] = out / f"{kind}.safetensors"
            continue
        cfg = _config_for(kind, (epochs or {}).get(kind), seed)
        # a seeded split of the labelled images: train on the rest, report accuracy on it
        split = None
        if labels is not None and len(set(labels[labels >= 0])) >= 2:
            labelled = np.flatnonzero(labels >= 0)
            perm = np.random.default_rng(cfg.seed).permutation(labelled)
            n_held = max(1, int(round(holdout * len(perm))))
            split = (np.sort(perm[n_held:]), np.sort(perm[:n_held]))
        if supervised(kind):
            if labels is None:
                progress.log(
                    f"{kind}: skipped: the {kind.upper()} space is a classifier of the real images and needs their class labels; "
                    f"add {real / LABELS_FILE} with the columns file,label (file relative to real/, e.g. cats/001.png, "
                    f"or x.npz[7] for an image inside an npz) and rerun with --kind {kind}")
                done[kind] = None
                continue
            if split is None:
                progress.log(f"{kind}: skipped: {real / LABELS_FILE} gives fewer than 2 classes to the images read")
                done[kind] = None
                continue
            train_idx, held_idx = split
            enc = encoder_config(kind, images[train_idx], num_classes=len(classes))
            result = train(images[train_idx], labels[train_idx], cfg, enc, device=device, checkpoint=out / f"{kind}.ckpt",
                           max_steps=max_steps, progress=progress,
                           evaluate=lambda m, held=held_idx: {"heldout_acc": accuracy(m, images[held], labels[held])})
            if _stopped(kind, result, progress):
                done[kind] = None
                continue
            acc = accuracy(result.model, images[held_idx], labels[held_idx])
            metrics = {f"Held-out accuracy ({len(held_idx)} labelled real images, seed {cfg.seed})": f"{acc:.4f}"}
            meta = {"accuracy": f"{acc:.4f}", "metric": "heldout_accuracy", "classes": classes}
            data_sl = f"{data}; {len(train_idx)} labelled images trained on, {len(held_idx)} held out"
            done[kind] = _finish(out, kind, result, cfg, data=data_sl, metrics=metrics, meta=meta, command=command)
        else:
            enc = encoder_config(kind, images)
            result = train(images, None, cfg, enc, device=device, checkpoint=out / f"{kind}.ckpt", max_steps=max_steps,
                           progress=progress)
            if _stopped(kind, result, progress):
                done[kind] = None
                continue
            metrics, meta = {"Accuracy": "not measured (no labels.csv with 2 or more classes)"}, {}
            if split is not None and len(set(labels[split[0]])) >= 2:
                tr, te = split
                feats = embed(result.model, images).numpy()
                acc = linear_probe(feats[tr], labels[tr], feats[te], labels[te])
                name = f"Linear-probe accuracy (labels used only here; {len(tr)} fit, {len(te)} scored)"
                metrics = {name: f"{acc:.4f}"}
                meta = {"accuracy": f"{acc:.4f}", "metric": "linear_probe_accuracy"}
            done[kind] = _finish(out, kind, result, cfg, data=data, metrics=metrics, meta=meta, command=command)
        progress.log(f"{kind}: wrote {done[kind]}")
    return done
