"""ManiFPT's attributor: a network trained on artifacts of one space, or fused over all four.

`ManiFPT("rgb")` reads the RGB artifacts only (likewise "freq", "sl", "ssl"); `ManiFPT("fused")`
reads all four. Every head (model, with "real" as one more class, and each design choice) is
trained at once; the loss is the sum of the heads' cross-entropies.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fingerprint_core import devices, spaces
from fingerprint_core.attribution import nets
from fingerprint_core.attribution.method import Classes, Inputs, Method, Targets, read_config, write_config
from fingerprint_core.workspace import REAL

WEIGHTS = "weights.safetensors"
FUSED = "fused"
EVAL_BATCH = 1024


def kinds() -> tuple[str, ...]:
    """Every attributor there can be: one per registered space, and the fused one."""
    return (*spaces.names(), FUSED)


def needs(kind: str) -> tuple[str, ...]:
    """The spaces an attributor reads."""
    return spaces.fused_names() if kind == FUSED else (kind,)

# Fusion: one trunk per space, their features concatenated, shared linear heads on top.
# - A trunk per space, because the spaces differ in kind (image-shaped RGB/FREQ artifacts want
#   convolutions, SL/SSL vectors an MLP) and in scale (each is standardised on its own).
# - Concatenated features with shared heads (late fusion, trained end to end), rather than an
#   average of four separate attributors' probabilities: a head can weigh one space's evidence for
#   one model and another space's for another (the paper finds no space best for every dataset),
#   and one feature vector serves the open-set score.
# - Not early fusion (one net on the stacked raw artifacts): the shapes do not match, and FREQ's
#   log-magnitudes and RGB's pixel differences would share filters that suit neither.


class ManiFPT(Method):
    """The attributor of one space ("rgb" | "freq" | "sl" | "ssl") or of all four ("fused")."""

    def __init__(self, space: str, *, epochs: int = 20, batch_size: int = 256, lr: float = 2e-3,
                 weight_decay: float = 0.05, patience: int = 4,
                 image_shape: tuple[int, int, int] | None = None,
                 progress: Callable[[dict], None] | None = None) -> None:
        space = str(space).lower()
        if space not in kinds():
            raise ValueError(f"space={space!r} is not a registered space: choose one of {', '.join(kinds())} "
                             "(a space of your own is registered by a module named in $MANIFPT_PLUGINS)")
        if epochs < 1 or batch_size < 2 or patience < 1 or lr <= 0 or weight_decay < 0:
            raise ValueError(f"epochs={epochs}, batch_size={batch_size}, patience={patience} must be >= 1 (batch >= 2); "
                             f"lr={lr} > 0, weight_decay={weight_decay} >= 0")
        self.space = space
        self.name = f"manifpt-{space}"
        self.needs = needs(space)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.patience = int(patience)
        self.image_shape = tuple(int(v) for v in image_shape) if image_shape is not None else None
        self.progress = progress
        self.net_: nets.Attributor | None = None

    # ---- building -----------------------------------------------------------------------
    def _build(self, dims: dict[str, int], heads: dict[str, int]) -> nets.Attributor:
        trunks = {}
        for s in self.needs:
            shape = None
            if spaces.info(s).image_shaped:
                shape = self.image_shape or nets.infer_image_shape(dims[s])
                if shape is None:
                    raise ValueError(f"{s} artifacts have dimension {dims[s]}, not a square 1- or 3-channel image; "
                                     "pass image_shape=(C, H, W)")
                self.image_shape = shape
            trunks[s] = nets.trunk_for(s, dims[s], shape)
        return nets.Attributor(trunks, heads)

    def _arrays(self, x: Inputs) -> dict[str, np.ndarray]:
        missing = [s for s in self.needs if s not in x.artifacts]
        if missing:
            raise ValueError(f"{self.name} needs the {', '.join(missing)} artifacts; the inputs hold "
                             f"{', '.join(x.artifacts) or 'none'}")
        return {s: x.artifacts[s] for s in self.needs}

    # ---- training -----------------------------------------------------------------------
    def fit(self, train: Inputs, targets: Targets, val: Inputs, val_targets: Targets, *, classes: Classes,
            seed: int = 0, device: str | torch.device = "auto", outliers: Inputs | None = None) -> ManiFPT:
        """Train every head with AdamW (cosine schedule); keep the epoch of best validation model accuracy.

        outliers: synthetic unknowns (synthetic.py); each step adds half a batch of them, and the model
        head's softmax on them is pulled towards uniform over the generated classes (outlier exposure)."""
        from fingerprint_core.attribution import synthetic

        dev = devices.resolve(device)
        xs, xv = self._arrays(train), self._arrays(val)
        xo = self._arrays(outliers) if outliers is not None else None
        n_out = len(next(iter(xo.values()))) if xo else 0
        heads = {h: len(classes[h]) for h in classes if h in targets}
        if "model" not in heads:
            raise ValueError("targets need the head 'model'")
        n = len(targets["model"])
        if n < 2:
            raise ValueError(f"{n} training sample(s): at least 2 are needed")
        self.classes_ = {h: list(classes[h]) for h in heads}
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # seeded without disturbing the caller's generators
            torch.manual_seed(seed)
            net = self._build({s: a.shape[1] for s, a in xs.items()}, heads)
            train_t = {s: torch.from_numpy(np.require(a, np.float32, ["C", "W"])) for s, a in xs.items()}
            for s, trunk in net.trunks.items():
                trunk.standardize.fit(train_t[s])
            net = net.to(dev).to(memory_format=torch.channels_last)
            train_t = {s: t.to(dev) for s, t in train_t.items()}  # one copy on the device, not per batch
            y = {h: torch.from_numpy(np.array(targets[h], dtype=np.int64)).to(dev) for h in heads}
            out_t = {s: torch.from_numpy(np.require(a, np.float32, ["C", "W"])).to(dev) for s, a in xo.items()} if n_out else {}
            generated = torch.tensor([c != REAL for c in classes["model"]], device=dev)
            out_gen = torch.Generator().manual_seed(seed + 1)
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            # small sets get smaller batches: at least 16 steps an epoch, so a few epochs can learn
            batch = min(self.batch_size, max(16, n // 16))
            steps = self.epochs * max(1, math.ceil(n / batch))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
            order_gen = torch.Generator().manual_seed(seed)
            best = (-1.0, 0, None)  # (val accuracy, epoch, state)
            self.history_ = []
            for epoch in range(1, self.epochs + 1):
                t0 = time.perf_counter()
                net.train()
                total, seen = 0.0, 0
                order = torch.randperm(n, generator=order_gen).to(dev)
                for a in range(0, n, batch):
                    idx = order[a : a + batch]
                    if len(idx) < 2:  # batch norm needs two samples
                        continue
                    if n_out:  # one pass over the batch and half a batch of outliers (shared batch norm)
                        o = torch.randint(n_out, (max(2, len(idx) // 2),), generator=out_gen).to(dev)
                        _, both = net({s: torch.cat([t[idx], out_t[s][o]]) for s, t in train_t.items()})
                        logits = {h: z[: len(idx)] for h, z in both.items()}
                        extra = synthetic.WEIGHT * synthetic.outlier_exposure(both["model"][len(idx):], generated)
                    else:
                        _, logits = net({s: t[idx] for s, t in train_t.items()})
                        extra = 0.0
                    loss = sum(F.cross_entropy(logits[h], y[h][idx]) for h in heads) + extra
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                    seen += len(idx)
                self.net_ = net
                val_acc = self._accuracy(xv, val_targets, heads)
                if not val_acc["model"] <= best[0]:  # NaN (no validation samples): keep the latest
                    best = (val_acc["model"], epoch, copy.deepcopy(net.state_dict()))
                row = {"epoch": epoch, "epochs": self.epochs, "train_loss": total / max(seen, 1),
                       "val_acc": val_acc, "best_epoch": best[1], "seconds": time.perf_counter() - t0}
                self.history_.append(row)
                if self.progress is not None:
                    self.progress(row)
                if epoch - best[1] >= self.patience:
                    break
        net.load_state_dict(best[2])
        net.eval()
        self.net_ = net
        self.best_epoch_ = best[1]
        self.device_ = dev
        return self

    def _accuracy(self, x: dict[str, np.ndarray], targets: Targets, heads: dict[str, int]) -> dict[str, float]:
        if len(next(iter(x.values()))) == 0:
            return {h: float("nan") for h in heads}
        _, logits = self._forward(x)
        return {h: float(np.mean(logits[h].argmax(1) == targets[h])) for h in heads if h in targets}

    # ---- predicting ---------------------------------------------------------------------
    def _check_fitted(self) -> nets.Attributor:
        if self.net_ is None:
            raise RuntimeError(f"{self.name} is not trained: call fit() or ManiFPT.load(folder) first")
        return self.net_

    @torch.no_grad()
    def _forward(self, x: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        net = self._check_fitted()
        was_training = net.training
        net.eval()
        dev = next(net.parameters()).device
        n = len(next(iter(x.values())))
        feats, logits = [], {h: [] for h in net.heads}
        for a in range(0, n, EVAL_BATCH):
            batch = {s: torch.from_numpy(np.require(v[a : a + EVAL_BATCH], np.float32, ["C", "W"])).to(dev) for s, v in x.items()}
            f, z = net(batch)
            feats.append(f.float().cpu().numpy())
            for h in z:
                logits[h].append(z[h].float().cpu().numpy())
        net.train(was_training)
        if not feats:
            width = nets.FEATURES * len(net.trunks)
            return np.zeros((0, width), np.float32), {h: np.zeros((0, len(self.classes_[h])), np.float32) for h in net.heads}
        return np.concatenate(feats), {h: np.concatenate(v) for h, v in logits.items()}

    def logits(self, x: Inputs) -> dict[str, np.ndarray]:
        """Per head, float32 N x n_classes scores."""
        return self._forward(self._arrays(x))[1]

    def features(self, x: Inputs) -> np.ndarray:
        """float32 N x (128 per space): the concatenated trunk features the heads read."""
        return self._forward(self._arrays(x))[0]

    def features_and_logits(self, x: Inputs) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Both in one pass (prediction needs the two)."""
        return self._forward(self._arrays(x))

    # ---- storing ------------------------------------------------------------------------
    def config(self) -> dict:
        """Everything load() needs besides the weights, plus the training record."""
        net = self._check_fitted()
        return {
            "method": "manifpt",
            "format": 1,
            "space": self.space,
            "needs": list(self.needs),
            "dims": {s: int(t.standardize.mean.numel()) for s, t in net.trunks.items()},
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "classes": self.classes_,
            "hyper": {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                      "weight_decay": self.weight_decay, "patience": self.patience},
            "best_epoch": getattr(self, "best_epoch_", None),
            "history": getattr(self, "history_", []),
        }

    def save(self, folder: Path) -> None:
        """weights.safetensors (the state dict, standardisation included) and config.json."""
        from safetensors.torch import save_file

        net = self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(folder / WEIGHTS))
        write_config(folder, self.config())

    @classmethod
    def load(cls, folder: Path, *, device: str | torch.device = "cpu") -> ManiFPT:
        """The attributor saved in folder (no pickle: safetensors and JSON only)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg = read_config(folder)
        if cfg.get("method") != "manifpt":
            raise ValueError(f"{folder} does not hold a ManiFPT attributor (config method {cfg.get('method')!r})")
        m = cls(cfg["space"], image_shape=cfg.get("image_shape"), **cfg["hyper"])
        m.classes_ = {h: list(v) for h, v in cfg["classes"].items()}
        net = m._build({s: int(d) for s, d in cfg["dims"].items()}, {h: len(v) for h, v in m.classes_.items()})
        net.load_state_dict(load_file(str(folder / WEIGHTS)))
        dev = devices.resolve(device)
        m.net_ = net.to(dev).to(memory_format=torch.channels_last).eval()
        m.device_ = dev
        m.best_epoch_ = cfg.get("best_epoch")
        m.history_ = cfg.get("history", [])
        return m
