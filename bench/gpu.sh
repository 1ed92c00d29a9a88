#!/usr/bin/env bash
# GPU workers measured on a lent CUDA machine that reaches no package index, in three
# device calls made back to back (bench/gpu_prepare.sh makes their kits on a machine
# with PyPI; each call must come within 30 s of the last, or the machine is gone):
#
#   bench/gpu.sh .gpu/a          # wheels and llama.cpp's source: the CUDA build starts
#                                # in the background (setsid) and the call returns
#   bench/gpu.sh .gpu/b          # the base GGUF's first half
#   bench/gpu.sh .gpu/c OUT      # its second half; waits for the build; measures
#
# Each call copies its KIT into STASH (default /tmp/shiftdown-gpu). The last one writes to OUT,
# every step bounded by `timeout` and written as it ends, most important first:
#   gpu-device.txt, gpu-dmon.txt   the GPU, and its utilisation sampled every second
#   import-order.txt               a model loaded after importing the store, CPU and GPU
#   served.json                    the demo model as it is served (its adapter merged into
#                                  Q8_0, made here without torch): limit and classify one
#                                  at a time (1,024 documents), classify with base +
#                                  adapter applied at run time, classify_many at 64, 255
#                                  and 128 per decode, and the whole pipeline (Redis and
#                                  Postgres started here, threads pool), each with one
#                                  batched context (_contexts1, the path before) and with
#                                  the default (two contexts, each on its own thread)
#   served_streams.json            the served merged model with one KV stream per document
#                                  (SHIFTDOWN_KV_LAYOUT=streams): classify_many at 64, 255
#                                  and 128, and the pipeline, against served.json's
#                                  unified lines
#   q4_0.json                      the same merged into Q4_0, without the pipeline
#   host_ceiling.json              the tiny random-weight model: classify_many and the
#                                  whole pipeline with every layer offloaded, each KV
#                                  layout with one context and with the default
#   batched-bench.txt              llama.cpp's own llama-batched-bench on the base GGUF,
#                                  -npp 50 -ntg 1 -npl 64,128,256, with and without -kvu:
#                                  the engine's ceiling at this length
#   finetune.log                   `shiftdown finetune` of the demo recipe (BANKING77
#                                  train.csv, one epoch), timed, where torch is installed
#   build.log, steps.log
# Budget (a lent machine's 15 minutes): the build runs during calls 2 and 3 (about 3 to
# 5 minutes on 16 cores), the measurements take about 7.
#
# GPU_REHEARSAL=1 runs the last call's steps here, on the CPU, with the llama.cpp and
# packages already installed (no build, no nvidia-smi): the script's own check on a
# machine without a GPU, e.g.
#   GPU_REHEARSAL=1 GPU_LAYERS=0 GPU_DOCS=64 GPU_HOST_DOCS=2000 PYTHON=.venv/bin/python \
#     GPU_STASH=/tmp/stash bench/gpu.sh .gpu/b && ... bench/gpu.sh .gpu/c /tmp/gpu-out
set -uo pipefail
cd "$(dirname "$0")/.."
KIT=${1:?usage: bench/gpu.sh KIT [OUT]}
OUT=${2:-}
ARCH=${CUDA_ARCHITECTURES:-90}
# Not under /root: Postgres runs as nobody there, and its binaries sit in the stash.
STASH=${GPU_STASH:-/tmp/shiftdown-gpu}
PY=${PYTHON:-python3}
REHEARSAL=${GPU_REHEARSAL:-0}
LAYERS=${GPU_LAYERS:--1}
DOCS=${GPU_DOCS:-16384}            # per line of the demo model
HOST_DOCS=${GPU_HOST_DOCS:-40000}  # per line of the host ceiling
mkdir -p "$STASH/whl"
cp "$KIT"/model.gguf.* "$STASH/" 2>/dev/null
cp "$KIT"/llama-cpp-python-*.tar.gz "$STASH/" 2>/dev/null
cp "$KIT"/whl/*.whl "$STASH/whl/" 2>/dev/null
site="$STASH/site"

start_build() {
  # Named instruction sets for the CPU side, as the Makefile does: a native build on an
  # AMX host uses AMX tiles, which VMs may not grant (the crash this project first saw).
  local flags isa cpu_args
  flags=$(grep -m1 '^flags' /proc/cpuinfo)
  cpu_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  if [[ $flags == *avx512bw* ]]; then
    cpu_args+=" -DGGML_AVX512=ON"
    for isa in avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
      [[ $flags == *${isa%%:*}* ]] && cpu_args+=" -DGGML_${isa##*:}=ON"
    done
  fi
  # cuBLAS from the CUDA toolkit, or else from the nvidia-cublas wheel beside PyTorch (its
  # libraries carry only versioned names, so CMake is handed them, and its headers alone).
  local toolkit cuda_args="" wheel_dir shim driver
  toolkit=$(dirname "$(dirname "$(command -v nvcc)")")
  if ! ls "$toolkit"/lib*/libcublas.so "$toolkit"/targets/*/lib/libcublas.so >/dev/null 2>&1; then
    wheel_dir=$("$PY" -c 'import nvidia, glob; print(*glob.glob(nvidia.__path__[0] + "/cu1*"))')
    shim="$STASH/cublas"
    mkdir -p "$shim/include"
    ln -sf "$wheel_dir"/include/cublas*.h "$shim/include/"
    cuda_args="-DCUDA_cublas_LIBRARY=$(ls "$wheel_dir"/lib/libcublas.so.*)"
    cuda_args+=" -DCUDA_cublasLt_LIBRARY=$(ls "$wheel_dir"/lib/libcublasLt.so.*)"
    cuda_args+=" -DCMAKE_CUDA_FLAGS=-I$shim/include -DCMAKE_CXX_FLAGS=-I$shim/include"
    echo "$wheel_dir/lib" >"$STASH/ld_path"
  fi
  # The driver itself where the toolkit has no stub to link against: linking the real
  # libcuda keeps the dependency (an empty stub lost it to --as-needed in an earlier build).
  if ! ls "$toolkit"/lib*/stubs/libcuda.so "$toolkit"/targets/*/lib/stubs/libcuda.so \
    >/dev/null 2>&1; then
    driver=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
    if [ -n "$driver" ]; then cuda_args+=" -DCUDA_cuda_driver_LIBRARY=$driver"; fi
  fi
  # Flash attention's kernels stay in: the worker decodes with flash attention, and
  # without them llama.cpp would run that step on the CPU.
  # LLAMA_BUILD_TOOLS builds llama-batched-bench, the one tool the kit keeps, into the
  # build folder kept in the stash.
  local cmake="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DLLAVA_BUILD=OFF"
  cmake+=" -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF $cpu_args $cuda_args"
  echo "CMAKE_ARGS=$cmake" >"$STASH/build.log"
  setsid nohup bash -c "
    start=\$(date +%s)
    export LD_LIBRARY_PATH=\"\$(cat '$STASH/ld_path' 2>/dev/null):\${LD_LIBRARY_PATH:-}\"
    CMAKE_ARGS='$cmake' CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      '$PY' -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
      --config-settings=build-dir='$STASH/build' --target '$site' '$1'
    code=\$?
    echo \"built in \$((\$(date +%s) - start)) s, exit \$code\"
    echo \$code >'$STASH/build.done'
  " >>"$STASH/build.log" 2>&1 </dev/null &
}

sdist=$(ls "$STASH"/llama-cpp-python-*.tar.gz 2>/dev/null | head -n1)
if [ -n "$sdist" ] && [ ! -f "$STASH/build.log" ] && [ "$REHEARSAL" = 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --target "$site" "$STASH"/whl/*.whl
  start_build "$sdist"
  echo "build started in the background ($STASH/build.log)"
fi
parts=$(ls "$STASH"/model.gguf.part-* 2>/dev/null | wc -l)
if [ "$parts" -lt 2 ] || [ ! -f "$STASH/model.gguf.sha256" ] || [ -z "$OUT" ]; then
  echo "staged in $STASH (model parts: $parts); run the next KIT on this machine"
  exit 0
fi

mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/steps.log"; }
model="$STASH/model"
rm -rf "$model" && cp -r demo/banking77-lora "$model"
base=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["base_model"]["file"])' \
  "$model/manifest.json")
cat "$STASH"/model.gguf.part-* >"$model/$base"
echo "$(cat "$STASH/model.gguf.sha256")  $model/$base" | sha256sum -c - || exit 1

dmon=""
if [ "$REHEARSAL" = 0 ]; then
  log "waiting for the build"
  for _ in $(seq 480); do [ -f "$STASH/build.done" ] && break; sleep 1; done
  cp "$STASH/build.log" "$OUT/"
  if [ "$(cat "$STASH/build.done" 2>/dev/null)" != "0" ]; then
    log "the CUDA build failed or is still running: see build.log"
    exit 1
  fi
  log "$(tail -n1 "$STASH/build.log")"
  export LD_LIBRARY_PATH="$(cat "$STASH/ld_path" 2>/dev/null):${LD_LIBRARY_PATH:-}"
  export PYTHONPATH="$site:$PWD"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader |
    tee "$OUT/gpu-device.txt"
  nvidia-smi dmon -s u -d 1 >"$OUT/gpu-dmon.txt" 2>&1 &
  dmon=$!
fi
export PYTHONUNBUFFERED=1

# The crash seen at model load when the store was imported first: CPU, then GPU.
for layers in 0 "$LAYERS"; do
  timeout 60 "$PY" -c "
import models.registry, shiftdown.db, sqlalchemy, numpy, yaml  # the store first
from pathlib import Path
from models.classifier import Classifier, ModelSpec, RuntimeOptions
gguf, adapter, manifest = models.registry.load_model_dir(Path('$model'))
labels = tuple(manifest.labels or ())
clf = Classifier(ModelSpec(str(gguf), labels, str(adapter), manifest), RuntimeOptions(n_gpu_layers=$layers))
print('n_gpu_layers=$layers: loaded after the store, classified as', clf.classify('my card has not arrived').label, 'by', clf.served_path)
" >>"$OUT/import-order.txt" 2>&1
  echo "n_gpu_layers=$layers: exit $?" >>"$OUT/import-order.txt"
done
log "import order checked: $(grep -c 'exit 0' "$OUT/import-order.txt") of 2 loads fine"

services() { timeout "$1" "$PY" -m bench.services run -- "${@:2}"; }
# In order of what matters most, should the call's time run out: the demo model and its
# pipeline, the smaller merged type, then the host ceiling.
log "demo model, served merged (SHIFTDOWN_SERVE_TYPE=q8_0) against base + adapter"
SHIFTDOWN_SERVE_TYPE=q8_0 services 360 "$PY" -m bench.throughput --model "$model" \
  --gpu-layers "$LAYERS" --threads 8 --docs "$DOCS" --single-docs 1024 --naive-docs 0 \
  --parallel 64,255,128 --task-size 128 --pool threads --worker-threads 8 --json \
  --contexts 1,0 >"$OUT/served.json" 2>>"$OUT/steps.log"
log "demo model, served merged, one KV stream per document"
SHIFTDOWN_SERVE_TYPE=q8_0 services 240 "$PY" -m bench.throughput --model "$model" \
  --gpu-layers "$LAYERS" --threads 8 --docs "$DOCS" --single-docs 256 --naive-docs 0 \
  --parallel 64,255,128 --task-size 128 --pool threads --worker-threads 8 --json \
  --kv-layout streams --no-adapter-line >"$OUT/served_streams.json" 2>>"$OUT/steps.log"
log "demo model, served merged q4_0"
SHIFTDOWN_SERVE_TYPE=q4_0 timeout 90 "$PY" -m bench.throughput --model "$model" \
  --gpu-layers "$LAYERS" --threads 8 --docs "$DOCS" --single-docs 1024 --naive-docs 0 \
  --parallel 128,255 --no-pipeline --no-adapter-line --json >"$OUT/q4_0.json" 2>>"$OUT/steps.log"
log "host ceiling (tiny model, every layer on the GPU)"
services 240 "$PY" -m bench.host_ceiling --gpu-layers "$LAYERS" --docs "$HOST_DOCS" --parallel 128 \
  --task-size 128 --threads 8 --width 64 --tokenizer-from "$model/$base" --json \
  >"$OUT/host_ceiling.json" 2>>"$OUT/steps.log"
bench_bin=$(find "$STASH/build" -name llama-batched-bench -type f -perm -u+x 2>/dev/null | head -n1)
if [ -n "$bench_bin" ]; then
  log "llama-batched-bench, per-sequence streams, then one unified cache (-kvu)"
  for kvu in "" "-kvu"; do
    echo "== llama-batched-bench $kvu" >>"$OUT/batched-bench.txt"
    # shellcheck disable=SC2086
    timeout 90 "$bench_bin" -m "$model/$base" -ngl 99 -fa on -c 16384 -b 2048 -ub 2048 \
      -npp 50 -ntg 1 -npl 64,128,256 $kvu >>"$OUT/batched-bench.txt" 2>&1
  done
else
  log "no llama-batched-bench in $STASH/build (a rehearsal, or the build kept no folder)"
fi
if "$PY" -c "import torch, peft, transformers" 2>/dev/null &&
  { [ "$REHEARSAL" = 0 ] || [ "${GPU_FINETUNE:-0}" = 1 ]; }; then
  log "shiftdown finetune, the demo recipe (one epoch), timed"
  start=$(date +%s)
  timeout 300 "$PY" -m cli finetune --data demo/banking77/train.csv \
    --taxonomy demo/banking77/categories.json --label-column category \
    --out "$STASH/finetuned" --epochs 1 --familiarity off >"$OUT/finetune.log" 2>&1
  log "finetune: exit $?, $(($(date +%s) - start)) s wall"
fi
[ -n "$dmon" ] && kill "$dmon" 2>/dev/null
log "done"
