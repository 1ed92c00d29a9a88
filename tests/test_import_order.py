"""A model loads after the store was imported, and the processes that load models load
llama.cpp's library before NumPy and SQLAlchemy (see ``models/__init__.py``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOAD_AFTER_THE_STORE = """
import shiftdown.db, shiftdown.schema, sqlalchemy, numpy, yaml  # the store first
import models.registry
from models.base import default_gguf_path
from models.classifier import Classifier, ModelSpec, RuntimeOptions
clf = Classifier(ModelSpec(str(default_gguf_path()), ("card", "cash")), RuntimeOptions(n_ctx=512))
print(clf.classify("my card has not arrived").label)
"""


def test_a_model_loads_after_the_store_was_imported() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AFTER_THE_STORE], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("card", "cash")


@pytest.mark.parametrize(
    "entry",
    [
        # What `celery -A workers.app worker` imports: the app, then its task modules.
        "import workers.app; workers.app.app.loader.import_default_modules()",
        "import cli.main",
        "import bench.throughput",
    ],
)
def test_entry_points_load_llama_cpp_before_numpy_and_sqlalchemy(entry: str) -> None:
    probe = (
        f"{entry}; import sys; m = list(sys.modules); "
        "print(m.index('llama_cpp.llama_cpp') < min(m.index('numpy'), m.index('sqlalchemy')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
