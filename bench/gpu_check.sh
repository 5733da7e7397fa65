#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA-marked tests, then the exact kNN bench on the GPU
# (D = 1,024 pixels and FREQ from Fashion-MNIST; D = 196,608 with 5,000 references), without
# faiss, and a short CPU run on the same machine. Prints the device, the test summary and the
# tables. Sized to finish within about 6 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python}"
$PY - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
    print("bf16 reduced-precision reduction:", torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
          "float32 matmul precision:", torch.get_float32_matmul_precision())
PY
timeout 120 $PY -m pytest -m cuda -q -rs tests/ || echo "CUDA TESTS FAILED"
echo "== kNN on cuda, D=1024 (pixels, FREQ), 60,000 x 10,000"
timeout 120 $PY bench/knn.py --device cuda --runs 3 --no-faiss --no-numpy --check 100 --cases 1024,freq1024 \
    || echo "KNN CUDA D=1024 FAILED"
echo "== kNN on cuda, D=196608, 5,000 x 500 (memory-mapped 1/f noise)"
timeout 150 $PY bench/knn.py --device cuda --runs 1 --no-faiss --no-numpy --check 20 --cases 196608 \
    --huge-references 5000 --huge-queries 500 || echo "KNN CUDA D=196608 FAILED"
echo "== kNN on cpu (same machine), D=1024, 20,000 x 2,000"
timeout 60 $PY bench/knn.py --device cpu --quick --no-numpy --check 50 --cases 1024,freq1024 || echo "KNN CPU FAILED"
