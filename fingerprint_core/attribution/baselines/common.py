"""What the baselines share: image checks, per-head linear and k-NN classifiers picked on
validation, and the CNN training loop (a shared trunk with one linear head per target head)."""

from __future__ import annotations

import copy
import time
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fingerprint_core import devices
from fingerprint_core.attribution.method import Classes, Inputs, Method, Targets, read_config, write_config

ABSENT = -1e4  # logit of a class with no training sample (softmax gives it ~0, stays finite)


# ---- images --------------------------------------------------------------------------------

def images_of(x: Inputs, who: str) -> np.ndarray:
    """The uint8 N x C x H x W images of x (ValueError naming the method when they are missing)."""
    if x.images is None:
        raise ValueError(f"{who} works on images, but the inputs carry none (only {sorted(x.artifacts)})")
    imgs = np.asarray(x.images)
    if imgs.dtype != np.uint8 or imgs.ndim != 4:
        raise ValueError(f"{who}: images must be uint8 N x C x H x W, got {imgs.dtype} {imgs.shape}")
    return imgs


def in_blocks(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, block: int = 4096) -> np.ndarray:
    """fn over blocks of images, concatenated (memory stays bounded by the block)."""
    parts = [fn(np.asarray(images[a:a + block])) for a in range(0, len(images), block)]
    return np.concatenate(parts) if parts else fn(np.asarray(images[:0]))


def check_fit(targets: Targets, classes: Classes, n: int, who: str) -> None:
    """Every head of classes has labels for all n training rows."""
    if "model" not in classes:
        raise ValueError(f"{who}: classes must have the head 'model', got {sorted(classes)}")
    for head in classes:
        if head not in targets or len(targets[head]) != n:
            raise ValueError(f"{who}: targets[{head!r}] must hold {n} labels")


# ---- classifiers on hand-crafted features -----------------------------------------------------

class LinearHeads:
    """Per head, a multinomial logistic regression on standardised features; its L2 strength C is
    the one of `Cs` with the best validation accuracy (ties: the stronger penalty).

    The objective is sklearn's (C * sum of losses + |W|^2 / 2), minimised by full-batch L-BFGS in
    torch for every head at once: sklearn's solver took minutes on 1,024 correlated DCT features.
    """

    kind = "linear"

    def __init__(self, *, Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), max_iter: int = 100) -> None:
        self.Cs, self.max_iter = tuple(float(c) for c in Cs), int(max_iter)

    def fit(self, X, targets, Xv, val_targets, classes, seed: int = 0) -> LinearHeads:
        self.mean_ = X.mean(0).astype(np.float32)
        scale = X.std(0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0).astype(np.float32)
        Z, Zv = torch.from_numpy(self._standardise(X)), self._standardise(Xv)
        ys = {h: torch.from_numpy(np.array(targets[h], np.int64)) for h in classes}  # a copy: targets may be read-only
        # a class without training samples gets no probability (and is never predicted)
        masks = {h: torch.where(torch.bincount(ys[h], minlength=len(n)) > 0, 0.0, ABSENT) for h, n in classes.items()}
        # every head's weights stacked (K_total x F): one matmul per step serves them all
        cuts = np.cumsum([0] + [len(n) for n in classes.values()])
        span = {h: slice(int(cuts[i]), int(cuts[i + 1])) for i, h in enumerate(classes)}
        W = torch.zeros(int(cuts[-1]), Z.shape[1], requires_grad=True)
        b = torch.zeros(int(cuts[-1]), requires_grad=True)
        mask = torch.cat([masks[h] for h in classes])
        best: dict[str, tuple] = {}
        for C in sorted(self.Cs):  # increasing C, each fit starting from the last one's solution
            _lbfgs(Z, ys, span, W, b, mask, C, self.max_iter)
            for h in classes:
                Wh, bh = W[span[h]].detach().numpy().copy(), (b + mask)[span[h]].detach().numpy().copy()
                acc = float(np.mean((Zv @ Wh.T + bh).argmax(1) == val_targets[h])) if len(Zv) else 0.0
                if h not in best or acc > best[h][0]:
                    best[h] = (acc, C, Wh, bh)
        self.C_ = {h: v[1] for h, v in best.items()}
        self.coef_ = {h: v[2] for h, v in best.items()}
        self.intercept_ = {h: v[3].astype(np.float32) for h, v in best.items()}
        return self

    def logits(self, X: np.ndarray) -> dict[str, np.ndarray]:
        Z = self._standardise(X)
        return {h: (Z @ W.T + self.intercept_[h]).astype(np.float32) for h, W in self.coef_.items()}

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean_) / self.scale_).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"mean": self.mean_, "scale": self.scale_}
        for h in self.coef_:
            out[f"coef.{h}"], out[f"intercept.{h}"] = self.coef_[h], self.intercept_[h]
        return out

    def state(self) -> dict:
        return {"Cs": list(self.Cs), "max_iter": self.max_iter, "chosen_C": self.C_}

    @classmethod
    def restore(cls, state: dict, arrays: dict[str, np.ndarray], heads: list[str]) -> LinearHeads:
        self = cls(Cs=tuple(state["Cs"]), max_iter=state["max_iter"])
        self.mean_, self.scale_, self.C_ = arrays["mean"], arrays["scale"], state["chosen_C"]
        self.coef_ = {h: arrays[f"coef.{h}"] for h in heads}
        self.intercept_ = {h: arrays[f"intercept.{h}"] for h in heads}
        return self


def _lbfgs(Z, ys, span, W, b, mask, C: float, max_iter: int) -> None:
    """Minimise, per head, C * sum(cross-entropy) + |W_head|^2 / 2, all heads at once, in place."""
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")
    n = len(Z)

    def closure():
        opt.zero_grad()
        z = Z @ W.T + b + mask  # (N, K_total)
        # mean loss + |W|^2 / (2 C n): sklearn's objective divided by C n (the heads are independent)
        loss = sum(torch.nn.functional.cross_entropy(z[:, sl], ys[h]) for h, sl in span.items())
        loss = loss + (W ** 2).sum() / (2 * C * n)
        loss.backward()
        return loss

    opt.step(closure)


class KNNHeads:
    """Per head, a k-nearest-neighbour vote on standardised features (k picked on validation);
    logits are log vote shares, smoothed so no class is impossible."""

    kind = "knn"

    def __init__(self, *, ks: tuple[int, ...] = (5, 15, 45)) -> None:
        self.ks = tuple(int(k) for k in ks)

    def fit(self, X, targets, Xv, val_targets, classes, seed: int = 0) -> KNNHeads:
        self.mean_ = X.mean(0).astype(np.float32)
        scale = X.std(0)
        self.scale_ = np.where(scale > 1e-12, scale, 1.0).astype(np.float32)
        self.train_ = self._standardise(X)
        self.labels_ = {h: np.asarray(targets[h], np.int64) for h in classes}
        self.n_classes_ = {h: len(n) for h, n in classes.items()}
        self.k_ = {h: min(self.ks[0], len(X)) for h in classes}
        if len(Xv):
            votes = self._neighbours(Xv, max(self.ks))
            ks = [k for k in sorted(self.ks) if k <= len(X)] or [len(X)]
            for h in classes:
                accs = [np.mean(self._votes(votes, h, k).argmax(1) == val_targets[h]) for k in ks]
                self.k_[h] = ks[int(np.argmax(accs))]  # first best: the smallest k among ties
        return self

    def _neighbours(self, X: np.ndarray, k: int) -> np.ndarray:
        from sklearn.neighbors import NearestNeighbors

        nn_ = NearestNeighbors(n_neighbors=min(k, len(self.train_))).fit(self.train_)
        return nn_.kneighbors(self._standardise(X), return_distance=False)  # (N, k), nearest first

    def _votes(self, idx: np.ndarray, head: str, k: int) -> np.ndarray:
        labels = self.labels_[head][idx[:, :k]]  # (N, k)
        n = self.n_classes_[head]
        counts = np.zeros((len(idx), n), np.float64)
        np.add.at(counts, (np.repeat(np.arange(len(idx)), labels.shape[1]), labels.ravel()), 1.0)
        return counts

    def logits(self, X: np.ndarray) -> dict[str, np.ndarray]:
        idx = self._neighbours(X, max(self.k_.values()))
        out = {}
        for h, k in self.k_.items():
            n = self.n_classes_[h]
            out[h] = np.log((self._votes(idx, h, k) + 1.0 / n) / (k + 1.0)).astype(np.float32)
        return out

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean_) / self.scale_).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "scale": self.scale_, "train": self.train_,
                **{f"labels.{h}": y for h, y in self.labels_.items()}}

    def state(self) -> dict:
        return {"ks": list(self.ks), "chosen_k": self.k_, "n_classes": self.n_classes_}

    @classmethod
    def restore(cls, state: dict, arrays: dict[str, np.ndarray], heads: list[str]) -> KNNHeads:
        self = cls(ks=tuple(state["ks"]))
        self.mean_, self.scale_, self.train_ = arrays["mean"], arrays["scale"], arrays["train"]
        self.labels_ = {h: arrays[f"labels.{h}"] for h in heads}
        self.k_ = {h: int(state["chosen_k"][h]) for h in heads}
        self.n_classes_ = {h: int(state["n_classes"][h]) for h in heads}
        return self


CLASSIFIERS = {"linear": LinearHeads, "knn": KNNHeads}


class FeatureMethod(Method):
    """A baseline that is a fixed feature extractor on images plus per-head classifiers."""

    needs = ("images",)
    classifier_kind = "linear"

    def __init__(self, **params) -> None:
        self.params = params  # classifier hyperparameters (Cs or ks), stored as given

    @abstractmethod
    def extract(self, images: np.ndarray) -> np.ndarray:
        """float32 N x F hand-crafted features of uint8 N x C x H x W images."""

    def fit(self, train, targets, val, val_targets, *, classes, seed=0, device="auto"):
        check_fit(targets, classes, len(train), self.name)
        X = in_blocks(self.extract, images_of(train, self.name))
        Xv = in_blocks(self.extract, images_of(val, self.name))
        self.classes_ = {h: list(n) for h, n in classes.items()}
        self.heads_ = CLASSIFIERS[self.classifier_kind](**self.params).fit(X, targets, Xv, val_targets, classes, seed)
        return self

    def _fitted(self):
        if not hasattr(self, "heads_"):
            raise RuntimeError(f"{self.name} is not fitted yet: call fit() or load() first")
        return self.heads_

    def logits(self, x):
        return self._fitted().logits(self.features(x))

    def features(self, x):
        return in_blocks(self.extract, images_of(x, self.name)).astype(np.float32)

    def save(self, folder):
        folder = Path(folder)
        heads = self._fitted()
        write_config(folder, {"name": self.name, "params": self.params, "classes": self.classes_,
                              "classifier": heads.state()})
        np.savez(folder / "weights.npz", **heads.arrays())

    @classmethod
    def load(cls, folder):
        cfg = read_config(folder)
        self = cls(**cfg["params"])
        self.classes_ = cfg["classes"]
        with np.load(Path(folder) / "weights.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        self.heads_ = CLASSIFIERS[self.classifier_kind].restore(cfg["classifier"], arrays, list(self.classes_))
        return self


# ---- CNNs ------------------------------------------------------------------------------------

class MultiHead(nn.Module):
    """A trunk (images -> F features) with one linear head per target head."""

    def __init__(self, trunk: nn.Module, feature_dim: int, heads: dict[str, int]) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict({h: nn.Linear(feature_dim, n) for h, n in heads.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        f = self.trunk(x)  # (N, F)
        return f, {h: head(f) for h, head in self.heads.items()}


def to_input(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 in [-1, 1] on device, channels-last (2x faster convs on CPU)."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


class CNNMethod(Method):
    """A CNN baseline: a trunk built by `trunk()`, trained end to end with early stopping on the
    validation accuracy of the model head; `augment` perturbs training batches (default none)."""

    needs = ("images",)

    def __init__(self, *, width: int = 16, epochs: int = 8, patience: int = 2, batch_size: int = 128,
                 lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        self.params = dict(width=width, epochs=epochs, patience=patience, batch_size=batch_size, lr=lr,
                           weight_decay=weight_decay)

    @abstractmethod
    def trunk(self, in_channels: int, width: int) -> tuple[nn.Module, int]:
        """The feature extractor and its output width F."""

    def augment(self, batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A training batch as the network sees it (uint8 N x C x H x W); default unchanged."""
        return batch

    def _build(self, in_channels: int) -> MultiHead:
        trunk, dim = self.trunk(in_channels, self.params["width"])
        return MultiHead(trunk, dim, {h: len(n) for h, n in self.classes_.items()})

    def fit(self, train, targets, val, val_targets, *, classes, seed=0, device="auto"):
        p = self.params
        X, Xv = images_of(train, self.name), images_of(val, self.name)
        check_fit(targets, classes, len(X), self.name)
        self.device_ = devices.resolve(device)
        self.classes_ = {h: list(n) for h, n in classes.items()}
        with torch.random.fork_rng(devices=[]):  # a seeded init that leaves the caller's generator alone
            torch.manual_seed(seed)
            self.net_ = self._build(X.shape[1])
        self.net_ = self.net_.to(self.device_, memory_format=torch.channels_last)
        opt = torch.optim.Adam(self.net_.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        rng = np.random.default_rng(seed)  # batch order and augmentation
        ys = {h: torch.from_numpy(np.array(targets[h], np.int64)) for h in classes}  # a copy: targets may be read-only
        best, best_state, stale, self.history_ = (-1.0, -np.inf), None, 0, []
        for epoch in range(1, p["epochs"] + 1):
            t0, total = time.perf_counter(), 0.0
            self.net_.train()
            order = rng.permutation(len(X))
            for a in range(0, len(X), p["batch_size"]):
                idx = np.sort(order[a:a + p["batch_size"]])  # sorted: memmaps read forward
                xb = to_input(self.augment(np.asarray(X[idx]), rng), self.device_)
                _, out = self.net_(xb)
                loss = sum(nn.functional.cross_entropy(out[h], ys[h][idx].to(self.device_)) for h in out)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            acc, val_loss = self._validate(Xv, val_targets["model"])
            self.history_.append({"epoch": epoch, "loss": total / max(1, len(X)), "val_accuracy": acc,
                                  "val_loss": val_loss, "seconds": round(time.perf_counter() - t0, 2)})
            if (acc, -val_loss) > best:  # accuracy first; on a tie (a plateau at the start) the lower loss
                best, best_state, stale = (acc, -val_loss), copy.deepcopy(self.net_.state_dict()), 0
            else:
                stale += 1
                if stale >= p["patience"]:
                    break
        self.net_.load_state_dict(best_state)
        self.net_.eval()
        return self

    def _validate(self, Xv: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Accuracy and cross-entropy of the model head on the validation images."""
        if len(Xv) == 0:
            return 0.0, 0.0
        z = self._forward(Xv)[1]["model"].astype(np.float64)
        z -= z.max(1, keepdims=True)
        loss = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
        return float(np.mean(z.argmax(1) == y)), loss

    @torch.no_grad()
    def _forward(self, images: np.ndarray, block: int = 1024) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not hasattr(self, "net_"):
            raise RuntimeError(f"{self.name} is not fitted yet: call fit() or load() first")
        self.net_.eval()
        feats, logits = [], {h: [] for h in self.classes_}
        for a in range(0, len(images), block):
            f, out = self.net_(to_input(np.asarray(images[a:a + block]), self.device_))
            feats.append(f.float().cpu().numpy())
            for h in out:
                logits[h].append(out[h].float().cpu().numpy())
        if not feats:
            return np.zeros((0, self.net_.heads["model"].in_features), np.float32), \
                {h: np.zeros((0, len(n)), np.float32) for h, n in self.classes_.items()}
        return np.concatenate(feats), {h: np.concatenate(v) for h, v in logits.items()}

    def logits(self, x):
        return self._forward(images_of(x, self.name))[1]

    def features(self, x):
        return self._forward(images_of(x, self.name))[0]

    def save(self, folder):
        from safetensors.torch import save_file

        folder = Path(folder)
        if not hasattr(self, "net_"):
            raise RuntimeError(f"{self.name} is not fitted yet: nothing to save")
        in_channels = self.net_.trunk.in_channels
        write_config(folder, {"name": self.name, "params": self.params, "classes": self.classes_,
                              "in_channels": in_channels, "history": self.history_})
        save_file({k: v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()},
                  str(folder / "weights.safetensors"))

    @classmethod
    def load(cls, folder, device: str | torch.device = "auto"):
        from safetensors.torch import load_file

        cfg = read_config(folder)
        self = cls(**cfg["params"])
        self.classes_, self.history_ = cfg["classes"], cfg.get("history", [])
        self.device_ = devices.resolve(device)
        self.net_ = self._build(int(cfg["in_channels"]))
        self.net_.load_state_dict(load_file(str(Path(folder) / "weights.safetensors")))
        self.net_.to(self.device_, memory_format=torch.channels_last).eval()
        return self


# ---- spectra -----------------------------------------------------------------------------------

def power_spectrum(images: np.ndarray) -> np.ndarray:
    """float64 N x H x W centred power |fftshift(fft2(g))|^2 of the grayscale g (channel mean) in [0, 1]."""
    g = images.astype(np.float64).mean(axis=1) / 255.0  # (N, H, W)
    return np.abs(np.fft.fftshift(np.fft.fft2(g), axes=(-2, -1))) ** 2


def radius_map(h: int, w: int) -> np.ndarray:
    """float64 H x W distance of each centred frequency from the zero frequency (at H//2, W//2)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(yy - h // 2, xx - w // 2)


def azimuthal_mean(maps: np.ndarray, rings: np.ndarray, n_rings: int) -> np.ndarray:
    """N x n_rings mean of each map over the pixels of each ring (rings: int H x W, -1 = unused)."""
    flat = rings.ravel()
    use = flat >= 0
    onehot = np.zeros((use.sum(), n_rings))
    onehot[np.arange(use.sum()), flat[use]] = 1.0
    counts = onehot.sum(0)
    return (maps.reshape(len(maps), -1)[:, use] @ onehot) / np.maximum(counts, 1)
