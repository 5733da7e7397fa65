"""Standard pretrained backbones of the ManiFPT paper, written here, that load the official weight files.

- `resnet50`: torchvision's ResNet-50 (Bottleneck v1.5, the stride on the 3x3 conv). It serves the SL
  space with the ImageNet-supervised torchvision weights and the SSL space with the Barlow Twins release
  (facebookresearch/barlowtwins `resnet50.pth`, the same trunk saved without `fc`). Feature: the
  global-average-pooled 2048-d penultimate layer.
- `vit_s14`: DINOv2's ViT-S/14 (facebookresearch/dinov2, hub `dinov2_vits14`), trained at 518 px; the
  positional embeddings are interpolated for other sizes exactly as DINOv2 does. Feature: the CLS token
  after the final norm (DINOv2's `x_norm_clstoken`), 384-d.

The module and parameter names follow those projects, so their state dicts load strictly, with no
renaming; nothing here downloads anything: the user supplies the file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from fingerprint_core.fsio import sha256_file

NAMES = ("resnet50", "vit_s14")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keys a genuine file may lack: Barlow Twins saves the ResNet trunk with fc = Identity, and
# `mask_token` (used only for masked training) could be dropped by exporters; features use neither.
OPTIONAL_KEYS = {"resnet50": ("fc.weight", "fc.bias"), "vit_s14": ("mask_token",)}


# ---------------------------------------------------------------- ResNet-50 (torchvision layout)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)  # BatchNorm supplies the biases
        self.bn1 = nn.BatchNorm2d(width)
        # v1.5: the stride sits on the 3x3 conv (v1 put it on conv1), as torchvision's weights expect
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        # only the first block of a stage changes shape; the others keep no `downsample` keys
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    feature_dim = 2048

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        for i, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
            stride = 1 if i == 1 else 2  # the stem's max-pool already halved the size before layer1
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(in_ch, width, stride if b == 0 else 1))
                in_ch = width * Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():  # torchvision's init, so a random network has sane activations
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))  # global average pool: N x 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# ---------------------------------------------------------------- ViT-S/14 (DINOv2 layout)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # N x (h*w) x dim, row-major patches


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)  # DINOv2's released models have qkv biases
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(x.transpose(1, 2).reshape(n, t, c))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))  # the hub models are built with init_values=1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # the exact (erf) GELU, nn.GELU's default, as DINOv2 uses
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTS14(nn.Module):
    feature_dim = 384
    patch_size = 14
    # DINOv2 adds this to the target grid when it computes the scale factor: a historical fix for
    # floating-point error (facebookresearch/dino#8) that its weights were evaluated with
    interpolate_offset = 0.1

    def __init__(self, img_size: int = 518, depth: int = 12, heads: int = 6, mlp_ratio: int = 4) -> None:
        super().__init__()
        dim, grid = self.feature_dim, img_size // self.patch_size  # 518 / 14 = 37
        self.patch_embed = PatchEmbed(self.patch_size, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1 + grid * grid, dim), std=0.02))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # in the file; only masked pretraining uses it
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        for m in self.modules():  # timm's ViT init, as DINOv2 uses
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Positional embeddings for an h x w patch grid: the trained 37 x 37 grid resized bicubically."""
        n = self.pos_embed.shape[1] - 1
        side = math.isqrt(n)
        if h * w == n and h == w:
            return self.pos_embed
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        # a scale factor (not a size), without antialias, to reproduce DINOv2's numbers exactly
        scale = ((h + self.interpolate_offset) / side, (w + self.interpolate_offset) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat((pos[:, :1], grid), dim=1).to(self.pos_embed.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"vit_s14 needs sides that are multiples of {p} pixels, got {height} x {width}")
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.pos_encoding(height // p, width // p)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]  # the CLS token after the final norm: N x 384

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# ---------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """The evaluation transform the weights expect: resize the short side, centre-crop a square, normalise."""

    resize: int
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # tuples of floats, so a dict read back from JSON (lists) rebuilds an equal object
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not 1 <= self.crop <= self.resize:
            raise ValueError(f"need 1 <= crop <= resize, got crop={self.crop}, resize={self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std positive: mean={self.mean}, std={self.std}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x C x H x W (C = 1 or 3) -> float32 N x 3 x crop x crop, normalised."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected uint8 N x 1|3 x H x W images, got {images.dtype} {tuple(images.shape)}")
        x = images.float()
        h, w = x.shape[-2:]
        if min(h, w) != self.resize:
            # torchvision's Resize(int): the short side becomes `resize`, the long side is truncated
            size = (self.resize, int(self.resize * w / h)) if h <= w else (int(self.resize * h / w), self.resize)
            # The reference pipelines resize 8-bit PIL images: PIL resamples rows, rounds to 0..255, then
            # columns. Two float passes with that rounding match PIL to 1 level on any device; one pass
            # does not for bicubic (its overshoot is clipped only once: up to ~20 levels off on noise).
            for step in ((h, size[1]), size):
                x = F.interpolate(x, size=step, mode=self.interpolation, antialias=True, align_corners=False)
                x = x.round_().clamp_(0, 255)
            h, w = size
        top, left = int(round((h - self.crop) / 2)), int(round((w - self.crop) / 2))  # as CenterCrop
        x = x[..., top : top + self.crop, left : left + self.crop]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale: the same plane on R, G, B, as PIL's convert("RGB")
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255
        return ((x - mean) / std).contiguous()  # == (x / 255 - mean) / std


DEFAULT_PREPROCESS = {
    "resnet50": Preprocess(resize=256, crop=224, interpolation="bilinear"),  # torchvision's ImageNet eval
    "vit_s14": Preprocess(resize=256, crop=224, interpolation="bicubic"),  # DINOv2's eval: 16 x 16 patches
}


# ---------------------------------------------------------------- building and loading


def build(name: str) -> nn.Module:
    """The backbone `name`, randomly initialised."""
    if name == "resnet50":
        return ResNet50()
    if name == "vit_s14":
        return ViTS14()
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(NAMES)}")


# containers that training scripts wrap a state dict in; in self-distillation checkpoints (DINO,
# DINOv2) the teacher is the network that gets released and evaluated, so it wins over `model`
_CONTAINER_KEYS = ("state_dict", "teacher", "model")
# DataParallel / DDP add `module.`; SSL checkpoints keep the trunk under `backbone.` next to the heads
_PREFIXES = ("module.", "backbone.")


def _reason(e: Exception) -> str:
    """The useful part of a load error (torch's weights_only refusal is a page that suggests weights_only=False)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = re.split(r"Please use|Check the documentation", text.split("WeightsUnpickler error:", 1)[1])[0]
        why = " ".join(text.split())
        return f"weights_only loading refused it ({why}); it holds more than tensors or is no torch file"
    return " ".join(text.split())[:300]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (.safetensors, or a torch.save file read with weights_only=True).

    Common containers are unwrapped and `module.` / `backbone.` prefixes removed; where some keys carry
    the prefix and others do not (a trunk saved with its heads), only the prefixed ones are kept.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            obj = load_file(path)
        else:
            # weights_only: a .pth file is a pickle, and a full unpickle could run arbitrary code
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure here means the same thing to the user: not a readable weights file
        raise ValueError(f"cannot read weights file {path}: {type(e).__name__}: {_reason(e)}") from e
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in obj.items()}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def detect(state: dict[str, torch.Tensor]) -> str | None:
    """Which backbone a state dict is, by its signature keys (None: neither)."""
    if "blocks.0.attn.qkv.weight" in state and "cls_token" in state:
        return "vit_s14"
    if "layer4.2.conv3.weight" in state and "conv1.weight" in state:
        return "resnet50"
    return None


def load(name: str, weights_path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Preprocess, dict]:
    """Build `name` ("auto": told by the file's keys), load an official weights file strictly;
    returns (module in eval mode, Preprocess, info)."""
    path = Path(weights_path)
    state = read_state_dict(path)
    if name == "auto":
        name = detect(state) or ""
        if not name:
            raise ValueError(f"weights file {path} is neither a small encoder, a ResNet-50 nor a ViT-S/14 state dict "
                             f"(its first keys: {_few(list(state))})")
    module = build(name)
    expected = module.state_dict()
    optional = OPTIONAL_KEYS[name]
    # in layout / file order, so the message starts with the keys a reader recognises (conv1, cls_token)
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{len(missing)} missing keys ({_few(missing)})" if missing else "",
            f"{len(unexpected)} unexpected keys ({_few(unexpected)})" if unexpected else "",
            f"{len(mismatched)} shape mismatches ({_few(mismatched)})" if mismatched else "",
        ]
        raise ValueError(f"weights file {path} is not a {name} state dict: " + "; ".join(p for p in problems if p))
    # strict apart from the optional keys, which were checked above; an absent one keeps its random init
    module.load_state_dict(state, strict=False)
    module.to(device).eval()
    preprocess = DEFAULT_PREPROCESS[name]
    info = {
        "name": name,
        "feature_dim": module.feature_dim,
        "path": str(path),
        "sha256": sha256_file(path),
        "preprocess": preprocess.as_dict(),
        "optional_keys_present": [k for k in optional if k in state],
        "optional_keys_absent": [k for k in optional if k not in state],
    }
    return module, preprocess, info


@torch.no_grad()
def embed(module: nn.Module, preprocess: Preprocess, images_uint8: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Features (float32, N x feature_dim, on the CPU) of uint8 N x C x H x W images, in batches."""
    if module.training:
        # BatchNorm in training mode would normalise with each batch's statistics: batch-dependent features
        raise ValueError("embed needs a module in eval mode (call .eval(); `load` returns one)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(module.parameters()).device
    out = [
        module.features(preprocess(images_uint8[i : i + batch_size].to(device))).float().cpu()
        for i in range(0, len(images_uint8), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, module.feature_dim)
