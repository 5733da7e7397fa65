"""Device selection and the hardware facts that choose a compute path."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


def resolve(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto" | "cpu" | "cuda[:i]" into a torch.device; "auto" prefers CUDA."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but no CUDA device is available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu' or 'cuda[:index]'")
    return torch.device(device)


def _cpuinfo(field: str) -> str | None:
    """The first value of a /proc/cpuinfo field (Linux), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.cache
def _cpu_flags() -> frozenset[str]:
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name (what every benchmark figure states beside it)."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def exact_int8(device: torch.device) -> bool:
    """Whether the exact integer pass for pixel codes runs here: on every CPU (int8 matmul where
    it is fast, else exactly emulated in float32 blocks) and on CUDA with int8 tensor cores."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (7, 5)


def fast_int8(device: torch.device) -> bool:
    """Whether int8 x int8 -> int32 matmul beats float32 here (VNNI/AMX on CPU, tensor cores on GPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (7, 5)
    flags = _cpu_flags()
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmul (float32 accumulation) runs much faster than float32 here: AMX or AVX-512
    BF16 on CPU (on an AMD EPYC Zen 5, one thread, the other core busy: 370 against 80 GFLOPS),
    tensor cores on GPU."""
    if device.type == "cuda":
        # reduced-precision reductions would break the accumulation bound
        return (torch.cuda.get_device_capability(device) >= (8, 0)
                and not torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})
