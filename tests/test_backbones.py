"""The standard backbones: official state-dict layouts, loading weight files, preprocessing."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fingerprint_core import backbones as B
from fingerprint_core.fsio import sha256_file

# ------------------------------------------------------------------ the published layouts, written out


def torchvision_resnet50_layout(with_fc: bool = True) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of torchvision's resnet50().state_dict() (pytorch/vision torchvision/models/resnet.py)."""

    def bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {
            f"{prefix}.num_batches_tracked": ()
        }

    keys = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    in_ch = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for i in range(blocks):
            p, out = f"layer{stage}.{i}", 4 * width
            keys[f"{p}.conv1.weight"] = (width, in_ch, 1, 1)
            keys |= bn(f"{p}.bn1", width)
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            keys |= bn(f"{p}.bn2", width)
            keys[f"{p}.conv3.weight"] = (out, width, 1, 1)
            keys |= bn(f"{p}.bn3", out)
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (out, in_ch, 1, 1)
                keys |= bn(f"{p}.downsample.1", out)
            in_ch = out
    if with_fc:
        keys |= {"fc.weight": (1000, 2048), "fc.bias": (1000,)}
    return keys


def dinov2_vits14_layout() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of DINOv2's hub dinov2_vits14 (facebookresearch/dinov2 dinov2/models/vision_transformer.py,
    dinov2/hub/backbones.py: img_size 518, patch 14, init_values 1.0, block_chunks 0, no registers)."""
    d = 384
    keys = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 1 + 37 * 37, d),
        "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, 14, 14),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(12):
        p = f"blocks.{i}"
        keys |= {
            f"{p}.norm1.weight": (d,),
            f"{p}.norm1.bias": (d,),
            f"{p}.attn.qkv.weight": (3 * d, d),
            f"{p}.attn.qkv.bias": (3 * d,),
            f"{p}.attn.proj.weight": (d, d),
            f"{p}.attn.proj.bias": (d,),
            f"{p}.ls1.gamma": (d,),
            f"{p}.norm2.weight": (d,),
            f"{p}.norm2.bias": (d,),
            f"{p}.mlp.fc1.weight": (4 * d, d),
            f"{p}.mlp.fc1.bias": (4 * d,),
            f"{p}.mlp.fc2.weight": (d, 4 * d),
            f"{p}.mlp.fc2.bias": (d,),
            f"{p}.ls2.gamma": (d,),
        }
    return keys | {"norm.weight": (d,), "norm.bias": (d,)}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_resnet50_layout_is_torchvisions():
    model = B.build("resnet50")
    got = shapes(model)
    assert got == torchvision_resnet50_layout()
    assert len(got) == 320 and len(torchvision_resnet50_layout(with_fc=False)) == 318
    assert got["layer3.5.bn3.running_var"] == (1024,)
    assert got["fc.weight"] == (1000, 2048)
    assert got["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert "layer1.1.downsample.0.weight" not in got
    # v1.5: a stage's first block strides on its 3x3 conv, not on the 1x1
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    assert model.layer1[0].conv2.stride == (1, 1)
    assert model.feature_dim == 2048


def test_vit_s14_layout_is_dinov2s():
    model = B.build("vit_s14")
    got = shapes(model)
    assert got == dinov2_vits14_layout()
    assert len(got) == 175
    assert got["pos_embed"] == (1, 1370, 384)
    assert got["blocks.11.ls2.gamma"] == (384,)
    assert got["patch_embed.proj.weight"] == (384, 3, 14, 14)
    assert model.feature_dim == 384
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


def test_build_unknown_name():
    with pytest.raises(ValueError, match="unknown backbone 'vit_b16'"):
        B.build("vit_b16")


# ------------------------------------------------------------------ loading weight files


def randomised(name: str) -> torch.nn.Module:
    """A network whose every tensor differs from a fresh build(), so a load that skipped one shows."""
    torch.manual_seed(0)
    model = B.build(name).eval()
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k.endswith("num_batches_tracked"):
                v.fill_(1234)
            elif k.endswith("running_var"):
                v.uniform_(0.5, 1.5)
            elif k.endswith("running_mean"):
                v.normal_(0, 0.1)
            elif name == "resnet50" and (".bn" in k or k.startswith("bn") or ".downsample.1." in k):
                v.add_(torch.rand_like(v) * 0.5)  # BatchNorm affine: kept near (1, 0)
            else:
                v.add_(torch.randn_like(v) * 0.02)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 256, (2, 3, 60, 72), dtype=torch.uint8)


@pytest.fixture(scope="module")
def references(images) -> dict:
    """name -> (randomised in-memory network, its features of `images` with the default preprocessing), built once."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model = randomised(name)
            cache[name] = model, B.embed(model, B.DEFAULT_PREPROCESS[name], images)
        return cache[name]

    return get


@pytest.fixture(params=B.NAMES)
def reference(request, references):
    return request.param, *references(request.param)


def save(state: dict, path: Path, fmt: str) -> Path:
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path.with_suffix(".safetensors"))
        return path.with_suffix(".safetensors")
    if fmt == "wrapped":  # a DataParallel training checkpoint
        state = {"epoch": 90, "state_dict": {"module." + k: v for k, v in state.items()}}
    torch.save(state, path.with_suffix(".pth"))
    return path.with_suffix(".pth")


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "wrapped"])
def test_load_gives_identical_features(reference, images, tmp_path, fmt):
    name, model, want = reference
    path = save(model.state_dict(), tmp_path / name, fmt)
    loaded, preprocess, info = B.load(name, path)
    assert not loaded.training
    assert preprocess == B.DEFAULT_PREPROCESS[name]
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    got = B.embed(loaded, preprocess, images, batch_size=2)
    assert got.dtype == torch.float32 and got.shape == (2, model.feature_dim)
    assert torch.equal(got, want)
    assert info["name"] == name and info["feature_dim"] == model.feature_dim
    assert info["preprocess"] == preprocess.as_dict()
    assert len(info["sha256"]) == 64 and info["sha256"] == sha256_file(path)
    assert info["optional_keys_absent"] == []


def test_barlow_twins_file_without_fc_loads(references, images, tmp_path):
    model, want = references("resnet50")
    trunk = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert set(shapes_of(trunk)) == set(torchvision_resnet50_layout(with_fc=False))
    path = save(trunk, tmp_path / "resnet50", "pth")
    loaded, preprocess, info = B.load("resnet50", path)
    assert info["optional_keys_present"] == [] and info["optional_keys_absent"] == ["fc.weight", "fc.bias"]
    assert torch.equal(B.embed(loaded, preprocess, images), want)


def shapes_of(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_ssl_checkpoint_keeps_the_backbone(reference, images, tmp_path):
    """A self-distillation checkpoint: {"teacher": {"backbone.*": trunk, "head.*": projector}}."""
    name, model, want = reference
    ckpt = {"student": {}, "teacher": {"backbone." + k: v for k, v in model.state_dict().items()}}
    ckpt["teacher"]["dino_head.mlp.0.weight"] = torch.zeros(8, model.feature_dim)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save(ckpt, path)
    loaded, preprocess, _ = B.load(name, path)
    assert torch.equal(B.embed(loaded, preprocess, images), want)


def test_vit_at_another_size_interpolates_pos_embed(references, images, tmp_path):
    name, (model, _) = "vit_s14", references("vit_s14")
    path = save(model.state_dict(), tmp_path / name, "safetensors")
    loaded, _, _ = B.load(name, path)
    small = B.Preprocess(resize=128, crop=112, interpolation="bicubic")  # 8 x 8 patches instead of 37 x 37
    assert loaded.pos_encoding(8, 8).shape == (1, 65, 384)
    assert torch.equal(loaded.pos_encoding(37, 37), loaded.pos_embed)
    got = B.embed(loaded, small, images)
    assert got.shape == (2, 384) and torch.isfinite(got).all()
    assert torch.equal(got, B.embed(model, small, images))
    with pytest.raises(ValueError, match="multiples of 14"):
        loaded.features(torch.zeros(1, 3, 100, 112))


def test_wrong_backbone_fails_naming_the_file(reference, tmp_path):
    name, model, _ = reference
    other = "vit_s14" if name == "resnet50" else "resnet50"
    path = save(model.state_dict(), tmp_path / f"my-{name}-weights", "safetensors")
    with pytest.raises(ValueError, match=f"my-{name}-weights.safetensors is not a {other} state dict") as err:
        B.load(other, path)
    msg = str(err.value)
    assert "missing keys" in msg and "unexpected keys" in msg
    assert ("conv1.weight" in msg) if other == "resnet50" else ("cls_token" in msg)


def test_shape_mismatch_is_reported(tmp_path):
    state = randomised("resnet50").state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 2048), torch.zeros(10)  # a 10-class head
    path = save(state, tmp_path / "resnet50-cifar", "pth")
    with pytest.raises(ValueError, match=r"2 shape mismatches \(fc.weight \(10, 2048\) \(expected \(1000, 2048\)\)"):
        B.load("resnet50", path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_random_bytes_fail_clearly(tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match=f"cannot read weights file .*noise{suffix}"):
        B.load("resnet50", path)


def test_missing_file_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="cannot read weights file .*absent.pth"):
        B.read_state_dict(tmp_path / "absent.pth")


class NotWeights:
    """Pickled by reference: unpickling it would import and run code, which weights_only refuses."""


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"state_dict": NotWeights()}, path)  # a valid torch.save file: only weights_only objects
    with pytest.raises(ValueError, match="cannot read weights file .*object.pth.*UnpicklingError") as err:
        B.read_state_dict(path)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    assert "NotWeights" in str(err.value) and "trusted source" not in str(err.value)  # torch's page, trimmed


def test_file_without_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="list.pth holds no state dict"):
        B.read_state_dict(path)


def test_read_state_dict_unwraps_and_strips(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"module.backbone.a": torch.ones(1), "module.backbone.b": torch.zeros(2)}}, path)
    got = B.read_state_dict(path)
    assert list(got) == ["a", "b"] and torch.equal(got["b"], torch.zeros(2))


# ------------------------------------------------------------------ preprocessing and embed


def test_preprocess_shapes_and_grayscale():
    pre = B.DEFAULT_PREPROCESS["vit_s14"]
    gray = torch.randint(0, 256, (3, 1, 40, 90), dtype=torch.uint8)
    out = pre(gray)
    assert out.dtype == torch.float32 and out.shape == (3, 3, 224, 224)
    # the same plane on R, G, B before normalisation
    raw = out * torch.tensor(pre.std).view(1, 3, 1, 1) + torch.tensor(pre.mean).view(1, 3, 1, 1)
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 0], raw[:, 2], atol=1e-5)
    assert B.DEFAULT_PREPROCESS["resnet50"](torch.zeros(1, 3, 300, 256, dtype=torch.uint8)).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="uint8"):
        pre(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"1\|3"):
        pre(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))


def test_preprocess_normalises_like_imagenet():
    pre = B.DEFAULT_PREPROCESS["resnet50"]
    out = pre(torch.full((1, 3, 256, 256), 128, dtype=torch.uint8))  # already 256: only the crop
    want = (128 / 255 - torch.tensor(B.IMAGENET_MEAN)) / torch.tensor(B.IMAGENET_STD)
    assert torch.allclose(out[0, :, 0, 0], want, atol=1e-6) and torch.allclose(out.amax((2, 3))[0], want, atol=1e-6)
    # bicubic overshoot is clipped to 0..255, as PIL does on 8-bit images
    edge = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    edge[..., 32:] = 255
    vit = B.DEFAULT_PREPROCESS["vit_s14"]
    top = (255 / 255 - B.IMAGENET_MEAN[0]) / B.IMAGENET_STD[0]
    assert vit(edge)[:, 0].max() <= top + 1e-6


def test_preprocess_dict_round_trips():
    for pre in B.DEFAULT_PREPROCESS.values():
        d = json.loads(json.dumps(pre.as_dict()))
        assert d["resize"] == 256 and d["crop"] == 224 and d["mean"] == list(B.IMAGENET_MEAN)
        assert B.Preprocess(**d) == pre
    assert B.DEFAULT_PREPROCESS["vit_s14"].interpolation == "bicubic"
    assert B.DEFAULT_PREPROCESS["resnet50"].interpolation == "bilinear"
    with pytest.raises(ValueError, match="crop <= resize"):
        B.Preprocess(resize=100, crop=224)
    with pytest.raises(ValueError, match="interpolation"):
        B.Preprocess(resize=256, crop=224, interpolation="nearest")


def test_embed_batches_and_edge_cases(reference, images):
    name, model, want = reference
    pre = B.DEFAULT_PREPROCESS[name]
    assert torch.allclose(B.embed(model, pre, images, batch_size=1), want, atol=1e-5, rtol=1e-4)
    assert B.embed(model, pre, images[:0]).shape == (0, model.feature_dim)
    model.train()
    try:
        with pytest.raises(ValueError, match="eval mode"):
            B.embed(model, pre, images)
    finally:
        model.eval()
