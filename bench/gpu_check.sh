#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA-marked tests, then the exact kNN bench on the GPU and
# on the CPU of the same machine. Prints the device, the test summary and both tables.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python}"
$PY - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
PY
$PY -m pytest -m cuda -q -rs tests/ || echo "CUDA TESTS FAILED"
echo "== kNN on cuda"; $PY bench/knn.py --device cuda --runs 3
echo "== kNN on cpu (same machine)"; $PY bench/knn.py --device cpu --runs 1
