#!/usr/bin/env bash
# Lines 1 (limit) and 3 (classify, one at a time and decoded together) of
# bench/throughput.py on a CUDA GPU, every layer offloaded, on a lent machine that
# reaches no package index: it builds llama-cpp-python there, where the driver is (a
# wheel built on a machine without one loses its libcuda dependency at link time).
#
#   bench/gpu_prepare.sh .gpu          # here, with PyPI: makes .gpu/a and .gpu/b
#   bench/gpu.sh .gpu/a                # device call 1: stages the model's first part
#   bench/gpu.sh .gpu/b OUT            # device call 2: the rest, the build, the run
#
# Each call copies what its KIT holds into STASH (default /root/stash), which lasts as
# long as the machine stays warm; once the model and the source are both there, it builds
# (CUDA_ARCHITECTURES, default 90: H100/H200) and writes OUT/gpu.json. FlashAttention's
# CUDA kernels are left out to shorten the build (the 10 minutes a device call may run):
# these sequences are a few dozen tokens long. The build was checked up to CMake's
# generate step on a machine without a driver, not yet run on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${1:?usage: bench/gpu.sh KIT [OUT]}
OUT=${2:-.}
ARCH=${CUDA_ARCHITECTURES:-90}
STASH=${GPU_STASH:-/root/stash}
PY=${PYTHON:-python3}
mkdir -p "$STASH/whl" "$OUT"
cp "$KIT"/model.gguf.* "$STASH/" 2>/dev/null || true
cp "$KIT"/llama-cpp-python-*.tar.gz "$STASH/" 2>/dev/null || true
cp "$KIT"/whl/*.whl "$STASH/whl/" 2>/dev/null || true
parts=$(ls "$STASH"/model.gguf.part-* 2>/dev/null | wc -l)
sdist=$(ls "$STASH"/llama-cpp-python-*.tar.gz 2>/dev/null | head -n1 || true)
if [ "$parts" -lt 2 ] || [ ! -f "$STASH/model.gguf.sha256" ] || [ -z "$sdist" ]; then
  echo "staged in $STASH (model parts: $parts); run the next KIT on this machine"
  exit 0
fi

model="$STASH/model"
rm -rf "$model" && cp -r demo/banking77-lora "$model"
base=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["base_model"]["file"])' \
  "$model/manifest.json")
cat "$STASH"/model.gguf.part-* >"$model/$base"
echo "$(cat "$STASH/model.gguf.sha256")  $model/$base" | sha256sum -c -

# cuBLAS: from the CUDA toolkit, or else from the nvidia-cublas wheel beside PyTorch (its
# libraries carry only versioned names, so CMake is handed them, and its headers alone).
cuda_args=""
toolkit=$(dirname "$(dirname "$(command -v nvcc)")")
if ! ls "$toolkit"/lib*/libcublas.so "$toolkit"/targets/*/lib/libcublas.so >/dev/null 2>&1; then
  wheel_dir=$("$PY" -c 'import nvidia, glob; print(*glob.glob(nvidia.__path__[0] + "/cu1*"))')
  shim="$STASH/cublas"
  mkdir -p "$shim/include"
  ln -sf "$wheel_dir"/include/cublas*.h "$shim/include/"
  cuda_args="-DCUDA_cublas_LIBRARY=$(ls "$wheel_dir"/lib/libcublas.so.*)"
  cuda_args+=" -DCUDA_cublasLt_LIBRARY=$(ls "$wheel_dir"/lib/libcublasLt.so.*)"
  cuda_args+=" -DCMAKE_CUDA_FLAGS=-I$shim/include -DCMAKE_CXX_FLAGS=-I$shim/include"
  export LD_LIBRARY_PATH="$wheel_dir/lib:${LD_LIBRARY_PATH:-}"
  echo "cuBLAS from $wheel_dir"
fi
# The driver itself where the toolkit has no stub to link against: linking the real
# libcuda keeps the dependency (an empty stub lost it to --as-needed in an earlier build).
if ! ls "$toolkit"/lib*/stubs/libcuda.so "$toolkit"/targets/*/lib/stubs/libcuda.so \
  >/dev/null 2>&1; then
  driver=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
  if [ -n "$driver" ]; then cuda_args+=" -DCUDA_cuda_driver_LIBRARY=$driver"; fi
fi

site="$STASH/site"
"$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target "$site" "$STASH"/whl/*.whl
start=$(date +%s)
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DGGML_CUDA_FA=OFF -DLLAVA_BUILD=OFF $cuda_args" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) timeout "${GPU_BUILD_TIMEOUT:-420}" \
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
  --target "$site" "$sdist"
echo "llama-cpp-python built with CUDA in $(($(date +%s) - start)) s"

export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader |
  tee "$OUT/gpu-device.txt"
# Each line is printed on stderr as it ends, so a run cut short keeps what it measured.
"$PY" bench/throughput.py --no-pipeline --gpu-layers -1 --docs "${GPU_DOCS:-1024}" \
  --threads "$(nproc)" --parallel 16,64,128,256 --model "$model" --json |
  tee "$OUT/gpu.json"
