#!/usr/bin/env bash
# Prepares, on a machine that reaches PyPI, what bench/gpu.sh needs on a lent GPU machine
# that reaches nothing, in two folders small enough to travel one per call (at most
# 64 MiB each with the repository):
#
#   bench/gpu_prepare.sh [KIT]        (default KIT: .gpu, which git ignores)
#
#   KIT/a  the first part of the base GGUF (98 MB whole)
#   KIT/b  the rest of it, llama-cpp-python's source trimmed to what a CUDA build reads,
#          and CPython 3.12 wheels of what the GPU image lacks (diskcache, SQLAlchemy)
#
# Then, back to back (a lent machine stays warm only seconds between calls):
#   run(carry=[KIT/a], command="bench/gpu.sh KIT/a")
#   run(carry=[KIT/b], command="bench/gpu.sh KIT/b $OUT", timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${1:-.gpu}
PY=${PYTHON:-.venv/bin/python}
VERSION=0.3.36
rm -rf "$KIT" && mkdir -p "$KIT/a" "$KIT/b/whl"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION"
ll="$src/vendor/llama.cpp"
# What a CUDA build of the library never reads: model vocabularies, docs, tests,
# examples, the other backends. tools/mtmd stays (the package's CMake names it).
rm -rf "$src/.git" "$src/examples" "$src/docs" "$src/tests"
rm -rf "$ll"/{models,docs,tests,benches,media,scripts,.github,gguf-py,conversion,examples,pocs,app}
find "$ll/tools" -mindepth 1 -maxdepth 1 ! -name mtmd -exec rm -rf {} +
for backend in "$ll"/ggml/src/ggml-*/; do
  case "$(basename "$backend")" in ggml-cpu | ggml-cuda) ;; *) rm -rf "$backend" ;; esac
done
tar -czf "$KIT/b/llama-cpp-python-$VERSION.tar.gz" -C "$work" "llama_cpp_python-$VERSION"

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$KIT/b/whl" "diskcache>=5.6" "sqlalchemy>=2.0.30"

gguf=$("$PY" -c 'from models.base import default_gguf_path; print(default_gguf_path())')
split -b 52M -d -a 2 "$gguf" "$work/model.gguf.part-"
mv "$work/model.gguf.part-00" "$KIT/a/"
mv "$work"/model.gguf.part-* "$KIT/b/"
sha256sum "$gguf" | cut -d' ' -f1 >"$KIT/b/model.gguf.sha256"
du -sh "$KIT/a" "$KIT/b"
