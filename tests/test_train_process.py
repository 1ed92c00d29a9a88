"""Fine-tuning trains in a child process that never loads llama.cpp: on a GPU machine the
CUDA build of llama-cpp-python and torch abort together in one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.merge import FILE_TYPES
from models.training.train_process import TRAINING_PROCESS_ENV


def test_file_types_are_llama_cpps() -> None:
    import llama_cpp

    for name, value in FILE_TYPES.items():
        assert getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}") == value


def test_the_training_process_imports_no_llama_cpp() -> None:
    probe = (
        "import models.training.train_process, models.training.gguf_export, models.merge, sys; "
        "print(sorted(m for m in sys.modules if m.startswith('llama_cpp')))"
    )
    env = {**os.environ, TRAINING_PROCESS_ENV: "1"}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_training_run_reports_no_llama_cpp_and_writes_the_adapter(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from models.base import default_gguf_path
    from models.training.finetune import run_training
    from models.training.train_process import FinetuneConfig, TrainingJob

    steps: list[tuple[int, int]] = []
    job = TrainingJob(
        str(default_gguf_path()),
        str(tmp_path),
        data=[([1, 2, 3, 4], 0), ([5, 6, 7], 1)] * 4,
        codes=[330, 331],
        config=FinetuneConfig(epochs=1, batch_size=4, lora_rank=2),
    )
    done = run_training(job, lambda step, total, loss: steps.append((step, total)))
    assert done["llama_cpp_modules"] == []
    assert done["files"] == {"adapter": "adapter.gguf"}
    assert (tmp_path / "adapter.gguf").stat().st_size > 0
    assert steps == [(1, 2), (2, 2)] and done["steps"] == 2 and done["device"] == "cpu"


def test_a_failed_training_process_is_a_model_error(tmp_path: Path) -> None:
    from models.training.finetune import run_training
    from models.training.train_process import TrainingJob
    from shiftdown.errors import ModelError

    job = TrainingJob(str(tmp_path / "missing.gguf"), str(tmp_path), [([1], 0)], [330])
    with pytest.raises(ModelError, match="training process failed"):
        run_training(job)
